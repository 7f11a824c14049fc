"""Padding, shifting and masking batches, and serializing them."""

import apache_beam as beam
from apache_beam.metrics import Metrics

from sftbeam.transforms import progress, schema, sft
from sftbeam.transforms.tokenizer_source import load_tokenizer

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
  }


class PadBatches(beam.DoFn):
  """(bucket, [TokenizedRecord]) -> serialized batch Example (bytes).

  `pad_to="bucket"` gives every batch of a bucket the width of its boundary
  (static shapes); `pad_to="longest"` the width of its longest row. Gives a
  stats dict per batch on the `stats` output.
  """
  STATS = 'stats'

  def __init__(self, pad_to: str, pad_id=None, tokenizer: str = None,
               special_tokens_in_text: str = 'text'):
    """Pads with `pad_id`, else with the pad (or eos) id of `tokenizer`."""
    self._pad_to = pad_to
    self._pad_id = pad_id
    self._tokenizer = tokenizer
    self._special_tokens_in_text = special_tokens_in_text
    self._batches = Metrics.counter('sftbeam', 'batches_written')
    self._records = Metrics.counter('sftbeam', 'records_written')

  def setup(self):
    if self._pad_id is None:
      # Resolved on the worker, so a gs:// tokenizer is never read at
      # graph-construction time.
      self._pad_id = sft.resolve_pad_id(
          load_tokenizer(self._tokenizer, self._special_tokens_in_text))

  def process(self, keyed_batch):
    bucket, records = keyed_batch
    records = list(records)
    arrays = sft.pad_shift_mask(
        [record.prompt_ids for record in records],
        [record.output_ids for record in records],
        self._pad_id,
        width=bucket if self._pad_to == 'bucket' else None)
    self._batches.inc()
    self._records.inc(len(records))
    progress.add('batches_written')
    progress.add('records_written', len(records))
    yield beam.pvalue.TaggedOutput(self.STATS, batch_stats(bucket, arrays))
    yield schema.serialize_batch(
        arrays, [record.example_id for record in records])
