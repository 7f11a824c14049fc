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
import collections
import concurrent.futures
import gc
import os
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from sftbeam.transforms import sft
from sftbeam.transforms.records import TokenizedRecord, reject
from sftbeam.transforms.tokenizer_source import load_tokenizer

TRUNCATION_MODES = ('none', 'output_right', 'prompt_left')
# Records per tokenizer call; a chunk is tokenized slice by slice so that
# tokenizing overlaps with the work downstream (see TokenizeAndBucket).
_SLICE_RECORDS = 512
# Slices left in flight when process() returns, with run_ahead: enough to
# keep the tokenizer busy while the next chunk is read and parsed.
_SLICES_AHEAD = 8


class TokenizeSettings(NamedTuple):
  tokenizer: str
  boundaries: Tuple[int, ...]
  max_seq_len: int
  truncation: str = 'none'
  add_special_tokens: Optional[bool] = None
  append_eos: bool = False
  special_tokens_in_text: str = 'text'
  threads: int = 0  # tokenizing threads; 0: one per core


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


class _Slice(NamedTuple):
  """Records handed to the tokenizing threads, and where they came from."""
  encoded: concurrent.futures.Future  # of TokenizeAndBucket._encoded
  window: Any
  timestamp: Any


_frozen = False


def _freeze_long_lived_objects():
  """Keeps the objects alive now (modules, the tokenizer) out of the GC.

  Records are allocated by the million, so the cyclic GC runs often, and
  each full collection would walk every long-lived object of the worker
  too: freezing them saves about 5%. Once per process only: a later freeze
  (the streaming DirectRunner sets DoFns up per bundle) would also pin
  whatever short-lived cycles were alive at that moment.
  """
  global _frozen  # pylint: disable=global-statement
  if not _frozen:
    gc.freeze()
    _frozen = True


def _cores() -> int:
  """The cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


class TokenizeAndBucket(beam.DoFn):
  """List of Records -> (bucket, TokenizedRecord) per record that fits.

  Records are tokenized in slices of 512, one batched tokenizer call for
  the prompts and one for the outputs, on `settings.threads` tokenizing
  threads (0: one per core; one in all for a tokenizer without a Rust
  backend, which threads may not share): the Rust tokenizer
  runs without the GIL while the records of earlier slices flow downstream
  (batching, padding and writing run fused with this step). Gives Rejected
  records on `rejected` and a stats dict (`truncated`) per slice on `stats`.

  By default each list's outputs come out while it is processed. With
  `run_ahead`, up to 8 slices stay in flight when process() returns, so the
  tokenizer keeps working while the next list is read and parsed; their
  outputs come out during later process() calls or in finish_bundle, in
  their own element's window and timestamp.
  """
  REJECTED = 'rejected'
  STATS = 'stats'

  def __init__(self, settings: TokenizeSettings, run_ahead: bool = False):
    self._settings = settings
    self._slices_ahead = _SLICES_AHEAD if run_ahead else 0
    self._tokenizer = None
    self._eos_id = None
    self._tokenizing_threads = None
    self._in_flight = None  # _Slices, oldest first
    self._truncated = Metrics.counter('sftbeam', 'truncated')

  def setup(self):
    # Once per worker: loading a tokenizer takes about a second.
    self._tokenizer = load_tokenizer(self._settings.tokenizer,
                                     self._settings.special_tokens_in_text)
    if self._settings.append_eos:
      self._eos_id = self._tokenizer.eos_token_id
    _freeze_long_lived_objects()
    # Each tokenizing thread calls the tokenizer single-threaded: threads
    # of our own keep every core busy, while the tokenizer's own threads
    # idle between its calls (about 8% slower here). A user's setting wins.
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    threads = 1
    if sft.rust_backend(self._tokenizer):
      threads = self._settings.threads or _cores()
    self._tokenizing_threads = concurrent.futures.ThreadPoolExecutor(
        max_workers=threads, thread_name_prefix='sftbeam-tokenize')
    self._in_flight = collections.deque()

  def start_bundle(self):
    # A bundle that failed may have left slices behind; it is retried whole.
    self._in_flight.clear()

  def teardown(self):
    if self._tokenizing_threads is not None:
      self._tokenizing_threads.shutdown()

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

  def process(self, records, window=beam.DoFn.WindowParam,
              timestamp=beam.DoFn.TimestampParam):
    for start in range(0, len(records), _SLICE_RECORDS):
      self._in_flight.append(_Slice(
          self._tokenizing_threads.submit(
              self._encoded, records[start:start + _SLICE_RECORDS]),
          window, timestamp))
    while len(self._in_flight) > self._slices_ahead:
      yield from self._finish_oldest_slice((window, timestamp))

  def finish_bundle(self):
    while self._in_flight:
      yield from self._finish_oldest_slice(current=None)

  def _finish_oldest_slice(self, current):
    """Outputs of the oldest slice in flight, in its element's window.

    `current` is the (window, timestamp) of the element being processed,
    which Beam gives plain outputs; outputs of another element (run-ahead)
    are given their own window and timestamp.
    """
    pending = self._in_flight.popleft()
    outputs = self._bucketed(pending.encoded.result())
    if (pending.window, pending.timestamp) == current:
      yield from outputs
      return
    for output in outputs:
      yield _in_window(output, pending.window, pending.timestamp)

  def _bucketed(self, encoded):
    """(bucket, TokenizedRecord) per record that fits, else a Rejected."""
    settings = self._settings
    truncated = 0
    for record, prompt_ids, output_ids, error in encoded:
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
          record.example_id, prompt_ids, output_ids, was_truncated)
    self._truncated.inc(truncated)
    yield beam.pvalue.TaggedOutput(self.STATS, {'truncated': truncated})


def _in_window(output, window, timestamp):
  """`output` (maybe tagged) as a WindowedValue in `window`."""
  if isinstance(output, beam.pvalue.TaggedOutput):
    return beam.pvalue.TaggedOutput(
        output.tag, WindowedValue(output.value, timestamp, (window,)))
  return WindowedValue(output, timestamp, (window,))
