"""Grouping tokenized records of one length bucket into batches."""

import apache_beam as beam


class BatchByBucket(beam.PTransform):
  """(bucket, TokenizedRecord) -> (bucket, [TokenizedRecord, ...]).

  Batches hold up to `batch_size` records of one bucket; the last partial
  batch of each bucket is kept. With `max_buffering_seconds` (streaming), a
  partial batch is also flushed after that long, so a slow trickle of
  records still produces batches.
  """

  def __init__(self, batch_size: int, max_buffering_seconds=None):
    super().__init__()
    self._batch_size = batch_size
    self._max_buffering_seconds = max_buffering_seconds

  def expand(self, keyed_records):
    return keyed_records | 'GroupIntoBatches' >> beam.GroupIntoBatches(
        self._batch_size,
        max_buffering_duration_secs=self._max_buffering_seconds)
