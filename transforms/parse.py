"""Parsing raw JSONL lines, and Parquet rows, into records, rejecting what
cannot be used.

Every line ends as a record of a `RecordChunk`, a Rejected with a reason
code, or (a blank line) a count in the stats; every Parquet row as a
record or a Rejected, read as the JSON line of its non-null values
(`ParseRows`). Reason codes:
  line_too_long   the line exceeds max_line_bytes (not parsed at all)
  invalid_utf8    the line is not valid UTF-8 (a row: a string's bytes)
  invalid_json    not parseable as JSON (including nesting too deep)
  not_an_object   valid JSON but not an object ([], "x", 3, null)
  missing_field   the prompt or output field is absent
  field_not_string  prompt/output is not a string, or id not a string/int
  duplicate_field the prompt, output or id key appears more than once in
                  the top-level object (compared after unescaping)
  invalid_unicode a string holds a lone surrogate (\\ud800 escapes)
  empty_prompt    the prompt is empty or only whitespace
  empty_output    the output is empty or only whitespace
"""

import functools
import hashlib
import json
from typing import Iterable, NamedTuple, Optional, Union

import apache_beam as beam
import numpy as np
import orjson

from sftbeam.transforms import chat_records, chunk_coder, stats
from sftbeam.transforms.records import (MAX_RAW_CHARS, LineChunk, NotUtf8,
                                        RecordChunk, Rejected, RowChunk,
                                        column_values, offsets_of,
                                        rejected_row, without_nulls)

_BOM_BYTES = '\ufeff'.encode('utf-8')


class FieldNames(NamedTuple):
  prompt: str = 'prompt'
  output: str = 'output'
  id: str = 'id'


class ParseError(ValueError):
  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def _hashed(value) -> str:
  canonical = json.dumps(value, ensure_ascii=False)
  return hashlib.sha256(
      canonical.encode('utf-8', 'surrogatepass')).hexdigest()[:16]


def content_id(prompt: str, output: str) -> str:
  """The id of a record that has none: stable across runs and machines.

  The first 16 hex digits of sha256 over the JSON array [prompt, output];
  identical records therefore share an id.
  """
  return _hashed([prompt, output])


def conversation_id(obj: dict) -> str:
  """The id of a chat record that has none: the first 16 hex digits of
  sha256 over the JSON array [messages, index of the first message that
  may be learned], with its tools and chat_template_kwargs after them
  when it has them (messages as given; TRL's prompt + completion)."""
  if 'messages' in obj:
    messages, learnable_from = obj['messages'], 0
  else:
    messages = obj['prompt'] + obj['completion']
    learnable_from = len(obj['prompt'])
  return _hashed([messages, learnable_from] + [
      obj[key] for key in ('tools', 'chat_template_kwargs')
      if obj.get(key) is not None])


class _JsonObject(dict):
  """A decoded JSON object that remembers the keys it held more than once
  (a plain dict silently keeps the last value)."""
  duplicate_keys = frozenset()


def _object_from_pairs(pairs):
  obj = _JsonObject(pairs)
  if len(obj) < len(pairs):
    seen = set()
    obj.duplicate_keys = frozenset(
        key for key, _ in pairs if key in seen or seen.add(key))
  return obj


# Keys are compared after unescaping, so "\u0070rompt" duplicates "prompt";
# only the top-level object's keys matter (nested objects may repeat keys).
_DECODER = json.JSONDecoder(object_pairs_hook=_object_from_pairs)


# A field's value when the record has no such field.
_ABSENT = object()


def _string_value(value, field: str) -> str:
  """The value of the string field `field`, or ParseError."""
  if value is _ABSENT:
    raise ParseError('missing_field', f'no "{field}" field')
  if not isinstance(value, str):
    raise ParseError('field_not_string',
                     f'"{field}" is {chat_records.json_type(value)}, not a string')
  return value


def _record_id(value, field: str, fallback) -> str:
  """The record's id from the value of its id field (None: absent), or
  `fallback()` (its content id) without one."""
  if value is None or value == '':  # an empty id identifies nothing
    return fallback()
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise ParseError('field_not_string',
                     f'"{field}" is {chat_records.json_type(value)}, '
                     'not a string or integer')
  return str(value)


def _decode_exactly(text: str):
  """The decoded JSON value, duplicate keys remembered; or ParseError."""
  try:
    return _DECODER.decode(text)
  except RecursionError:
    raise ParseError('invalid_json', 'JSON nested too deeply') from None
  except ValueError as error:
    raise ParseError('invalid_json', str(error)) from None


def _quoted(name: str):
  """`"name"` as it appears in a line when written without escapes; None
  for a name that a writer may have to escape (then only the exact decoder
  can tell its keys apart)."""
  if any(char in name for char in '"\\/') or not name.isprintable():
    return None
  return f'"{name}"'


@functools.lru_cache(maxsize=16)
def _quoted_keys(keys: tuple):
  """`keys` quoted as written without escapes, as UTF-8 bytes, or None
  when one of them would need escaping."""
  quoted = tuple(dict.fromkeys(map(_quoted, keys)))
  if None in quoted:
    return None
  return tuple(key.encode('utf-8') for key in quoted)


def _decode_fast(line: bytes, fields: FieldNames):
  """The decoded JSON value of a line by orjson, or None when the exact
  decoder must decide.

  orjson decodes faster than the json module (docs/performance.md), from
  the bytes, but differs from it on a few inputs: it keeps the last of repeated keys
  silently, refuses invalid UTF-8, NaN, lone surrogates, 1e400 and deep
  nesting, and reads integers beyond 64 bits as floats. Its result is used
  only where none of that can matter, so every accept/reject decision is
  the json module's. A key the record reads may repeat only if it is
  written twice, or escaped (a backslash-u escape, or a key that needs
  escaping).
  """
  if b'\\u' in line:
    return None
  try:
    obj = orjson.loads(line)
  except orjson.JSONDecodeError:
    return None
  if not isinstance(obj, dict):
    return obj
  keys = _quoted_keys(tuple(fields) + chat_records.RECORD_KEYS if (
      'messages' in obj or 'completion' in obj) else tuple(fields))
  if keys is None or any(line.count(key) > 1 for key in keys) or (
      isinstance(obj.get(fields.id), float)):  # an int id beyond 64 bits?
    return None
  return obj


class ParsedRecord(NamedTuple):
  """A usable record: prompt and output, or a chat conversation."""
  example_id: str
  prompt: Optional[str] = None
  output: Optional[str] = None
  conversation: Optional[chat_records.Conversation] = None


# The kind of every record, for an input_format that is not "auto".
_FORMAT_KINDS = {'prompt_output': 'prompt_output', 'messages': 'chat'}


def parse_object(obj, fields: FieldNames, input_format: str = 'auto',
                 escaped: bool = True) -> ParsedRecord:
  """The record of one decoded JSON line, or raises ParseError.

  `input_format` "auto" tells a chat record from a prompt/output one by
  its fields (chat_records.record_kind); "prompt_output" and "messages" read every
  line as that kind. `escaped`: whether the line holds a backslash-u
  escape, the only way a lone surrogate gets into a decoded string.
  """
  if not isinstance(obj, dict):
    raise ParseError('not_an_object',
                     f'expected a JSON object, got {chat_records.json_type(obj)}')
  kind = _FORMAT_KINDS.get(input_format) or chat_records.record_kind(
      obj, fields.prompt, fields.output)
  if kind == 'chat':
    return _parse_chat(obj, fields, escaped)
  return _parse_prompt_output(obj, fields, escaped)


def _refuse_duplicates(obj: dict, keys):
  duplicated = [key for key in keys
                if key in getattr(obj, 'duplicate_keys', ())]
  if duplicated:
    raise ParseError('duplicate_field',
                     f'key "{duplicated[0]}" appears more than once')


def _parse_prompt_output(obj: dict, fields: FieldNames,
                         escaped: bool) -> ParsedRecord:
  _refuse_duplicates(obj, fields)
  return prompt_output_record(obj.get(fields.prompt, _ABSENT),
                              obj.get(fields.output, _ABSENT),
                              obj.get(fields.id), fields, escaped)


def prompt_output_record(prompt, output, id_value, fields: FieldNames,
                         escaped: bool) -> ParsedRecord:
  """The prompt/output record of these field values, or raises ParseError.

  A value is `_ABSENT` when the record has no such field (the id: None);
  `escaped` as for parse_object.
  """
  prompt = _string_value(prompt, fields.prompt)
  output = _string_value(output, fields.output)
  example_id = _record_id(id_value, fields.id,
                          lambda: content_id(prompt, output))
  if escaped and any(map(chat_records.has_lone_surrogate,
                         (prompt, output, example_id))):
    raise ParseError('invalid_unicode', 'a string holds a lone surrogate')
  if not prompt or prompt.isspace():
    raise ParseError('empty_prompt', 'the prompt is empty or whitespace')
  if not output or output.isspace():
    raise ParseError('empty_output', 'the output is empty or whitespace')
  return ParsedRecord(example_id, prompt=prompt, output=output)


def _parse_chat(obj: dict, fields: FieldNames, escaped: bool) -> ParsedRecord:
  _refuse_duplicates(obj, (fields.id,) + chat_records.RECORD_KEYS)
  try:
    conversation = chat_records.parse_conversation(obj)  # checks it all
  except chat_records.ChatRejected as rejected:
    raise ParseError(rejected.reason, str(rejected)) from None
  example_id = _record_id(obj.get(fields.id), fields.id,
                          lambda: conversation_id(obj))
  if escaped and chat_records.has_lone_surrogate(example_id):
    raise ParseError('invalid_unicode', 'a string holds a lone surrogate')
  return ParsedRecord(example_id, conversation=conversation)


def parse_line(source: str, line_number: int, line: bytes, total_bytes: int,
               fields: FieldNames, max_line_bytes: int,
               input_format: str = 'auto'):
  """(ParsedRecord, line), a Rejected, or None (blank line).

  The `line` given back (bytes, valid UTF-8, without a BOM) is kept for a
  rejection by a later step.
  """
  def rejected(reason, message, raw: bytes):
    return Rejected.capped(source, line_number, reason, message,
                           raw.decode('utf-8', 'replace'))

  if total_bytes > max_line_bytes:
    return rejected('line_too_long',
                    f'{total_bytes} bytes, more than max_line_bytes '
                    f'{max_line_bytes}', line[:MAX_RAW_CHARS])
  while line.startswith(_BOM_BYTES):
    line = line[len(_BOM_BYTES):]
  if not line or line.isspace():
    return None
  obj = _decode_fast(line, fields)
  if obj is None:
    try:
      text = line.decode('utf-8')
    except UnicodeDecodeError as error:
      return rejected('invalid_utf8', str(error), line[:MAX_RAW_CHARS])
    if text.isspace():  # Unicode whitespace only (NBSP...)
      return None
    try:
      obj = _decode_exactly(text)
    except ParseError as error:
      return rejected(error.reason, str(error), line)
  try:
    return parse_object(obj, fields, input_format, b'\\u' in line), line
  except ParseError as error:
    return rejected(error.reason, str(error), line)


class PlainRecords(NamedTuple):
  """Per line of a chunk: its record's id, prompt and output, or None (all
  three) where `parse_line` must decide."""
  ids: list
  prompts: list
  outputs: list


def plain_records(lines, totals, fields: FieldNames, max_line_bytes: int,
                  input_format: str = 'auto') -> Optional[PlainRecords]:
  """The plain prompt/output records among a chunk's lines, found with a
  few passes over the whole chunk instead of parse_line's per line (None:
  no line can be; docs/performance.md).

  A line is plain when orjson decodes it to an object with string prompt
  and output fields that are not blank and a string or integer id, and
  nothing that parse_line checks can be wrong with it: it is within
  max_line_bytes, has no chat key (`messages`, `completion`), does not
  start with a BOM, holds no backslash-u escape (so no lone surrogate and
  no escaped key) and holds no key the record reads twice. Every other
  line goes to parse_line, so each record and each rejection is
  parse_line's.
  """
  quoted = _quoted_keys(tuple(fields))
  if input_format == 'messages' or quoted is None or not lines:
    return None
  scanned = _ScannedLines(lines)
  suspect = scanned.lines_with(b'\\u') | scanned.starting_with(_BOM_BYTES[0])
  for key in quoted:
    suspect |= scanned.key_counts(key) > 1
  objects = _orjson_objects(lines)
  prompt, output, id_field = fields
  ids, prompts, outputs = [], [], []
  for obj, total, skip in zip(objects, totals, suspect.tolist()):
    record_id = prompt_text = output_text = None
    if not skip and obj is not None and total <= max_line_bytes and not (
        'messages' in obj or 'completion' in obj):
      prompt_text, output_text = obj.get(prompt), obj.get(output)
      record_id = _plain_id(obj.get(id_field))
      if not (_plain_text(prompt_text) and _plain_text(output_text)):
        record_id = prompt_text = output_text = None
    ids.append(record_id)
    prompts.append(prompt_text)
    outputs.append(output_text)
  return PlainRecords(ids, prompts, outputs)


class _ScannedLines:
  """A chunk's lines joined into one byte array, to find byte sequences
  in every line at once (numpy compares bytes faster than bytes.count
  searches, which each line would need)."""

  def __init__(self, lines):
    self._data = np.frombuffer(b'\n'.join(lines), np.uint8)
    lengths = np.fromiter(map(len, lines), np.int64, len(lines))
    self._starts = offsets_of(lengths + 1)[:-1]
    self._count = len(lines)
    self._positions = {}  # byte -> where it occurs, found once

  def _positions_of(self, byte: int) -> np.ndarray:
    if byte not in self._positions:
      self._positions[byte] = np.flatnonzero(self._data == byte)
    return self._positions[byte]

  def _line_of(self, positions) -> np.ndarray:
    return np.searchsorted(self._starts, positions, side='right') - 1

  def _occurrences(self, first: int, rest: bytes) -> np.ndarray:
    """Positions of byte `first` followed by the bytes `rest`."""
    data = self._data
    found = self._positions_of(first)
    found = found[found + len(rest) < len(data)]
    for offset, byte in enumerate(rest, start=1):
      found = found[data[found + offset] == byte]
    return found

  def lines_with(self, sequence: bytes) -> np.ndarray:
    """bool [lines]: whether each line holds `sequence`."""
    flags = np.zeros(self._count, np.bool_)
    flags[self._line_of(self._occurrences(sequence[0], sequence[1:]))] = True
    return flags

  def key_counts(self, quoted_key: bytes) -> np.ndarray:
    """int [lines]: how often each line holds `quoted_key` (with its
    quotes): a key, or a string value equal to it."""
    return np.bincount(
        self._line_of(self._occurrences(quoted_key[0], quoted_key[1:])),
        minlength=self._count)

  def starting_with(self, byte: int) -> np.ndarray:
    """bool [lines]: whether each line's first byte is `byte`."""
    starts = np.minimum(self._starts, max(len(self._data) - 1, 0))
    return (self._data[starts] == byte) if len(self._data) else np.zeros(
        self._count, np.bool_)


def _orjson_objects(lines) -> list:
  """Each line's object by orjson, or None (not an object, or not
  decodable)."""
  try:
    objects = list(map(orjson.loads, lines))
  except orjson.JSONDecodeError:
    objects = [_orjson_or_none(line) for line in lines]
  return [obj if type(obj) is dict else None  # pylint: disable=unidiomatic-typecheck
          for obj in objects]


def _orjson_or_none(line: bytes):
  try:
    return orjson.loads(line)
  except orjson.JSONDecodeError:
    return None


def _plain_text(value) -> bool:
  """Whether a prompt or output value needs no further check."""
  return type(value) is str and value and not value.isspace()  # pylint: disable=unidiomatic-typecheck


def _plain_id(value) -> Optional[str]:
  """The id of a plain record, or None when parse_line must make it (no
  id: the content id; a bool, float or other value: rejected)."""
  if type(value) is str and value:  # pylint: disable=unidiomatic-typecheck
    return value
  if type(value) is int:  # pylint: disable=unidiomatic-typecheck
    return str(value)
  return None


chunk_coder.register(RecordChunk)


class ParseLines(beam.DoFn):
  """LineChunk -> one RecordChunk (main output) per chunk with a record.

  Also gives Rejected records on the `rejected` output and a stats dict
  (`lines`, `blank_lines`, `input_bytes`) per chunk on the `stats` output.
  """
  REJECTED = 'rejected'
  STATS = 'stats'

  def __init__(self, fields: FieldNames, max_line_bytes: int,
               input_format: str = 'auto'):
    self._fields = fields
    self._max_line_bytes = max_line_bytes
    self._input_format = input_format

  def process(self, chunk: LineChunk):
    numbers, lines, totals = zip(*chunk.lines) if chunk.lines else ((),) * 3
    plain = plain_records(lines, totals, self._fields, self._max_line_bytes,
                          self._input_format)
    records, blank_lines = yield from self._records(
        chunk.source, numbers, lines, totals, plain)
    yield stats.emit(self.STATS, {
        'lines': len(lines), 'blank_lines': blank_lines,
        # Each line's bytes and its newline: how far into the input we are.
        'input_bytes': sum(totals) + len(lines)})
    if records.example_ids:
      yield records

  def _records(self, source, numbers, lines, totals, plain):
    """Yields the Rejected of each line that is not a plain record; gives
    (RecordChunk of the chunk's records in line order, blank lines). The
    plain lines (`plain`, a PlainRecords; None: there are none) are taken
    as they are, the others parsed by parse_line."""
    count = len(lines)
    if plain is None:
      plain = PlainRecords([None] * count, [None] * count, [None] * count)
    records = RecordChunk(source, list(numbers), plain.ids, plain.prompts,
                          plain.outputs, [None] * count, list(lines))
    dropped = set()  # blank and rejected lines
    blank_lines = 0
    for index in [i for i, plain_id in enumerate(plain.ids)
                  if plain_id is None]:
      parsed = parse_line(source, numbers[index], lines[index],
                          totals[index], self._fields, self._max_line_bytes,
                          self._input_format)
      if parsed is None or isinstance(parsed, Rejected):
        dropped.add(index)
        if parsed is None:
          blank_lines += 1
        else:
          yield beam.pvalue.TaggedOutput(self.REJECTED, parsed)
        continue
      record, records.inputs[index] = parsed
      records.example_ids[index] = record.example_id
      records.prompts[index] = record.prompt
      records.outputs[index] = record.output
      records.conversations[index] = record.conversation
    if dropped:
      records = records.subset(
          [index for index in range(count) if index not in dropped])
    return records, blank_lines


# A row with a value in one of these columns may be a chat record.
_CHAT_COLUMNS = ('messages', 'completion')


def record_columns(fields: FieldNames) -> tuple:
  """The columns of a Parquet file that a record may read: the prompt,
  output and id fields and a chat record's keys."""
  return tuple(dict.fromkeys(tuple(fields) + chat_records.RECORD_KEYS))


class ParseRows(beam.DoFn):
  """RowChunk -> one RecordChunk (main output) per chunk with a record.

  A row is read as the JSON object of its non-null columns, a null read as
  an absent key at every depth (records.without_nulls), and checked as a
  JSON line is (parse_object). A row that can only be a prompt/output
  record (input_format prompt_output, or auto with no value in `messages`
  or `completion`) is read column by column instead, without building
  its object. Also gives Rejected rows (their `row_number`, their row as
  JSON) on the `rejected` output and a stats dict (`rows`, `input_bytes`)
  per chunk on the `stats` output.
  """
  REJECTED = 'rejected'
  STATS = 'stats'

  def __init__(self, fields: FieldNames, input_format: str = 'auto'):
    self._fields = fields
    self._input_format = input_format

  def process(self, chunk: RowChunk):
    rows = chunk.rows
    columns = {name: column_values(column)
               for name, column in zip(rows.schema.names, rows.columns)}
    records = RecordChunk.empty(chunk.source, rows)
    for index in range(rows.num_rows):
      number = chunk.first_row_number + index
      try:
        record = self._parse_row(columns, index)
      except ParseError as error:
        yield beam.pvalue.TaggedOutput(self.REJECTED, rejected_row(
            chunk.source, number, error.reason, str(error), rows, index))
        continue
      records.add(number, record.example_id, index, record.prompt,
                  record.output, record.conversation)
    yield stats.emit(self.STATS, {
        'rows': rows.num_rows, 'input_bytes': chunk.input_bytes})
    if records.example_ids:
      yield records

  def _parse_row(self, columns: dict, index: int) -> ParsedRecord:
    """The record of row `index` of `columns` ({name: values}), or raises
    ParseError."""
    fields = self._fields
    # Strings come from UTF-8, which holds no lone surrogate: escaped=False.
    if self._input_format == 'messages' or (
        self._input_format == 'auto' and any(
            _cell(columns, name, index) is not None
            for name in _CHAT_COLUMNS)):
      obj = {name: _cell(columns, name, index) for name in columns}
      return parse_object(without_nulls(obj), fields, self._input_format,
                          escaped=False)
    prompt, output, id_value = (_cell(columns, name, index)
                                for name in fields)
    return prompt_output_record(_ABSENT if prompt is None else prompt,
                                _ABSENT if output is None else output,
                                id_value, fields, escaped=False)


class ParseChunks(beam.DoFn):
  """LineChunk -> ParseLines' outputs; RowChunk -> ParseRows' (the same
  tags): one step for both formats, so that the records reach the
  tokenizer without a Flatten (see transforms/read_input.py)."""
  REJECTED = ParseLines.REJECTED
  STATS = ParseLines.STATS

  def __init__(self, fields: FieldNames, max_line_bytes: int,
               input_format: str = 'auto'):
    self._lines = ParseLines(fields, max_line_bytes, input_format)
    self._rows = ParseRows(fields, input_format)

  def process(self, chunk: Union[LineChunk, RowChunk]
              ) -> Iterable[RecordChunk]:
    if isinstance(chunk, RowChunk):
      return self._rows.process(chunk)
    return self._lines.process(chunk)


def _cell(columns: dict, name: str, index: int):
  """Row `index`'s value in column `name` (None: null, or no such column);
  raises ParseError for one whose strings are not UTF-8."""
  column = columns.get(name)
  value = None if column is None else column[index]
  if isinstance(value, NotUtf8):
    raise ParseError('invalid_utf8', f'column "{name}": {value.error}')
  return value
