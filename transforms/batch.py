"""Grouping tokenized records of one length bucket into batches."""

import collections

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows


class _BatchWithinBundleFn(beam.DoFn):
  """(bucket, record) -> (bucket, [record, ...]) within one bundle.

  Keeps one open batch per bucket; a full batch leaves at once, partial
  ones when the bundle ends. No shuffle: records stream through, and memory
  holds at most one batch per bucket. Bounded, globally windowed input only.
  """

  def __init__(self, batch_size: int):
    self._batch_size = batch_size
    self._open_batches = None

  def start_bundle(self):
    self._open_batches = collections.defaultdict(list)

  def process(self, keyed_record):
    bucket, record = keyed_record
    batch = self._open_batches[bucket]
    batch.append(record)
    if len(batch) == self._batch_size:
      del self._open_batches[bucket]
      yield bucket, batch

  def finish_bundle(self):
    for bucket, batch in self._open_batches.items():
      yield GlobalWindows.windowed_value((bucket, batch))
    self._open_batches = None


class BatchByBucket(beam.PTransform):
  """(bucket, TokenizedRecord) -> (bucket, [TokenizedRecord, ...]).

  Batches hold up to `batch_size` records of one bucket; partial batches are
  kept. By default `GroupIntoBatches` groups across all workers; with
  `max_buffering_seconds` (streaming) a partial batch is also flushed after
  that long, so a slow trickle still produces batches. `within_bundle`
  batches each bundle on its own instead, without a shuffle: on a local
  runner, where a shuffle holds all its data in memory, that keeps memory
  flat (one bundle there spans the whole input, so batches are the same).
  """

  def __init__(self, batch_size: int, max_buffering_seconds=None,
               within_bundle: bool = False):
    super().__init__()
    self._batch_size = batch_size
    self._max_buffering_seconds = max_buffering_seconds
    self._within_bundle = within_bundle

  def expand(self, keyed_records):
    if self._within_bundle:
      return keyed_records | 'BatchWithinBundle' >> beam.ParDo(
          _BatchWithinBundleFn(self._batch_size))
    return keyed_records | 'GroupIntoBatches' >> beam.GroupIntoBatches(
        self._batch_size,
        max_buffering_duration_secs=self._max_buffering_seconds)
