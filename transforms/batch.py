"""Grouping tokenized records into batches: padded buckets or packed rows.

Padded layout: a record's bucket is the smallest boundary >= L = prompt +
output - 1; a batch holds records of one bucket only: `batch_size` of them,
or with `batch_tokens` T, max(1, T // boundary) of them, so that every
batch holds about T tokens. Partial batches are kept.

Packed layout: records gather into windows of `pack_window`; each window is
packed into rows of `pack_length` by best fit decreasing
(transforms/pack.py), and rows into batches of `batch_size` rows (or
max(1, T // pack_length) with `batch_tokens`).

Two strategies, one name each (the option `batching`):
  bundle  each bundle batches its own records with one open batch per
          bucket, no shuffle: a local runner's bundle spans the whole input,
          and memory stays flat.
  global  records of a bucket are grouped across workers (a stateful DoFn
          keyed by bucket), so that a distributed runner fills batches from
          every worker; with `max_buffering_seconds` (streaming) a partial
          batch also leaves that long after its first record.
Both move TokenChunks (records as arrays), never one element per record.
"""

import time
from typing import Iterator, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam import coders
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindows

from sftbeam.transforms import pack
from sftbeam.transforms.records import TokenChunk

BATCHING_STRATEGIES = ('bundle', 'global')


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


class _BufferPerKeyFn(beam.DoFn):
  """(key, TokenChunk) -> outputs of what a key's buffer held, per key.

  GroupIntoBatches for pieces that hold many records: state keeps a key's
  pieces and their record count. When they reach `_capacity(key)` they are
  handed to `_emit(key, chunk, finished=False)`, which gives the outputs
  and the records to keep buffering; when the window ends or, with
  `max_buffering_seconds`, that long after the buffer's first record, to
  `_emit(key, chunk, finished=True)`, which must use them all.
  """
  PIECES = userstate.BagStateSpec('pieces', coders.PickleCoder())
  RECORDS = userstate.ReadModifyWriteStateSpec('records',
                                               coders.VarIntCoder())
  WINDOW_END = userstate.TimerSpec('window_end', TimeDomain.WATERMARK)
  BUFFERING_END = userstate.TimerSpec('buffering_end', TimeDomain.REAL_TIME)

  def __init__(self, max_buffering_seconds=None, clock=time.time):
    self._max_buffering_seconds = max_buffering_seconds
    self._clock = clock  # of processing time: tests give a fake one

  def _capacity(self, key) -> int:
    raise NotImplementedError

  def _emit(self, key, chunk: TokenChunk, finished: bool):
    """(outputs, TokenChunk to keep buffering or None)."""
    raise NotImplementedError

  def _start_buffering(self, buffering_end):
    if self._max_buffering_seconds:
      buffering_end.set(self._clock() + self._max_buffering_seconds)

  def process(self, keyed_piece, window=beam.DoFn.WindowParam,
              pieces=beam.DoFn.StateParam(PIECES),
              records=beam.DoFn.StateParam(RECORDS),
              window_end=beam.DoFn.TimerParam(WINDOW_END),
              buffering_end=beam.DoFn.TimerParam(BUFFERING_END)):
    key, piece = keyed_piece
    window_end.set(window.end)
    held = records.read() or 0
    if not held:
      self._start_buffering(buffering_end)
    pieces.add(piece)
    records.write(held + len(piece))
    if held + len(piece) >= self._capacity(key):
      yield from self._flush(key, pieces, records, buffering_end, False)

  @userstate.on_timer(WINDOW_END)
  def _on_window_end(self, key=beam.DoFn.KeyParam,
                     pieces=beam.DoFn.StateParam(PIECES),
                     records=beam.DoFn.StateParam(RECORDS),
                     buffering_end=beam.DoFn.TimerParam(BUFFERING_END)):
    yield from self._flush(key, pieces, records, buffering_end, True)

  @userstate.on_timer(BUFFERING_END)
  def _on_buffering_end(self, key=beam.DoFn.KeyParam,
                        pieces=beam.DoFn.StateParam(PIECES),
                        records=beam.DoFn.StateParam(RECORDS),
                        buffering_end=beam.DoFn.TimerParam(BUFFERING_END)):
    yield from self._flush(key, pieces, records, buffering_end, True)

  def _flush(self, key, pieces, records, buffering_end, finished):
    held = list(pieces.read())
    pieces.clear()
    records.clear()
    buffering_end.clear()
    if not held:
      return
    outputs, rest = self._emit(key, TokenChunk.concat(held), finished)
    if rest is not None:
      pieces.add(rest)
      records.write(len(rest))
      self._start_buffering(buffering_end)
    yield from outputs


class _BatchPerBucketFn(_BufferPerKeyFn):
  """(bucket, TokenChunk) -> (bucket, TokenChunk of one batch), per key:
  full batches as soon as they fill, a partial one when the buffer is
  flushed (see _BufferPerKeyFn)."""

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

  `batching` is "bundle" or "global" (see the module docstring);
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


class PackedRows(NamedTuple):
  """Whole rows of packed records: `chunk` holds their records in row
  order, `examples_per_row` how many of them each row takes."""
  chunk: TokenChunk
  examples_per_row: np.ndarray

  def rows(self) -> list:
    """Each row's record indices into `chunk`."""
    ends = np.cumsum(self.examples_per_row)
    return [np.arange(end - count, end)
            for end, count in zip(ends, self.examples_per_row)]

  def cut(self, rows: int, keep_partial: bool):
    """(batches of `rows` rows each, the rows left over or None). Without
    `keep_partial` every row goes into a batch, the last one short."""
    row_count = len(self.examples_per_row)
    kept = row_count % rows if keep_partial else 0
    record_ends = np.concatenate([[0], np.cumsum(self.examples_per_row)])

    def between(first: int, end: int) -> 'PackedRows':
      return PackedRows(
          self.chunk.take(np.arange(record_ends[first], record_ends[end])),
          self.examples_per_row[first:end])

    batched = row_count - kept
    batches = [between(first, min(first + rows, batched))
               for first in range(0, batched, rows)]
    return batches, (between(batched, row_count) if kept else None)

  @staticmethod
  def concat(parts) -> 'PackedRows':
    parts = list(parts)
    return PackedRows(TokenChunk.concat([part.chunk for part in parts]),
                      np.concatenate([part.examples_per_row
                                      for part in parts]))


def pack_rows(records: TokenChunk, pack_length: int) -> PackedRows:
  """`records` packed into rows of `pack_length` (best fit decreasing)."""
  rows = pack.best_fit_decreasing(records.lengths - 1, pack_length)
  return PackedRows(records.take(np.concatenate(rows)),
                    np.fromiter(map(len, rows), np.int64, len(rows)))


class PackShape(NamedTuple):
  pack_length: int
  pack_window: int
  rows: int  # rows per batch


class _Packer:
  """Windows of records -> batches of packed rows, rows left over kept."""

  def __init__(self, shape: PackShape):
    self._shape = shape
    self._window = []  # TokenChunks of the open window
    self._held = 0  # records in the open window
    self._rows = None  # PackedRows not yet in a full batch

  def add(self, chunk: TokenChunk):
    """Full batches (PackedRows) that adding `chunk` completes."""
    self._window.append(chunk)
    self._held += len(chunk)
    if self._held < self._shape.pack_window:
      return []
    return self._pack_window(keep_partial=True)

  def flush(self):
    """Every batch still open, the last one partial."""
    return self._pack_window(keep_partial=False)

  def _pack_window(self, keep_partial: bool):
    parts = [] if self._rows is None else [self._rows]
    if self._window:
      parts.append(pack_rows(TokenChunk.concat(self._window),
                             self._shape.pack_length))
    self._window, self._held = [], 0
    if not parts:
      return []
    batches, self._rows = PackedRows.concat(parts).cut(self._shape.rows,
                                                       keep_partial)
    return batches


class _PackWithinBundleFn(beam.DoFn):
  """TokenChunk -> (pack_length, PackedRows of one batch), per bundle."""

  def __init__(self, shape: PackShape):
    self._shape = shape
    self._packer = None

  def start_bundle(self):
    self._packer = _Packer(self._shape)

  def process(self, chunk: TokenChunk):
    for batch in self._packer.add(chunk):
      yield self._shape.pack_length, batch

  def finish_bundle(self):
    for batch in self._packer.flush():
      yield GlobalWindows.windowed_value((self._shape.pack_length, batch))
    self._packer = None


class _PackPerFlushFn(_BufferPerKeyFn):
  """(0, TokenChunk) -> (pack_length, PackedRows of one batch), streaming.

  The buffer holds the records since the last flush; a flush, when they
  reach pack_window or `max_buffering_seconds` after the first of them,
  packs what it holds into batches (the last one perhaps partial).
  """

  def __init__(self, shape: PackShape, max_buffering_seconds: float,
               clock=time.time):
    super().__init__(max_buffering_seconds, clock)
    self._shape = shape

  def _capacity(self, key) -> int:
    return self._shape.pack_window

  def _emit(self, key, chunk: TokenChunk, finished: bool):
    packer = _Packer(self._shape)
    batches = packer.add(chunk) + packer.flush()
    return [(self._shape.pack_length, batch) for batch in batches], None


class PackIntoRows(beam.PTransform):
  """TokenChunks -> (pack_length, PackedRows of one batch) per batch.

  Packs within each bundle (each worker packs what it reads; no shuffle),
  or, with `max_buffering_seconds` (streaming, where bundles are small),
  per flush of a stateful step.
  """

  def __init__(self, shape: PackShape,
               max_buffering_seconds: Optional[float] = None,
               clock=time.time):
    super().__init__()
    self._shape = shape
    self._max_buffering_seconds = max_buffering_seconds
    self._clock = clock

  def expand(self, chunks):
    if self._max_buffering_seconds is None:
      return chunks | 'PackWithinBundle' >> beam.ParDo(
          _PackWithinBundleFn(self._shape))
    return (chunks
            | 'OneKey' >> beam.Map(lambda chunk: (0, chunk))
            .with_output_types(Tuple[int, TokenChunk])
            | 'PackPerFlush' >> beam.ParDo(_PackPerFlushFn(
                self._shape, self._max_buffering_seconds, self._clock)))
