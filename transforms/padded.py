"""The padded layout's Beam steps: records into length buckets, a bucket's
records into batches, each batch padded into an Example.

A record's bucket is the smallest boundary >= L = prompt + output - 1; a
batch holds records of one bucket only: `batch_size` of them, or with
`batch_tokens` T, max(1, T // boundary) of them, so that every batch holds
about T tokens. Partial batches are kept. `BatchByBucket` forms batches by
either batching strategy (transforms/batch.py), handing on a bucket's
consecutive batches as one `BucketBatches`; `PadBatches` pads, shifts and
masks them (transforms/spec_arithmetic.py) and encodes each batch for the
shard format (transforms/example_codec.py, transforms/parquet_shards.py).
"""

import time
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from sftbeam.transforms import (chunk_coder, example_codec, pack,
                                spec_arithmetic, stats)
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
    for bucket, indices in self.bucket_indices(chunk):
      yield bucket, chunk.take(indices)

  def bucket_indices(self, chunk: TokenChunk):
    """(bucket, int64 indices of its records in `chunk`, in order) for
    every bucket present."""
    buckets = self.buckets(chunk)
    order = np.argsort(buckets, kind='stable')
    sorted_buckets = buckets[order]
    starts = np.flatnonzero(np.diff(sorted_buckets, prepend=-1)).tolist()
    for start, end in zip(starts, starts[1:] + [len(order)]):
      yield int(sorted_buckets[start]), order[start:end]

  def cut(self, bucket: int, records: TokenChunk):
    """(BucketBatches of the full batches of `records` or None, the
    records left over or None)."""
    rows = self.rows(bucket)
    full = len(records) // rows * rows
    group = (BucketBatches(bucket, rows, records.slice(0, full)) if full
             else None)
    rest = records.slice(full, len(records)) if full < len(records) else None
    return group, rest


class BucketBatches(NamedTuple):
  """Batches of one bucket back to back: `records` cut every `rows`
  records, the last batch maybe shorter. What flows from batching to
  padding: one element for many batches, so that padding and encoding
  work on all of them at once."""
  bucket: int
  rows: int
  records: TokenChunk

  def bounds(self) -> list:
    """(first, end) record of each batch."""
    starts = list(range(0, len(self.records), self.rows))
    return list(zip(starts, starts[1:] + [len(self.records)]))

  def batches(self) -> Iterator[TokenChunk]:
    """Each batch's records."""
    for first, end in self.bounds():
      yield self.records.slice(first, end)


chunk_coder.register(BucketBatches)


class _BatchWithinBundleFn(beam.DoFn):
  """TokenChunk -> BucketBatches, within one bundle.

  Keeps one open batch per bucket; full batches leave at once, partial
  ones when the bundle ends. Bounded, globally windowed input only.
  """

  def __init__(self, shape: BatchShape):
    self._shape = shape
    self._open = None  # bucket -> TokenChunk of its open batch

  def start_bundle(self):
    self._open = {}

  def process(self, chunk: TokenChunk) -> Iterator[BucketBatches]:
    for bucket, indices in self._shape.bucket_indices(chunk):
      # The bucket's open batch, then its records of this chunk: the full
      # batches leave as one group, the rest is the new open batch. Each
      # token is copied once on the way (TokenChunk.gather).
      held = self._open.pop(bucket, None)
      held_records = 0 if held is None else len(held)
      parts = [] if held is None else [(held, np.arange(held_records))]
      rows = self._shape.rows(bucket)
      leaving = (held_records + len(indices)) // rows * rows
      if leaving:
        taken = leaving - held_records
        yield BucketBatches(bucket, rows, TokenChunk.gather(
            parts + [(chunk, indices[:taken])]))
        parts, indices = [], indices[taken:]
      if len(indices):  # always, when no group left: the bucket is here
        self._open[bucket] = TokenChunk.gather(parts + [(chunk, indices)])

  def finish_bundle(self):
    for bucket, batch in self._open.items():
      yield GlobalWindows.windowed_value(
          BucketBatches(bucket, self._shape.rows(bucket), batch))
    self._open = None


class _ByBucketFn(beam.DoFn):
  """TokenChunk -> (bucket, its records of the chunk) per bucket."""

  def __init__(self, shape: BatchShape):
    self._shape = shape

  def process(self, chunk: TokenChunk):
    yield from self._shape.by_bucket(chunk)


@beam.typehints.with_output_types(BucketBatches)
class _BatchPerBucketFn(BufferPerKeyFn):
  """(bucket, TokenChunk) -> BucketBatches, per key: full batches as soon
  as they fill, a partial one when the buffer is flushed (see
  BufferPerKeyFn)."""

  def __init__(self, shape: BatchShape, max_buffering_seconds=None,
               clock=time.time):
    super().__init__(max_buffering_seconds, clock)
    self._shape = shape

  def _capacity(self, bucket) -> int:
    return self._shape.rows(bucket)

  def _emit(self, bucket, chunk: TokenChunk, finished: bool):
    group, rest = self._shape.cut(bucket, chunk)
    groups = [group] if group is not None else []
    if finished and rest is not None:
      groups.append(BucketBatches(bucket, self._shape.rows(bucket), rest))
      rest = None
    return groups, rest


class BatchByBucket(beam.PTransform):
  """TokenChunks -> BucketBatches (each batch in one of them, once).

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
  """BucketBatches -> the encoded batches (Example bytes, or Parquet rows
  tables with `output_format` parquet), in order.

  `pad_to="bucket"` gives every batch of a bucket the width of its boundary
  (static shapes), and a group's batches are padded and encoded together;
  `pad_to="longest"` gives each batch the width of its longest row. Pads
  with `pad_id`, else with the pad (or eos) id of the run's tokenizer.
  Gives a stats dict per group on the `stats` output.
  """
  STATS = 'stats'

  def __init__(self, pad_to: str, pad_id: Optional[int], tokenizer: str,
               backend: str, output_format: str = 'tfrecord'):
    super().__init__(pad_id, tokenizer, backend, output_format)
    self._pad_to = pad_to

  def process(self, group: BucketBatches):
    if self._pad_to == 'longest':
      for batch in group.batches():
        arrays = spec_arithmetic.pad_shift_mask(batch, self._pad_id)
        yield stats.emit(
            self.STATS, stats.padded_batch_stats(group.bucket, arrays))
        yield self._encode(arrays, batch.example_ids, 'padded')
      return
    padded = spec_arithmetic.pad_rows(group.records, self._pad_id,
                                      width=group.bucket)
    arrays = padded.shifted()
    bounds = group.bounds()
    yield stats.emit(self.STATS, stats.padded_batch_stats(
        group.bucket, arrays, batches=len(bounds)))
    example_ids = group.records.example_ids
    if self._output_format == 'tfrecord':
      yield from example_codec.serialize_padded_batches(padded, example_ids,
                                                        bounds)
      return
    for first, end in bounds:
      yield self._encode({name: values[first:end]
                          for name, values in arrays.items()},
                         example_ids[first:end], 'padded')
