"""What the two layouts' Beam steps share: the batching strategies, a
per-key buffer, and the pad id.

The padded layout (transforms/padded.py) groups records into length
buckets and pads each batch; the packed layout (transforms/packed.py) packs
whole records into rows of `pack_length` (the arithmetic: transforms/pack.py).

Both layouts end in an `EncodeBatchesFn`, which pads with the run's pad
id and encodes each batch for the run's shard format.

Two batching strategies, one name each (the option `batching`):
  bundle  each bundle batches its own records with one open batch per
          bucket, no shuffle: a local runner's bundle spans the whole input,
          and memory stays flat.
  global  records of a bucket are grouped across workers (a stateful DoFn
          keyed by bucket), so that a distributed runner fills batches from
          every worker; with `max_buffering_seconds` (streaming) a partial
          batch also leaves that long after its first record.
A batch run of the packed layout packs within each bundle; a streaming run
packs per flush of a `BufferPerKeyFn`. Both layouts move TokenChunks
(records as arrays), never one element per record.
"""

import time
from typing import Optional

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from sftbeam.transforms import example_codec, parquet_shards, spec_arithmetic
from sftbeam.transforms.records import TokenChunk
from sftbeam.transforms.tokenizer_source import shared_tokenizer

BATCHING_STRATEGIES = ('bundle', 'global')


class BufferPerKeyFn(beam.DoFn):
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


class EncodeBatchesFn(beam.DoFn):
  """A DoFn that pads with `pad_id`, else the run's tokenizer's pad (or
  eos) id, resolved on the worker (a gs:// tokenizer is never read at
  graph-construction time), and encodes each batch it makes for its shard
  format (`_encode`)."""

  def __init__(self, pad_id: Optional[int], tokenizer: str, backend: str,
               output_format: str = 'tfrecord'):
    self._pad_id = pad_id
    self._tokenizer = tokenizer
    self._backend = backend
    self._output_format = output_format

  def setup(self):
    if self._pad_id is None:
      self._pad_id = spec_arithmetic.resolve_pad_id(
          shared_tokenizer(self._tokenizer, self._backend).facts)

  def _encode(self, arrays: dict, example_ids, layout: str):
    """A batch's arrays as WriteBatches takes them: Example bytes, or a
    parquet_shards.ParquetBatch."""
    if self._output_format == 'parquet':
      return parquet_shards.parquet_batch(arrays, example_ids, layout,
                                          self._pad_id)
    return example_codec.serialize_batch(arrays, example_ids, layout)
