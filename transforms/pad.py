"""Turning batches into Examples: padded (pad, shift, mask) or packed."""

from typing import Optional

import apache_beam as beam

from sftbeam.transforms import pack, schema, sft
from sftbeam.transforms.tokenizer_source import shared_tokenizer

PAD_TO_MODES = ('bucket', 'longest')


def batch_stats(bucket: int, arrays: dict) -> dict:
  """The stats one written batch contributes (see transforms/stats.py)."""
  rows, width = arrays['input_ids'].shape
  real_tokens = int((arrays['prompt_lengths'] + arrays['output_lengths']
                     - 1).sum())
  return {
      'records_written': rows,
      'batches_written': 1,
      f'bucket/{bucket}/records': rows,
      f'bucket/{bucket}/batches': 1,
      'real_tokens': real_tokens,
      'stored_tokens': rows * width,
      'supervised_tokens': int(arrays['response_mask'].sum()),
  }


class _WithPadId(beam.DoFn):
  """A DoFn that pads with `pad_id`, else the run's tokenizer's pad (or
  eos) id, resolved on the worker (a gs:// tokenizer is never read at
  graph-construction time)."""

  def __init__(self, pad_id: Optional[int], tokenizer: str, backend: str):
    self._pad_id = pad_id
    self._tokenizer = tokenizer
    self._backend = backend

  def setup(self):
    if self._pad_id is None:
      self._pad_id = sft.resolve_pad_id(
          shared_tokenizer(self._tokenizer, self._backend).tokenizer)


class PadBatches(_WithPadId):
  """(bucket, TokenChunk of one batch) -> serialized batch Example (bytes).

  `pad_to="bucket"` gives every batch of a bucket the width of its boundary
  (static shapes); `pad_to="longest"` the width of its longest row. Pads
  with `pad_id`, else with the pad (or eos) id of the run's tokenizer.
  Gives a stats dict per batch on the `stats` output.
  """
  STATS = 'stats'

  def __init__(self, pad_to: str, pad_id: Optional[int], tokenizer: str,
               backend: str):
    super().__init__(pad_id, tokenizer, backend)
    self._pad_to = pad_to

  def process(self, keyed_batch):
    bucket, records = keyed_batch
    arrays = sft.pad_shift_mask(
        records, self._pad_id,
        width=bucket if self._pad_to == 'bucket' else None)
    yield beam.pvalue.TaggedOutput(self.STATS, batch_stats(bucket, arrays))
    yield schema.serialize_batch(arrays, records.example_ids)


class PackedBatches(_WithPadId):
  """(pack_length, PackedRows of one batch) -> serialized packed Example.

  Each record's spec row lies unpadded in its row (transforms/pack.py),
  rows right-padded to pack_length. Gives a stats dict per batch on the
  `stats` output.
  """
  STATS = 'stats'

  def process(self, keyed_rows):
    pack_length, rows = keyed_rows
    arrays = pack.packed_arrays(rows.chunk, rows.rows(), pack_length,
                                self._pad_id)
    stats = pack.packing_stats(arrays)
    stats['supervised_tokens'] = int(arrays['response_mask'].sum())
    yield beam.pvalue.TaggedOutput(self.STATS, stats)
    yield schema.serialize_batch(arrays, arrays['example_ids'], 'packed')
