"""The padded layout's Beam steps: records into length buckets, a bucket's
records into batches, each batch padded into an Example.

A record's bucket is the smallest boundary >= L = prompt + output - 1; a
batch holds records of one bucket only: `batch_size` of them, or with
`batch_tokens` T, max(1, T // boundary) of them, so that every batch holds
about T tokens. Partial batches are kept. `BatchByBucket` forms batches by
either batching strategy (transforms/batch.py); `PadBatches` pads, shifts
and masks each one (transforms/spec_arithmetic.py) and encodes it for the
shard format (transforms/example_codec.py, transforms/parquet_shards.py).
"""

import time
from typing import Iterator, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from sftbeam.transforms import pack, spec_arithmetic, stats
from sftbeam.transforms.batch import (BATCHING_STRATEGIES, BufferPerKeyFn,
                                      EncodeBatchesFn)
from sftbeam.transforms.records import TokenChunk

PAD_TO_MODES = ('bucket', 'longest')


class BatchShape:
  """Which bucket a record goes to, and how many rows a bucket's batch has."""

  def __init__(self, boundaries: Sequence[int], batch_size: int,
               batch_tokens: Optional[int] = None):
    self.boundaries = np.asarray(boundaries, dtype=np.int64)
    self.batch_size = batch_size
    self.batch_tokens = batch_tokens

  def buckets(self, chunk: TokenChunk) -> np.ndarray:
    """int64 [n]: the bucket boundary of each record of `chunk`."""
    return self.boundaries[np.searchsorted(self.boundaries,
                                           chunk.lengths - 1)]

  def rows(self, bucket: int) -> int:
    """Rows of a full batch of `bucket`."""
    if self.batch_tokens:
      return pack.rows_per_batch(int(bucket), self.batch_tokens)
    return self.batch_size

  def by_bucket(self, chunk: TokenChunk) -> Iterator[Tuple[int, TokenChunk]]:
    """(bucket, its records of `chunk`) for every bucket present."""
    buckets = self.buckets(chunk)
    order = np.argsort(buckets, kind='stable')
    sorted_buckets = buckets[order]
    starts = np.flatnonzero(np.diff(sorted_buckets, prepend=-1))
    for start, end in zip(starts, list(starts[1:]) + [len(order)]):
      yield int(sorted_buckets[start]), chunk.take(order[start:end])

  def cut(self, bucket: int, records: TokenChunk):
    """(full batches of `records`, the records left over or None)."""
    rows = self.rows(bucket)
    full = len(records) // rows
    batches = [records.take(np.arange(index * rows, (index + 1) * rows))
               for index in range(full)]
    rest = None
    if full * rows < len(records):
      rest = records if not full else records.take(
          np.arange(full * rows, len(records)))
    return batches, rest


class _BatchWithinBundleFn(beam.DoFn):
  """TokenChunk -> (bucket, TokenChunk of one batch), within one bundle.

  Keeps one open batch per bucket; full batches leave at once, partial
  ones when the bundle ends. Bounded, globally windowed input only.
  """

  def __init__(self, shape: BatchShape):
    self._shape = shape
    self._open = None  # bucket -> TokenChunk of its open batch

  def start_bundle(self):
    self._open = {}

  def process(self, chunk: TokenChunk):
    for bucket, records in self._shape.by_bucket(chunk):
      if bucket in self._open:
        records = TokenChunk.concat([self._open.pop(bucket), records])
      batches, rest = self._shape.cut(bucket, records)
      for batch in batches:
        yield bucket, batch
      if rest is not None:
        self._open[bucket] = rest

  def finish_bundle(self):
    for bucket, batch in self._open.items():
      yield GlobalWindows.windowed_value((bucket, batch))
    self._open = None


class _ByBucketFn(beam.DoFn):
  """TokenChunk -> (bucket, its records of the chunk) per bucket."""

  def __init__(self, shape: BatchShape):
    self._shape = shape

  def process(self, chunk: TokenChunk):
    yield from self._shape.by_bucket(chunk)


class _BatchPerBucketFn(BufferPerKeyFn):
  """(bucket, TokenChunk) -> (bucket, TokenChunk of one batch), per key:
  full batches as soon as they fill, a partial one when the buffer is
  flushed (see BufferPerKeyFn)."""

  def __init__(self, shape: BatchShape, max_buffering_seconds=None,
               clock=time.time):
    super().__init__(max_buffering_seconds, clock)
    self._shape = shape

  def _capacity(self, bucket) -> int:
    return self._shape.rows(bucket)

  def _emit(self, bucket, chunk: TokenChunk, finished: bool):
    batches, rest = self._shape.cut(bucket, chunk)
    if finished and rest is not None:
      batches, rest = batches + [rest], None
    return [(bucket, batch) for batch in batches], rest


class BatchByBucket(beam.PTransform):
  """TokenChunks -> (bucket, TokenChunk of one batch) per batch.

  `batching` is "bundle" or "global" (transforms/batch.py);
  `max_buffering_seconds` applies to "global".
  """

  def __init__(self, shape: BatchShape, batching: str = 'global',
               max_buffering_seconds: Optional[float] = None,
               clock=time.time):
    super().__init__()
    if batching not in BATCHING_STRATEGIES:
      raise ValueError(f'unknown batching {batching!r}')
    self._shape = shape
    self._batching = batching
    self._max_buffering_seconds = max_buffering_seconds
    self._clock = clock

  def expand(self, chunks):
    if self._batching == 'bundle':
      return chunks | 'BatchWithinBundle' >> beam.ParDo(
          _BatchWithinBundleFn(self._shape))
    return (chunks
            | 'ByBucket' >> beam.ParDo(_ByBucketFn(self._shape))
            .with_output_types(Tuple[int, TokenChunk])
            | 'BatchPerBucket' >> beam.ParDo(_BatchPerBucketFn(
                self._shape, self._max_buffering_seconds, self._clock)))


class PadBatches(EncodeBatchesFn):
  """(bucket, TokenChunk of one batch) -> the encoded batch (Example bytes,
  or a Parquet rows table with `output_format` parquet).

  `pad_to="bucket"` gives every batch of a bucket the width of its boundary
  (static shapes); `pad_to="longest"` the width of its longest row. Pads
  with `pad_id`, else with the pad (or eos) id of the run's tokenizer.
  Gives a stats dict per batch on the `stats` output.
  """
  STATS = 'stats'

  def __init__(self, pad_to: str, pad_id: Optional[int], tokenizer: str,
               backend: str, output_format: str = 'tfrecord'):
    super().__init__(pad_id, tokenizer, backend, output_format)
    self._pad_to = pad_to

  def process(self, keyed_batch):
    bucket, records = keyed_batch
    arrays = spec_arithmetic.pad_shift_mask(
        records, self._pad_id,
        width=bucket if self._pad_to == 'bucket' else None)
    yield beam.pvalue.TaggedOutput(self.STATS,
                                   stats.padded_batch_stats(bucket, arrays))
    yield self._encode(arrays, records.example_ids, 'padded')
