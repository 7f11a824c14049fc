"""transforms/gc_thresholds.py: fewer collections while steps that make
records are set up in a process, the thresholds as before once the last
is torn down."""

import gc

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from conftest import beam_test_pipeline
from sftbeam.transforms import gc_thresholds
from sftbeam.transforms.records import RecordChunk
from sftbeam.transforms.tokenize import TokenizeRecords, TokenizeSettings
from sftbeam.transforms.tokenizer_source import EMBEDDED


@pytest.fixture
def default_thresholds():
  """The test starts and ends with CPython's defaults, whatever other
  tests' steps left set up."""
  before = gc.get_threshold()
  while gc_thresholds._steps:  # pylint: disable=protected-access
    gc_thresholds.collect_as_before()
  gc.set_threshold(700, 10, 10)
  yield (700, 10, 10)
  gc.set_threshold(*before)


def test_the_last_step_torn_down_restores_the_thresholds(default_thresholds):
  gc_thresholds.collect_less()
  gc_thresholds.collect_less()
  assert gc.get_threshold() == gc_thresholds.FEWER_COLLECTIONS
  gc_thresholds.collect_as_before()
  assert gc.get_threshold() == gc_thresholds.FEWER_COLLECTIONS
  gc_thresholds.collect_as_before()
  assert gc.get_threshold() == default_thresholds
  gc_thresholds.collect_as_before()  # one too many: nothing to undo
  assert gc.get_threshold() == default_thresholds


def test_thresholds_set_by_the_user_are_what_is_restored(default_thresholds):
  del default_thresholds
  gc.set_threshold(1234, 5, 6)
  gc_thresholds.collect_less()
  gc_thresholds.collect_as_before()
  assert gc.get_threshold() == (1234, 5, 6)


class _Thresholds(beam.DoFn):
  def process(self, unused_element):
    yield gc.get_threshold()


@pytest.mark.slow
def test_a_pipeline_run_in_this_process_leaves_the_thresholds_as_found(
    default_thresholds):
  """Fewer collections while TokenizeRecords runs; as before once the
  pipeline has ended (its steps torn down)."""
  chunk = RecordChunk.empty('f')
  chunk.add(1, 'a', b'{}', 'What is 2 + 2?', 'Four.')
  with beam_test_pipeline() as root:
    tokenized = (root | beam.Create([chunk])
                 | beam.ParDo(TokenizeRecords(TokenizeSettings(
                     EMBEDDED, 64))).with_outputs(
                         TokenizeRecords.REJECTED, TokenizeRecords.STATS,
                         main='chunks'))
    assert_that(tokenized.chunks | beam.ParDo(_Thresholds()),
                equal_to([gc_thresholds.FEWER_COLLECTIONS]))
  assert gc.get_threshold() == default_thresholds
