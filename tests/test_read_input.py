"""transforms/read_input.py: ReadInput, input globs to chunks."""

import os

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from conftest import beam_test_pipeline
from sftbeam.transforms.parse import FieldNames, record_columns
from sftbeam.transforms.read_input import ReadInput


FIELDS = FieldNames()


@pytest.mark.slow
def test_read_line_chunks_in_pipeline(tmp_path):
  for name, count in (('a.jsonl', 5), ('b.jsonl', 2)):
    (tmp_path / name).write_bytes(b''.join(b'%d\n' % i for i in range(count)))
  with beam_test_pipeline() as root:
    chunks = root | ReadInput([str(tmp_path / '*.jsonl')], 2, 100,
                              record_columns(FIELDS))
    sizes = chunks | beam.Map(
        lambda chunk: (os.path.basename(chunk.source), len(chunk.lines)))
    assert_that(sizes, equal_to([('a.jsonl', 2), ('a.jsonl', 2),
                                 ('a.jsonl', 1), ('b.jsonl', 2)]))
