"""Streaming logic in-process, with Beam's TestStream: flushes on a timer,
the write windows' panes, late data, and packing per flush.

The emulator test (tests/test_streaming.py) runs the whole job against
Pub/Sub; these drive the watermark and processing time by hand.
"""

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing import test_pipeline, test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from sftbeam.transforms.packed import PackIntoRows, PackShape
from sftbeam.transforms.padded import BatchByBucket, BatchShape
from sftbeam.transforms.windows import (ALLOWED_LATENESS_SECONDS,
                                        IntoWriteWindows, write_windows)
from token_chunks import pairs_chunk


def streaming_pipeline():
  """The DirectRunner's streaming engine, named directly (plain
  DirectRunner would first try Prism, which downloads a binary)."""
  options = StandardOptions(streaming=True)
  options.runner = 'BundleBasedDirectRunner'
  return test_pipeline.TestPipeline(options=options)


class FixedClock:
  """Processing time as TestStream's clock starts it: 0."""

  def __call__(self):
    return Timestamp(0)


def records(prefix, count, length=5):
  """A TokenChunk of `count` records of `length` tokens."""
  return pairs_chunk([[1]] * count, [[2] * (length - 1)] * count,
                     [f'{prefix}{index}' for index in range(count)])


@pytest.mark.slow
def test_a_partial_batch_leaves_after_max_buffering_seconds():
  """3 records sit in a bucket of batch 32: the buffering timer flushes
  them; 40 more give a full batch at once and 8 that leave at the end."""
  stream = (test_stream.TestStream()
            .advance_watermark_to(0)
            .add_elements([records('a', 3)])
            .advance_processing_time(5)  # past max_buffering_seconds 2
            .add_elements([records('b', 40)])
            .advance_watermark_to_infinity())
  with streaming_pipeline() as root:
    batches = (root | stream
               | BatchByBucket(BatchShape((8,), 32), 'global', 2,
                               clock=FixedClock()))
    assert_that(batches | beam.FlatMap(
        lambda group: [len(batch) for batch in group.batches()]),
                equal_to([3, 32, 8]))
    assert_that(batches | 'Ids' >> beam.FlatMap(
        lambda group: group.records.example_ids),
                equal_to([f'a{i}' for i in range(3)] +
                         [f'b{i}' for i in range(40)]), label='EachOnce')


@pytest.mark.slow
def test_packing_per_flush_packs_what_each_flush_holds():
  stream = (test_stream.TestStream()
            .advance_watermark_to(0)
            .add_elements([records('a', 5, length=10)])
            .advance_processing_time(5)
            .add_elements([records('b', 2, length=10)])
            .advance_watermark_to_infinity())
  with streaming_pipeline() as root:
    batches = (root | stream
               | PackIntoRows(PackShape(pack_length=20, pack_window=1000,
                                        rows=8), 2, clock=FixedClock()))
    # 5 records of L = 9 pack two to a row of 20: 3 rows; then 2 more.
    assert_that(batches | beam.Map(
        lambda kv: kv[1].examples_per_row.tolist()),
                equal_to([[2, 2, 1], [2]]))


class _Panes(beam.DoFn):
  """(key, values) -> (window start, pane timing, sorted values)."""

  def process(self, keyed, window_=beam.DoFn.WindowParam,
              pane=beam.DoFn.PaneInfoParam):
    yield (int(window_.start), PaneInfoTiming.to_string(pane.timing),
           sorted(keyed[1]))


@pytest.mark.slow
def test_write_windows_fire_on_time_and_give_late_data_a_pane():
  """An element behind the watermark, within the allowed lateness, fires a
  late pane of its own; one beyond it is dropped (by design: stamped with
  the wall clock, elements are never that late)."""
  stream = (test_stream.TestStream()
            .advance_watermark_to(0)
            .add_elements([window.TimestampedValue('a', 1),
                           window.TimestampedValue('b', 6)])
            .advance_watermark_to(11)
            .add_elements([window.TimestampedValue('late', 2)])
            .advance_watermark_to(ALLOWED_LATENESS_SECONDS + 20)
            .add_elements([window.TimestampedValue('too late', 3)])
            .advance_watermark_to_infinity())
  with streaming_pipeline() as root:
    panes = (root | stream
             | write_windows(5)
             | beam.WithKeys('')
             | beam.GroupByKey()
             | beam.ParDo(_Panes()))
    assert_that(panes, equal_to([
        (0, 'ON_TIME', ['a']), (5, 'ON_TIME', ['b']),
        (0, 'LATE', ['late'])]))


@pytest.mark.slow
def test_into_write_windows_stamps_with_the_clock():
  times = iter([3.0, 7.5, 12.0])
  with streaming_pipeline() as root:
    stamped = (root
               | test_stream.TestStream().add_elements(['x', 'y', 'z'])
               .advance_watermark_to_infinity()
               | IntoWriteWindows(5, clock=lambda: next(times))
               | beam.Map(lambda element, w=beam.DoFn.WindowParam:
                          (element, int(w.start))))
    assert_that(stamped, equal_to([('x', 0), ('y', 5), ('z', 10)]))
