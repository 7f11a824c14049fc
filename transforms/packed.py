"""The packed layout's Beam steps: records into rows of `pack_length`, rows
into batches, each batch serialized into an Example.

Records gather into windows of `pack_window`; each window is packed into
rows by best fit decreasing (the arithmetic, free of Beam, is
transforms/pack.py), and rows into batches of `batch_size` rows (or
max(1, T // pack_length) with `batch_tokens` T). A batch run packs within
each bundle (each worker packs the records it is given; no shuffle); a
streaming run packs per flush of a stateful step (transforms/batch.py).
"""

import time
from typing import Iterable, NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from sftbeam.transforms import chunk_coder, pack
from sftbeam.transforms.batch import BufferPerKeyFn, EncodeBatchesFn
from sftbeam.transforms.stats import emit, packing_stats
from sftbeam.transforms.records import TokenChunk


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


chunk_coder.register(PackedRows)


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

  def process(self, chunk: TokenChunk) -> Iterable[Tuple[int, PackedRows]]:
    for batch in self._packer.add(chunk):
      yield self._shape.pack_length, batch

  def finish_bundle(self):
    for batch in self._packer.flush():
      yield GlobalWindows.windowed_value((self._shape.pack_length, batch))
    self._packer = None


@beam.typehints.with_output_types(Tuple[int, PackedRows])
class _PackPerFlushFn(BufferPerKeyFn):
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


class EncodePackedBatches(EncodeBatchesFn):
  """(pack_length, PackedRows of one batch) -> the encoded packed batch
  (Example bytes, or a Parquet rows table with `output_format` parquet).

  Each record's spec row lies unpadded in its row (transforms/pack.py),
  rows right-padded to pack_length. Gives a stats dict per batch on the
  `stats` output.
  """
  STATS = 'stats'

  def process(self, keyed_rows):
    pack_length, rows = keyed_rows
    arrays = pack.packed_arrays(rows.chunk, rows.rows(), pack_length,
                                self._pad_id)
    stats = packing_stats(arrays)
    stats['supervised_tokens'] = int(arrays['response_mask'].sum())
    yield emit(self.STATS, stats)
    yield self._encode(arrays, arrays['example_ids'], 'packed')
