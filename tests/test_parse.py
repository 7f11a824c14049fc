"""transforms/parse.py: JSON lines to records, or rejected with a reason."""

import json

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given
from hypothesis import strategies as st

import hostile_cases
import strategies
from conftest import beam_test_pipeline, dofn_outputs
from sftbeam.transforms.parse import (FieldNames, ParseLines, content_id,
                                      parse_line)
from sftbeam.pipeline.options import MAX_OPTION_CHARS
from sftbeam.transforms.records import (MAX_MESSAGE_CHARS, LineChunk,
                                        RecordChunk, Rejected)


FIELDS = FieldNames()
GOOD = b'{"prompt": "What is 2+2?", "output": "4", "id": "q1"}'


def test_parse_lines_directly():
  chunk = LineChunk('f.jsonl', [(1, GOOD, len(GOOD)), (2, b'  ', 2),
                                (3, b'[1]', 3), (4, b'\xff', 1)])
  main, tagged = dofn_outputs(ParseLines(FIELDS, 1000), chunk)
  assert main[0].example_ids == ['q1']
  assert [(r.line_number, r.reason) for r in tagged['rejected']] == [
      (3, 'not_an_object'), (4, 'invalid_utf8')]
  assert tagged['stats'] == [{'lines': 4, 'blank_lines': 1,
                              'input_bytes': len(GOOD) + 2 + 3 + 1 + 4}]


def test_parse_gives_content_ids_and_custom_fields():
  line = b'{"q": "Hi", "a": "Yo"}'
  chunk = LineChunk('f', [(7, line, len(line))])
  main, _ = dofn_outputs(ParseLines(FieldNames('q', 'a', 'key'), 1000), chunk)
  records = main[0]
  assert (records.prompts, records.outputs) == (['Hi'], ['Yo'])
  assert records.example_ids == [content_id('Hi', 'Yo')]
  assert len(records.example_ids[0]) == 16
  line = b'{"q": "Hi", "a": "Yo", "key": ""}'
  main, _ = dofn_outputs(ParseLines(FieldNames('q', 'a', 'key'), 1000),
                     LineChunk('f', [(8, line, len(line))]))
  assert main[0].example_ids == [content_id('Hi', 'Yo')]


def test_rejection_messages_are_capped_whatever_the_field_name():
  """A field name as long as an option may be (4096 characters) is not
  repeated whole in every rejection; neither is a message made later."""
  fields = FieldNames(prompt='p' * MAX_OPTION_CHARS)
  chunk = LineChunk('f', [(1, GOOD, len(GOOD))])
  _, tagged = dofn_outputs(ParseLines(fields, 1000), chunk)
  [rejected] = tagged['rejected']
  assert rejected.reason == 'missing_field'
  whole = f'no "{fields.prompt}" field'
  assert rejected.message == (whole[:MAX_MESSAGE_CHARS] + f'...['
                              f'{len(whole) - MAX_MESSAGE_CHARS} more chars]')
  records = RecordChunk.empty('f')
  records.add(2, 'q2', GOOD, 'What is 2+2?', '4')
  later = records.reject(0, 'tokenizer_error', 'x' * 10**6)
  assert later.message.startswith('x' * MAX_MESSAGE_CHARS + '...[')
  assert len(later.message) < MAX_MESSAGE_CHARS + 30


@pytest.mark.slow
def test_parse_lines_in_pipeline():
  chunk = LineChunk('f', [(1, GOOD, len(GOOD)), (2, b'{', 1)])
  with beam_test_pipeline() as root:
    parsed = (root | beam.Create([chunk])
              | beam.ParDo(ParseLines(FIELDS, 1000)).with_outputs(
                  'rejected', 'stats', main='records'))
    assert_that(parsed.records | 'Ids' >> beam.Map(
        lambda records: records.example_ids),
                equal_to([['q1']]), label='Records')
    assert_that(parsed.rejected | 'Reasons' >> beam.Map(lambda r: r.reason),
                equal_to(['invalid_json']), label='Rejected')


# ------------------------------------------ plain records: the chunk path

def _line_by_line(chunk: LineChunk, fields=FIELDS, max_line_bytes=1000,
                  input_format='auto'):
  """What ParseLines must give, from parse_line line by line: (records as
  (number, id, prompt, output, conversation, input) tuples, rejections as
  (line number, reason, message, raw), blank lines)."""
  records, rejected, blank = [], [], 0
  for number, line, total in chunk.lines:
    parsed = parse_line(chunk.source, number, line, total, fields,
                        max_line_bytes, input_format)
    if parsed is None:
      blank += 1
    elif isinstance(parsed, Rejected):
      rejected.append(parsed)
    else:
      record, kept = parsed
      records.append((number, record.example_id, record.prompt,
                      record.output, record.conversation, kept))
  return records, rejected, blank


def _chunked(chunk: LineChunk, fields=FIELDS, max_line_bytes=1000,
             input_format='auto'):
  """The same three from ParseLines, which parses plain lines per chunk."""
  main, tagged = dofn_outputs(
      ParseLines(fields, max_line_bytes, input_format), chunk)
  records = [record for records in main
             for record in zip(records.numbers, records.example_ids,
                               records.prompts, records.outputs,
                               records.conversations, records.inputs)]
  [stats] = tagged['stats']
  return records, tagged.get('rejected', []), stats['blank_lines']


def _lines(raw_lines):
  return LineChunk('f.jsonl', [(number, line, len(line)) for number, line
                               in enumerate(raw_lines, start=1)])


def test_every_hostile_line_parses_as_parse_line_parses_it():
  """Each hostile case alone, and all of them in one chunk between good
  lines: the chunk path decides nothing parse_line would not."""
  lines = [case.line for case in hostile_cases.cases()
           if len(case.line) < 1 << 20]
  for line in lines:
    assert _chunked(_lines([line])) == _line_by_line(_lines([line]))
  mixed = _lines([GOOD.replace(b'q1', b'g%d' % i) if i % 2 else line
                  for i, line in enumerate(
                      x for line in lines for x in (line, GOOD))])
  assert _chunked(mixed) == _line_by_line(mixed)
  assert _chunked(mixed, max_line_bytes=60) == _line_by_line(
      mixed, max_line_bytes=60)
  for input_format in ('prompt_output', 'messages'):
    assert _chunked(mixed, input_format=input_format) == _line_by_line(
        mixed, input_format=input_format)


@pytest.mark.parametrize('line', [
    b'{"prompt": "a", "output": "b", "prompt": "c", "id": "r"}',  # repeated
    b'{"prompt": "a", "output": "b", "\\u0070rompt": "c", "id": "e"}',
    b'{"id": "s", "prompt": "\\ud800", "output": "b"}',  # lone surrogate
    b'{"prompt": "a", "output": "b", "id": "x", "id": "y"}',
    b'{"prompt": "a", "output": "b", "id": true}',
    b'{"prompt": "a", "output": "b", "id": 1.0}',
    b'{"prompt": "a", "output": "b", "id": 123456789012345678901234567890}',
    b'{"prompt": "a", "output": "b", "id": ""}',
    b'{"prompt": "a", "output": "b", "id": 7}',
    b'{"prompt": "a", "output": " \\n"}',
    b'{"prompt": "\\ud800", "output": "b"}',
    b'\xef\xbb\xbf{"prompt": "a", "output": "b"}',
    b'{"prompt": "a", "output": "b", "messages": []}',
    b'{"prompt": "a", "output": "b", "x": {"prompt": 1}}',
    b'{"prompt": "a", "output": "prompt"}',
    b'{"prompt": "a", "output": "\\"prompt\\""}',
    b'{"prompt": "a", "output": "b", "n": NaN}',
    b'{"prompt": "a", "output": "b", "n": 1e400}',
])
def test_lines_only_parse_line_can_judge(line):
  """Lines the chunk path must leave to parse_line (or may take only when
  parse_line would decide the same), alone and beside a plain line."""
  for chunk in (_lines([line]), _lines([GOOD, line, GOOD])):
    assert _chunked(chunk) == _line_by_line(chunk)


_TEXT = st.text(st.sampled_from('ab "\\\n\u00e9\u2028 \t{}'), max_size=6)
_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**70), _TEXT,
                   st.floats(allow_nan=False), st.lists(_TEXT, max_size=2))
_KEY = st.sampled_from(['prompt', 'output', 'id', 'messages', 'x'])


@strategies.EXAMPLES
@given(st.lists(st.lists(st.tuples(_KEY, _VALUE), max_size=5), max_size=12),
       st.booleans())
def test_generated_chunks_parse_as_parse_line_parses_them(objects, ensure_ascii):
  """Objects with repeated, missing, escaped and odd fields, written as
  JSON lines by hand (so keys may repeat)."""
  lines = []
  for pairs in objects:
    body = ', '.join(json.dumps(key, ensure_ascii=ensure_ascii) + ': ' +
                     json.dumps(value, ensure_ascii=ensure_ascii)
                     for key, value in pairs)
    lines.append(('{' + body + '}').encode('utf-8'))
  chunk = _lines(lines)
  assert _chunked(chunk) == _line_by_line(chunk)
