"""Tokenizing records, prompt and output apart, and fitting them to length.

Chat records go through transforms/chat.py (the chat template, piece by
piece), with its own reason codes.

Reason codes added here:
  too_long        L = prompt+output-1 exceeds max_seq_len (truncation none)
  prompt_too_long under output_right, the prompt alone leaves no room for
                  one output token
  output_too_long under prompt_left, the output alone leaves no room for
                  one prompt token
  empty_prompt / empty_output   a text that yields no tokens
  tokenizer_error the tokenizer raised on this record
"""

import collections
import concurrent.futures
import itertools
from typing import Iterable, NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from sftbeam.transforms import (chat, chunk_coder, gc_thresholds,
                                spec_arithmetic)
from sftbeam.transforms.chat_records import ChatRejected, chat_strings
from sftbeam.transforms.records import RecordChunk, TokenChunk
from sftbeam.transforms.stats import backend_stats, emit
from sftbeam.transforms.tokenizer_backend import (EncodeMode, segment_encode,
                                                  special_text_pattern)
from sftbeam.transforms.tokenizer_source import shared_tokenizer

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
  # Chat records:
  train_on: str = 'assistant'
  chat_rows: str = 'whole'
  chat_template: Optional[str] = None  # its Jinja text; None: the tokenizer's
  chat_template_kwargs: Optional[dict] = None


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


def records_with_special_text(pattern, record_texts) -> int:
  """How many records hold a special-token string in one of their texts.

  `record_texts`: each record's texts (prompt and output, or contents).
  One regex scan over all texts joined: a NUL between them, which no
  special token contains, so no match spans two texts.
  """
  if pattern is None:
    return 0
  record_texts = list(record_texts)
  texts = list(itertools.chain.from_iterable(record_texts))
  joined = '\0'.join(texts)
  if not pattern.search(joined):
    return 0  # the common case: no record to find
  owners = [index for index, record in enumerate(record_texts)
            for _ in record]
  starts = np.cumsum([0] + [len(text) + 1 for text in texts])
  found = [match.start() for match in pattern.finditer(joined)]
  found_texts = np.searchsorted(starts, found, side='right') - 1
  return len({owners[text] for text in found_texts.tolist()})


chunk_coder.register(TokenChunk)


class TokenizeRecords(beam.DoFn):
  """RecordChunk -> TokenChunk of its records that fit (main output).

  Prompts and outputs are tokenized apart, one batched call for each per
  chunk, with the run's tokenizer backend; records are then fitted to
  max_seq_len by the truncation mode. Conversations are rendered with the
  chat template and tokenized segment by segment (transforms/chat.py).
  Gives Rejected records on `rejected` and a stats dict per chunk on
  `stats` (`truncated`, `records_with_special_token_text`,
  `tokenizer_backend/<name>`, `chat_records`, `assistant_turns`).
  """
  REJECTED = 'rejected'
  STATS = 'stats'

  def __init__(self, settings: TokenizeSettings, run_ahead: bool = False):
    self._settings = settings
    self._run_ahead = run_ahead
    self._encoding_thread = None
    self._pending = None  # (RecordChunk, Future of its _tokenize_pairs) or None
    self._tokenizer = None
    self._eos_id = None
    self._special_text = None
    self._chat_renderer = None
    self._chat_unusable = None  # why chat records are rejected, if all are

  def setup(self):
    gc_thresholds.collect_less()  # this process now makes records
    # Loaded once per worker process, shared with every other step.
    self._tokenizer = shared_tokenizer(self._settings.tokenizer,
                                       self._settings.backend)
    if self._settings.append_eos:
      # The CLI checks a local tokenizer before the run; this, a remote one.
      self._eos_id = self._tokenizer.facts.eos_token_id
      if self._eos_id is None:
        raise ValueError('append_eos, but the tokenizer has no eos_token_id')
    self._special_text = special_text_pattern(
        self._tokenizer.special_tokens)
    split = self._settings.special_tokens_in_text == 'text'
    self._tokenizer.encoder.check([
        EncodeMode(self._settings.add_special_tokens is not False, split),
        EncodeMode(False, split)])

  def start_bundle(self):
    self._pending = None  # nothing of a failed bundle's is carried over
    if self._run_ahead and self._encoding_thread is None:
      self._encoding_thread = concurrent.futures.ThreadPoolExecutor(1)

  def process(self, records: RecordChunk) -> Iterable[TokenChunk]:
    if self._encoding_thread is None:
      yield from self._tokenized(records)
      return
    # Run ahead: this chunk's prompts and outputs are tokenized and fitted
    # on a thread (the tokenizer and numpy's large operations release the
    # GIL) while the steps after this one work on the chunk before it,
    # whose outputs leave now. Chunks stay in order, and the encoder is
    # never used by two threads at once: the earlier chunk is done with it
    # before this one is handed to the thread.
    outputs = list(self._tokenized(*self._pending)) if self._pending else []
    self._pending = None
    if any(records.conversations):  # rendered here, in order
      outputs += self._tokenized(records)
    else:
      self._pending = (records, self._encoding_thread.submit(
          self._tokenize_pairs, records))
    yield from outputs

  def finish_bundle(self):
    if self._pending is not None:
      pending, self._pending = self._pending, None
      for output in self._tokenized(*pending):
        if isinstance(output, beam.pvalue.TaggedOutput):
          yield beam.pvalue.TaggedOutput(
              output.tag, GlobalWindows.windowed_value(output.value))
        else:
          yield GlobalWindows.windowed_value(output)

  def teardown(self):
    if self._encoding_thread is not None:
      self._encoding_thread.shutdown()
    gc_thresholds.collect_as_before()

  def _tokenized(self, records: RecordChunk, tokenized_ahead=None):
    """The outputs of a chunk; `tokenized_ahead`: _tokenize_pairs' of it (a
    Future) when it holds no conversation and was tokenized ahead."""
    chats, pairs = [], []
    for index, conversation in enumerate(records.conversations):
      (pairs if conversation is None else chats).append(index)
    if not chats:  # the common case: no copy
      parts = [tokenized_ahead.result() if tokenized_ahead
               else self._tokenize_pairs(records)]
    elif not pairs:
      parts = [self._tokenize_chats(records)]
    else:
      parts = [self._tokenize_pairs(records.subset(pairs)),
               self._tokenize_chats(records.subset(chats))]
    stats = collections.Counter()
    for _, rejected, part_stats in parts:
      yield from (beam.pvalue.TaggedOutput(self.REJECTED, r) for r in rejected)
      stats.update(part_stats)
    stats.update(backend_stats(self._tokenizer.encoder.name,
                               len(records.example_ids)))
    yield emit(self.STATS, dict(stats))
    chunks = [chunk for chunk, _, _ in parts if len(chunk)]
    if chunks:
      yield TokenChunk.concat(chunks)

  # ------------------------------------------------ prompt/output records

  def _encode(self, records: RecordChunk):
    return spec_arithmetic.encode_pairs(
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
        self._encode(records.subset([index]))
        good.append(index)
      except Exception as error:  # pylint: disable=broad-except
        errors[index] = f'{type(error).__name__}: {error}'
    return self._encode(records.subset(good)), good, errors

  def _tokenize_pairs(self, records: RecordChunk):
    """(TokenChunk of the records that fit, Rejecteds, stats)."""
    try:
      encoded = self._encode(records)
      indices, errors = None, {}
    except Exception:  # pylint: disable=broad-except
      encoded, indices, errors = self._encode_each(records)
    rejected = [records.reject(index, 'tokenizer_error', error)
                for index, error in errors.items()]
    if indices is not None:
      records = records.subset(indices)
    chunk, not_fitting = self._fit(records, encoded)
    return chunk, rejected + not_fitting, {
        'truncated': int(chunk.truncated.sum()),
        'records_with_special_token_text': records_with_special_text(
            self._special_text, zip(records.prompts, records.outputs)),
    }

  def _fit(self, records: RecordChunk,
           encoded: spec_arithmetic.PairEncoding
           ) -> Tuple[TokenChunk, list]:
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
    chunk = spec_arithmetic.join_pairs(
        records.example_ids, encoded, keep, fit.prompt_start, fit.output_end,
        fit.truncated)
    return chunk, rejected

  # -------------------------------------------------------- chat records

  def _chat_outcome(self, records: RecordChunk) -> chat.ChatOutcome:
    """The rows of the chunk's conversations; each rejected when the chat
    template cannot be used (the renderer is built at the first)."""
    settings = self._settings
    if self._chat_renderer is None and self._chat_unusable is None:
      try:
        self._chat_renderer = chat.renderer_for(
            self._tokenizer.tokenizer, settings.chat_template,
            settings.chat_template_kwargs)
      except ValueError as error:
        reason = ('no_chat_template' if not chat.has_chat_template(
            self._tokenizer.tokenizer) and not settings.chat_template
                  else 'invalid_chat_template')
        self._chat_unusable = ChatRejected(reason, str(error))
    if self._chat_unusable is not None:
      return chat.ChatOutcome([], [(index, self._chat_unusable) for index in
                                   range(len(records.example_ids))], {})
    return chat.tokenize_conversations(
        records.conversations, renderer=self._chat_renderer,
        encode=segment_encode(self._tokenizer.encoder),
        settings=chat.ChatSettings(
            settings.special_tokens_in_text, settings.train_on,
            settings.chat_rows, settings.max_seq_len, settings.truncation))

  def _tokenize_chats(self, records: RecordChunk):
    """(TokenChunk of the conversations' rows that fit, Rejecteds, stats)."""
    outcome = self._chat_outcome(records)
    rows = outcome.rows
    chunk = TokenChunk.from_sequences(
        [records.example_ids[row.record] + row.suffix for row in rows],
        [row.ids for row in rows], [row.supervised for row in rows],
        [row.truncated for row in rows])
    rejected = [records.reject(index, why.reason, str(why))
                for index, why in outcome.rejected]
    return chunk, rejected, {
        **outcome.stats,
        'chat_records': len(records.example_ids),
        'records_with_special_token_text': records_with_special_text(
            self._special_text, map(chat_strings, records.conversations)),
    }
