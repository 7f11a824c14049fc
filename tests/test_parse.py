"""transforms/parse.py: JSON lines to records, or rejected with a reason."""

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from conftest import beam_test_pipeline, dofn_outputs
from sftbeam.transforms.parse import FieldNames, ParseLines, content_id
from sftbeam.pipeline.options import MAX_OPTION_CHARS
from sftbeam.transforms.records import (MAX_MESSAGE_CHARS, LineChunk,
                                        RecordChunk)


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
