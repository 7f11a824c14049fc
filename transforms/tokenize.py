"""Tokenizing records (prompt and output apart) and assigning length buckets.

Reason codes added here:
  too_long        L = prompt+output-1 exceeds max_seq_len (truncation none)
  prompt_too_long under output_right, the prompt alone leaves no room for
                  one output token
  output_too_long under prompt_left, the output alone leaves no room for
                  one prompt token
  empty_prompt / empty_output   a text that yields no tokens
  tokenizer_error the tokenizer raised on this record
"""

import bisect
import concurrent.futures
from typing import NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms import sft
from transforms.records import TokenizedRecord, reject
from transforms.tokenizer_source import load_tokenizer

TRUNCATION_MODES = ('none', 'output_right', 'prompt_left')
# Records per tokenizer call; a chunk is tokenized slice by slice so that
# tokenizing overlaps with the work downstream (see TokenizeAndBucket).
_SLICE_RECORDS = 512


class TokenizeSettings(NamedTuple):
  tokenizer: str
  boundaries: Tuple[int, ...]
  max_seq_len: int
  truncation: str = 'none'
  add_special_tokens: Optional[bool] = None
  append_eos: bool = False
  special_tokens_in_text: str = 'text'


class DoesNotFit(ValueError):
  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def fit_to_length(prompt_ids: Sequence[int], output_ids: Sequence[int],
                  max_seq_len: int, truncation: str):
  """(prompt_ids, output_ids, truncated) with L <= max_seq_len, or raises.

  L, the model input length, is len(prompt) + len(output) - 1.
  """
  room = max_seq_len + 1  # tokens allowed in prompt + output
  if len(prompt_ids) + len(output_ids) <= room:
    return prompt_ids, output_ids, False
  length = len(prompt_ids) + len(output_ids) - 1
  if truncation == 'output_right':
    if len(prompt_ids) >= room:
      raise DoesNotFit('prompt_too_long',
                       f'prompt has {len(prompt_ids)} tokens; max_seq_len '
                       f'{max_seq_len} leaves no room for the output')
    return prompt_ids, output_ids[:room - len(prompt_ids)], True
  if truncation == 'prompt_left':
    if len(output_ids) >= room:
      raise DoesNotFit('output_too_long',
                       f'output has {len(output_ids)} tokens; max_seq_len '
                       f'{max_seq_len} leaves no room for the prompt')
    return prompt_ids[len(prompt_ids) + len(output_ids) - room:], output_ids, True
  raise DoesNotFit('too_long', f'L = {length} tokens > max_seq_len {max_seq_len}')


def bucket_of(length: int, boundaries: Sequence[int]) -> int:
  """The smallest boundary >= length (callers ensure one exists)."""
  return boundaries[bisect.bisect_left(boundaries, length)]


class TokenizeAndBucket(beam.DoFn):
  """List of Records -> (bucket, TokenizedRecord) per record that fits.

  One batched tokenizer call per list for the prompts and one for the
  outputs. Gives Rejected records on `rejected` and a stats dict
  (`truncated`) per list on `stats`.
  """
  REJECTED = 'rejected'
  STATS = 'stats'

  def __init__(self, settings: TokenizeSettings):
    self._settings = settings
    self._tokenizer = None
    self._eos_id = None
    self._tokenizing_thread = None
    self._truncated = Metrics.counter('sftbeam', 'truncated')

  def setup(self):
    # Once per worker: loading a tokenizer takes about a second.
    self._tokenizer = load_tokenizer(self._settings.tokenizer,
                                     self._settings.special_tokens_in_text)
    if self._settings.append_eos:
      self._eos_id = self._tokenizer.eos_token_id
    self._tokenizing_thread = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix='sftbeam-tokenize')

  def teardown(self):
    if self._tokenizing_thread is not None:
      self._tokenizing_thread.shutdown()

  def _encode(self, records):
    prompts = [record.prompt for record in records]
    outputs = [record.output for record in records]
    return (sft.encode_prompts(self._tokenizer, prompts,
                               self._settings.add_special_tokens),
            sft.encode_outputs(self._tokenizer, outputs, self._eos_id))

  def _encode_each(self, records):
    """Per-record fallback after a batch failed: isolates the bad record."""
    for record in records:
      try:
        prompt_ids, output_ids = self._encode([record])
        yield record, prompt_ids[0], output_ids[0], None
      except Exception as error:  # pylint: disable=broad-except
        yield record, None, None, f'{type(error).__name__}: {error}'

  def _encoded(self, records) -> list:
    """(record, prompt_ids, output_ids, error) for each record."""
    try:
      prompt_ids, output_ids = self._encode(records)
    except Exception:  # pylint: disable=broad-except
      return list(self._encode_each(records))
    return [(record, prompt, output, None)
            for record, prompt, output in zip(records, prompt_ids, output_ids)]

  def _encoded_in_background(self, records):
    """Like `_encoded`, one slice ahead on the tokenizing thread.

    The tokenizer runs in Rust without the GIL: while it encodes slice k+1,
    the records of slice k flow downstream (batching, padding, writing run
    fused with this step) on the calling thread.
    """
    slices = [records[start:start + _SLICE_RECORDS]
              for start in range(0, len(records), _SLICE_RECORDS)]
    pending = self._tokenizing_thread.submit(self._encoded, slices[0])
    for next_slice in slices[1:] + [None]:
      encoded = pending.result()
      if next_slice is not None:
        pending = self._tokenizing_thread.submit(self._encoded, next_slice)
      yield from encoded

  def process(self, records):
    settings = self._settings
    truncated = 0
    for record, prompt_ids, output_ids, error in self._encoded_in_background(
        records):
      if error is not None:
        yield beam.pvalue.TaggedOutput(
            self.REJECTED, reject(record, 'tokenizer_error', error))
        continue
      if not prompt_ids:
        yield beam.pvalue.TaggedOutput(self.REJECTED, reject(
            record, 'empty_prompt', 'the prompt yields no tokens'))
        continue
      if not output_ids:
        yield beam.pvalue.TaggedOutput(self.REJECTED, reject(
            record, 'empty_output', 'the output yields no tokens'))
        continue
      try:
        prompt_ids, output_ids, was_truncated = fit_to_length(
            prompt_ids, output_ids, settings.max_seq_len, settings.truncation)
      except DoesNotFit as error:
        yield beam.pvalue.TaggedOutput(
            self.REJECTED, reject(record, error.reason, str(error)))
        continue
      truncated += was_truncated
      length = len(prompt_ids) + len(output_ids) - 1
      yield bucket_of(length, settings.boundaries), TokenizedRecord(
          record.example_id, np.asarray(prompt_ids, np.int32),
          np.asarray(output_ids, np.int32), was_truncated)
    self._truncated.inc(truncated)
    yield beam.pvalue.TaggedOutput(self.STATS, {'truncated': truncated})
