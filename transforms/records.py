"""The values that flow between the DoFns.

Lines of input travel as a `LineChunk` (rows of a Parquet file as a
`RowChunk`), then, parsed, as a `RecordChunk`, then, tokenized, as a
`TokenChunk` (arrays, not one object per record); at any step a line, row
or record may leave as a `Rejected` with a reason code.
Stats travel as flat `{name: count}` dicts that `SumStatsFn` adds up (see
transforms/stats.py).
"""

import itertools
import json
from typing import Any, List, NamedTuple, Optional, Tuple

import numpy as np

# Rejected output keeps at most this much of the offending line, and of
# the message saying why (messages quote field names and contents).
MAX_RAW_CHARS = 1000
MAX_MESSAGE_CHARS = 500


class LineChunk(NamedTuple):
  """Consecutive lines of one source file.

  `lines` holds (line_number, line_bytes, total_bytes); a line longer than
  the reader's limit is kept only as its prefix, `total_bytes` telling its
  real size.
  """
  source: str
  lines: List[Tuple[int, bytes, int]]


class RowChunk(NamedTuple):
  """Consecutive rows of one Parquet file, as Arrow columns.

  `rows` is a pyarrow RecordBatch of the columns a record may read (the
  others are never read); its row i is row `first_row_number + i` of the
  file (1-based). `input_bytes`: the share of the file's bytes these rows
  stand for, for the progress line.
  """
  source: str
  first_row_number: int
  rows: Any
  input_bytes: int


class RecordChunk(NamedTuple):
  """Parsed records of one source, as parallel lists.

  A prompt/output record has its `prompts` and `outputs` entries and None
  in `conversations`; a chat record the reverse (a `chat_records.Conversation`).
  `numbers` are the records' line numbers (JSON lines) or row numbers
  (Parquet), 1-based. `inputs` are what a rejection by a later step shows
  of each record: its input line (UTF-8 bytes, kept, not copied), or, for
  a Parquet chunk, its row's index in `rows`, the chunk's RecordBatch.
  """
  source: str
  numbers: List[Optional[int]]
  example_ids: List[str]
  prompts: List[Optional[str]]
  outputs: List[Optional[str]]
  conversations: list
  inputs: list
  rows: Any = None

  @staticmethod
  def empty(source: str, rows=None) -> 'RecordChunk':
    """A chunk without records; `rows`: the RecordBatch of a Parquet chunk."""
    return RecordChunk(source, [], [], [], [], [], [], rows)

  def add(self, number, example_id, raw_input, prompt=None, output=None,
          conversation=None):
    """Appends a record; `raw_input` as `inputs` holds it (line bytes or
    row index)."""
    self.numbers.append(number)
    self.example_ids.append(example_id)
    self.prompts.append(prompt)
    self.outputs.append(output)
    self.conversations.append(conversation)
    self.inputs.append(raw_input)

  def subset(self, indices) -> 'RecordChunk':
    """The records at `indices`, in that order."""
    lists = ([column[i] for i in indices] for column in (
        self.numbers, self.example_ids, self.prompts, self.outputs,
        self.conversations, self.inputs))
    return RecordChunk(self.source, *lists, rows=self.rows)

  def reject(self, index: int, reason: str, message: str) -> 'Rejected':
    """Record `index` as a Rejected with this reason."""
    if self.rows is None:
      return Rejected.capped(self.source, self.numbers[index], reason,
                             message, self.inputs[index].decode('utf-8'))
    return rejected_row(self.source, self.numbers[index], reason, message,
                        self.rows, self.inputs[index])


class Rejected(NamedTuple):
  """A record that is not written, and why. A line's `line_number` (None
  for a Pub/Sub message), or a Parquet row's `row_number` (1-based, and
  `line_number` None); `raw`: the line, or the row as a JSON line (see
  `row_as_json`), cut at MAX_RAW_CHARS."""
  source: str
  line_number: Optional[int]
  reason: str
  message: str
  raw: str
  row_number: Optional[int] = None

  @staticmethod
  def capped(source: str, line_number: Optional[int], reason: str,
             message: str, raw: str,
             row_number: Optional[int] = None) -> 'Rejected':
    """A Rejected whose message and raw line are cut to MAX_MESSAGE_CHARS
    and MAX_RAW_CHARS: a rejected file stays a few KB per line whatever
    the line or the options."""
    return Rejected(source, line_number, reason,
                    _cut(message, MAX_MESSAGE_CHARS), _cut(raw, MAX_RAW_CHARS),
                    row_number)

  def to_json(self) -> str:
    """One line of rejected-*.jsonl: source, line_number or row_number,
    reason, message, raw."""
    where = (('line_number', self.line_number) if self.row_number is None
             else ('row_number', self.row_number))
    return json.dumps(dict([('source', self.source), where,
                            ('reason', self.reason),
                            ('message', self.message), ('raw', self.raw)]),
                      ensure_ascii=False)


def rejected_row(source: str, row_number: int, reason: str, message: str,
                 rows, index: int) -> Rejected:
  """Row `index` of the RecordBatch `rows` (row `row_number` of `source`)
  as a Rejected with this reason."""
  return Rejected.capped(source, None, reason, message,
                         row_as_json(rows, index), row_number)


def without_nulls(value):
  """A value read from Parquet with every null-valued key dropped, at
  every depth. Arrow gives a struct every field of its type, null where a
  row has none (the fields other rows had: `tool_calls`, `weight`, other
  tools' parameters), so a key that is null reads as a key that is
  absent."""
  if isinstance(value, dict):
    return {key: without_nulls(item) for key, item in value.items()
            if item is not None}
  if isinstance(value, list):
    return [without_nulls(item) for item in value]
  return value


class NotUtf8:
  """A Parquet value whose string bytes are not UTF-8: `error` says where;
  str() shows a string's bytes with U+FFFD for the bad ones."""

  def __init__(self, error: str, text: str):
    self.error = error
    self._text = text

  def __str__(self) -> str:
    return self._text


def _python_value(scalar):
  """One Arrow scalar as column_values gives it."""
  try:
    return scalar.as_py(maps_as_pydicts='lossy')
  except UnicodeDecodeError as error:
    # A string scalar shows its bytes; a nested value only that it is bad.
    text = (scalar.as_buffer().to_pybytes().decode('utf-8', 'replace')
            if hasattr(scalar, 'as_buffer') else '[not UTF-8]')
    return NotUtf8(str(error), text)


def column_values(column) -> list:
  """The Python values of an Arrow array: null as None, maps as dicts, and
  a value holding a string that is not UTF-8 as a NotUtf8 (Arrow does not
  check the bytes of a Parquet string; Python does, when it decodes)."""
  try:
    return column.to_pylist(maps_as_pydicts='lossy')
  except UnicodeDecodeError:
    return [_python_value(scalar) for scalar in column]


def row_as_json(rows, index: int) -> str:
  """Row `index` of a RecordBatch as the JSON line it reads as: its
  non-null columns, nulls dropped (`without_nulls`); values JSON has no
  type for (bytes, dates, NotUtf8) as their str()."""
  row = {name: column_values(column.slice(index, 1))[0]
         for name, column in zip(rows.schema.names, rows.columns)}
  return json.dumps(without_nulls(row), ensure_ascii=False, default=str)


def _cut(text: str, limit: int) -> str:
  """At most `limit` characters of `text`, marking what was cut."""
  if len(text) <= limit:
    return text
  return text[:limit] + f'...[{len(text) - limit} more chars]'


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """int64: start[0], start[0]+1, ... (lengths[0] values), then the same
  for every range in turn; vectorized."""
  starts = np.asarray(starts, dtype=np.int64)
  lengths = np.asarray(lengths, dtype=np.int64)
  # One arange over all, shifted per range from where it lands in the
  # result to where it starts.
  landed = np.cumsum(lengths) - lengths
  return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(
      starts - landed, lengths)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
  """int64 [n + 1]: 0 and the running sums of `lengths`."""
  offsets = np.zeros(len(lengths) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  return offsets


# Ranges at least this long on average are copied a slice each, shorter ones
# by numpy takes (which cost per value, a slice per range).
_SLICED_RANGE_LENGTH = 96


def _copy_ranges(columns, starts, ends, total: int) -> list:
  """New arrays, one per column: of part k, the values starts[k][i] to
  ends[k][i] - 1 of each of its columns (`columns[k]`: arrays of one
  length; column j of every part of one dtype), for every range i of
  every part in turn; `total` values each."""
  count = sum(map(len, starts))
  if count and total < count * _SLICED_RANGE_LENGTH:
    return _taken_ranges(columns, starts, ends, total)
  return _sliced_ranges(columns, starts, ends)


def _taken_ranges(columns, starts, ends, total: int) -> list:
  """_copy_ranges by numpy takes: one per column and part."""
  outs = [np.empty(total, column.dtype) for column in columns[0]]
  filled = 0
  for part_columns, part_starts, part_ends in zip(columns, starts, ends):
    positions = ranges(part_starts, part_ends - part_starts)
    for column, out in zip(part_columns, outs):
      np.take(column, positions, out=out[filled:filled + len(positions)])
    filled += len(positions)
  return outs


def _sliced_ranges(columns, starts, ends) -> list:
  """_copy_ranges by a memoryview slice a range (cheaper than a numpy
  slice), joined once per column."""
  bounds = [(part_starts.tolist(), part_ends.tolist())
            for part_starts, part_ends in zip(starts, ends)]
  outs = []
  for column, dtype in enumerate(column.dtype for column in columns[0]):
    views = []
    for part_columns, (part_starts, part_ends) in zip(columns, bounds):
      view = memoryview(np.ascontiguousarray(part_columns[column]))
      views += [view[start:end] for start, end in zip(part_starts, part_ends)]
    # bytearray: the array is writable, as np.take's would be.
    outs.append(np.frombuffer(bytearray().join(views), dtype))
  return outs


class TokenChunk(NamedTuple):
  """Tokenized records held as arrays: what flows from tokenizing to batching.

  Record i's token sequence (its prompt then its output; for a conversation,
  the rendered conversation) is `ids[offsets[i]:offsets[i + 1]]`, and
  `supervised` flags, token by token, the tokens a model learns to predict
  (output tokens; assistant turns). A row of the spec is built from a
  sequence `seq` and its flags `sup` as `input_ids = seq[:-1]`,
  `labels = seq[1:]`, `response_mask = sup[1:]`.

    example_ids     n record ids (str)
    ids             int64 [total tokens], every record's tokens, end to end
    offsets         int64 [n + 1], record i spans offsets[i]:offsets[i + 1]
    supervised      bool [total tokens]
    prompt_lengths  int64 [n], tokens before the first supervised token
    truncated       bool [n], whether truncation shortened the record
  """
  example_ids: List[str]
  ids: np.ndarray
  offsets: np.ndarray
  supervised: np.ndarray
  prompt_lengths: np.ndarray
  truncated: np.ndarray

  def __len__(self) -> int:
    return len(self.example_ids)

  @property
  def lengths(self) -> np.ndarray:
    """int64 [n]: tokens of each record (prompt + output)."""
    return np.diff(self.offsets)

  @property
  def output_lengths(self) -> np.ndarray:
    """int64 [n]: tokens from the first supervised one to the end."""
    return self.lengths - self.prompt_lengths

  def token_rows(self, indices) -> np.ndarray:
    """int64 [tokens of the records at `indices`]: positions into `ids`,
    record after record in the order given."""
    indices = np.asarray(indices, dtype=np.int64)
    starts = self.offsets[indices]
    return ranges(starts, self.offsets[indices + 1] - starts)

  def take(self, indices) -> 'TokenChunk':
    """The records at `indices`, in that order."""
    return TokenChunk.gather([(self, indices)])

  def slice(self, start: int, end: int) -> 'TokenChunk':
    """Records start to end - 1: views of this chunk's arrays, no copy."""
    first, last = int(self.offsets[start]), int(self.offsets[end])
    return TokenChunk(
        example_ids=self.example_ids[start:end],
        ids=self.ids[first:last],
        offsets=self.offsets[start:end + 1] - first,
        supervised=self.supervised[first:last],
        prompt_lengths=self.prompt_lengths[start:end],
        truncated=self.truncated[start:end])

  @staticmethod
  def gather(parts) -> 'TokenChunk':
    """One chunk of the records at `indices` of each (chunk, indices) of
    `parts`, in that order, each token copied once."""
    parts = [(chunk, np.asarray(indices, dtype=np.int64))
             for chunk, indices in parts]
    starts = [chunk.offsets[indices] for chunk, indices in parts]
    ends = [chunk.offsets[indices + 1] for chunk, indices in parts]
    offsets = offsets_of(np.concatenate(ends) - np.concatenate(starts))
    ids, supervised = _copy_ranges(
        [(np.asarray(chunk.ids, np.int64),
          np.asarray(chunk.supervised, np.bool_)) for chunk, _ in parts],
        starts, ends, int(offsets[-1]))
    return TokenChunk(
        example_ids=[example_id for chunk, indices in parts for example_id in
                     map(chunk.example_ids.__getitem__, indices.tolist())],
        ids=ids, offsets=offsets, supervised=supervised,
        prompt_lengths=np.concatenate([chunk.prompt_lengths[indices]
                                       for chunk, indices in parts]),
        truncated=np.concatenate([chunk.truncated[indices]
                                  for chunk, indices in parts]))

  def renamed(self, example_ids) -> 'TokenChunk':
    """The same records under these ids (`_replace` cannot: the tuple's
    length is not the records')."""
    return TokenChunk(list(example_ids), *self[1:])

  @staticmethod
  def concat(chunks) -> 'TokenChunk':
    """One chunk holding the records of `chunks`, in order."""
    chunks = list(chunks)
    if len(chunks) == 1:
      return chunks[0]
    lengths = np.concatenate([chunk.lengths for chunk in chunks])
    return TokenChunk(
        example_ids=[i for chunk in chunks for i in chunk.example_ids],
        ids=np.concatenate([chunk.ids for chunk in chunks]),
        offsets=offsets_of(lengths),
        supervised=np.concatenate([chunk.supervised for chunk in chunks]),
        prompt_lengths=np.concatenate(
            [chunk.prompt_lengths for chunk in chunks]),
        truncated=np.concatenate([chunk.truncated for chunk in chunks]))

  @staticmethod
  def from_sequences(example_ids, sequences, supervised, truncated=None):
    """A chunk from per-record token lists and per-record flag lists."""
    lengths = np.fromiter(map(len, sequences), np.int64, len(sequences))
    total = int(lengths.sum())
    offsets = offsets_of(lengths)
    flags = np.fromiter(itertools.chain.from_iterable(supervised), np.bool_,
                        total)
    # A record's prompt ends at its first supervised token (a record with
    # none is all prompt).
    prompt_lengths = lengths.copy()
    flagged = np.flatnonzero(flags)
    records = np.searchsorted(offsets, flagged, side='right') - 1
    records, first = np.unique(records, return_index=True)
    prompt_lengths[records] = flagged[first] - offsets[records]
    return TokenChunk(
        example_ids=list(example_ids),
        ids=np.fromiter(itertools.chain.from_iterable(sequences), np.int64,
                        total),
        offsets=offsets,
        supervised=flags,
        prompt_lengths=prompt_lengths,
        truncated=(np.zeros(len(sequences), np.bool_) if truncated is None
                   else np.asarray(truncated, np.bool_)))
