"""Tokenizing records, prompt and output apart, and fitting them to length.

Reason codes added here:
  too_long        L = prompt+output-1 exceeds max_seq_len (truncation none)
  prompt_too_long under output_right, the prompt alone leaves no room for
                  one output token
  output_too_long under prompt_left, the output alone leaves no room for
                  one prompt token
  empty_prompt / empty_output   a text that yields no tokens
  tokenizer_error the tokenizer raised on this record
"""

import re
from typing import NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np

from sftbeam.transforms import sft
from sftbeam.transforms.records import RecordChunk, TokenChunk
from sftbeam.transforms.tokenizer_backend import EncodeMode
from sftbeam.transforms.tokenizer_source import shared_tokenizer

TRUNCATION_MODES = ('none', 'output_right', 'prompt_left')

# Why a record does not fit, by the code `fit_lengths` gives (0: it fits).
_DOES_NOT_FIT = (None, 'too_long', 'prompt_too_long', 'output_too_long')


class TokenizeSettings(NamedTuple):
  tokenizer: str
  max_seq_len: int
  truncation: str = 'none'
  add_special_tokens: Optional[bool] = None
  append_eos: bool = False
  special_tokens_in_text: str = 'special'
  backend: str = 'auto'


class Fit(NamedTuple):
  """Per record: where its kept prompt starts, where its kept output ends,
  whether that truncated it, and why it cannot fit (0: it fits, else an
  index into _DOES_NOT_FIT)."""
  prompt_start: np.ndarray
  output_end: np.ndarray
  truncated: np.ndarray
  does_not_fit: np.ndarray


def fit_lengths(prompt_lengths: np.ndarray, output_lengths: np.ndarray,
                max_seq_len: int, truncation: str) -> Fit:
  """How each record is cut to L = prompt + output - 1 <= max_seq_len.

  `none` keeps records whole (too long: too_long); `output_right` cuts the
  output's end (prompt_too_long when the prompt alone leaves no room for
  one output token); `prompt_left` cuts the prompt's start
  (output_too_long when the output alone leaves no room for one prompt
  token).
  """
  room = max_seq_len + 1  # tokens allowed in prompt + output
  totals = prompt_lengths + output_lengths
  over = totals > room
  prompt_start = np.zeros_like(prompt_lengths)
  output_end = output_lengths.copy()
  does_not_fit = np.zeros(len(totals), np.int64)
  if truncation == 'none':
    does_not_fit[over] = _DOES_NOT_FIT.index('too_long')
  elif truncation == 'output_right':
    does_not_fit[over & (prompt_lengths >= room)] = _DOES_NOT_FIT.index(
        'prompt_too_long')
    cut = over & (does_not_fit == 0)
    output_end[cut] = room - prompt_lengths[cut]
  elif truncation == 'prompt_left':
    does_not_fit[over & (output_lengths >= room)] = _DOES_NOT_FIT.index(
        'output_too_long')
    cut = over & (does_not_fit == 0)
    prompt_start[cut] = totals[cut] - room
  else:
    raise ValueError(f'unknown truncation {truncation!r}')
  return Fit(prompt_start, output_end, over & (does_not_fit == 0),
             does_not_fit)


def _why_not(reason: str, prompt_length: int, output_length: int,
             max_seq_len: int) -> str:
  """The message of a record rejected by `fit_lengths`."""
  if reason == 'prompt_too_long':
    return (f'prompt has {prompt_length} tokens; max_seq_len {max_seq_len} '
            'leaves no room for the output')
  if reason == 'output_too_long':
    return (f'output has {output_length} tokens; max_seq_len {max_seq_len} '
            'leaves no room for the prompt')
  return (f'L = {prompt_length + output_length - 1} tokens > max_seq_len '
          f'{max_seq_len}')


def special_text_pattern(special_tokens) -> Optional[re.Pattern]:
  """A regex finding any of the special-token strings (longest first)."""
  if not special_tokens:
    return None
  return re.compile('|'.join(
      map(re.escape, sorted(special_tokens, key=len, reverse=True))))


def records_with_special_text(pattern, prompts, outputs) -> int:
  """How many records hold a special-token string in prompt or output.

  One regex scan over all texts joined: a NUL between them, which no
  special token contains, so no match spans two texts.
  """
  if pattern is None:
    return 0
  texts = [text for pair in zip(prompts, outputs) for text in pair]
  joined = '\0'.join(texts)
  starts = np.cumsum([0] + [len(text) + 1 for text in texts])
  found = [match.start() for match in pattern.finditer(joined)]
  records = (np.searchsorted(starts, found, side='right') - 1) // 2
  return len(np.unique(records))


class TokenizeRecords(beam.DoFn):
  """RecordChunk -> TokenChunk of its records that fit (main output).

  Prompts and outputs are tokenized apart, one batched call for each per
  chunk, with the run's tokenizer backend; records are then fitted to
  max_seq_len by the truncation mode. Gives Rejected records on `rejected`
  and a stats dict per chunk on `stats` (`truncated`,
  `records_with_special_token_text`, `tokenizer_backend/<name>`).
  """
  REJECTED = 'rejected'
  STATS = 'stats'

  def __init__(self, settings: TokenizeSettings):
    self._settings = settings
    self._tokenizer = None
    self._eos_id = None
    self._special_text = None

  def setup(self):
    # Loaded once per worker process, shared with every other step.
    self._tokenizer = shared_tokenizer(self._settings.tokenizer,
                                       self._settings.backend)
    if self._settings.append_eos:
      self._eos_id = self._tokenizer.tokenizer.eos_token_id
    self._special_text = special_text_pattern(
        self._tokenizer.special_tokens)
    split = self._settings.special_tokens_in_text == 'text'
    self._tokenizer.encoder.check([
        EncodeMode(self._settings.add_special_tokens is not False, split),
        EncodeMode(False, split)])

  def _encode(self, records: RecordChunk):
    return sft.encode_pairs(
        self._tokenizer.encoder, records.prompts, records.outputs,
        add_special_tokens=self._settings.add_special_tokens,
        special_tokens_in_text=self._settings.special_tokens_in_text,
        eos_id=self._eos_id)

  def _encode_each(self, records: RecordChunk):
    """After a batched call failed: record by record, so that only the
    culprit is rejected. Gives (encoding of the others, their indices,
    {index: error})."""
    good, errors = [], {}
    for index in range(len(records.example_ids)):
      try:
        self._encode(_subset(records, [index]))
        good.append(index)
      except Exception as error:  # pylint: disable=broad-except
        errors[index] = f'{type(error).__name__}: {error}'
    return self._encode(_subset(records, good)), good, errors

  def process(self, records: RecordChunk):
    try:
      encoded, indices, errors = self._encode(records), None, {}
    except Exception:  # pylint: disable=broad-except
      encoded, indices, errors = self._encode_each(records)
    for index, error in errors.items():
      yield beam.pvalue.TaggedOutput(
          self.REJECTED, records.reject(index, 'tokenizer_error', error))
    if indices is not None:
      records = _subset(records, indices)
    chunk, rejected = self._fit(records, encoded)
    yield from (beam.pvalue.TaggedOutput(self.REJECTED, r) for r in rejected)
    yield beam.pvalue.TaggedOutput(self.STATS, {
        'truncated': int(chunk.truncated.sum()),
        'records_with_special_token_text': records_with_special_text(
            self._special_text, records.prompts, records.outputs),
        f'tokenizer_backend/{self._tokenizer.encoder.name}': len(records.prompts),
    })
    if len(chunk):
      yield chunk

  def _fit(self, records: RecordChunk,
           encoded: sft.PairEncoding) -> Tuple[TokenChunk, list]:
    """The records that fit, as a TokenChunk, and Rejecteds of the rest."""
    settings = self._settings
    prompt_lengths = encoded.prompt_lengths
    output_lengths = encoded.output_lengths
    fit = fit_lengths(prompt_lengths, output_lengths, settings.max_seq_len,
                      settings.truncation)
    rejected = []
    for index in np.flatnonzero((prompt_lengths == 0) | (output_lengths == 0)
                                | (fit.does_not_fit > 0)).tolist():
      if prompt_lengths[index] == 0:
        reason, message = 'empty_prompt', 'the prompt yields no tokens'
      elif output_lengths[index] == 0:
        reason, message = 'empty_output', 'the output yields no tokens'
      else:
        reason = _DOES_NOT_FIT[fit.does_not_fit[index]]
        message = _why_not(reason, int(prompt_lengths[index]),
                           int(output_lengths[index]), settings.max_seq_len)
      rejected.append(records.reject(index, reason, message))
    keep = ((prompt_lengths > 0) & (output_lengths > 0) &
            (fit.does_not_fit == 0))
    chunk = sft.join_pairs(records.example_ids, encoded, keep,
                           fit.prompt_start, fit.output_end, fit.truncated)
    return chunk, rejected


def _subset(records: RecordChunk, indices) -> RecordChunk:
  return RecordChunk(records.source,
                     *([column[i] for i in indices] for column in records[1:]))
