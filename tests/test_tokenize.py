"""transforms/tokenize.py: TokenizeRecords, and the fit of each record to
max_seq_len."""

import json

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given
from hypothesis import strategies as st

from conftest import beam_test_pipeline, dofn_outputs, shared_data
from sftbeam.transforms.records import RecordChunk
from sftbeam.transforms.spec_arithmetic import TRUNCATION_MODES
from sftbeam.transforms.tokenize import (TokenizeRecords, TokenizeSettings,
                                         fit_lengths)
from sftbeam.transforms.tokenizer_source import EMBEDDED
from strategies import EXAMPLES, token_ids


SETTINGS = TokenizeSettings(tokenizer=EMBEDDED, max_seq_len=16)


def _records(*pairs):
  """A RecordChunk of (example_id, prompt, output) on lines 1, 2, ..."""
  chunk = RecordChunk.empty('f')
  for number, (example_id, prompt, output) in enumerate(pairs, start=1):
    chunk.add(number, example_id, b'{}', prompt, output)
  return chunk


@pytest.fixture(scope='module')
def tokenize_fn():
  dofn = TokenizeRecords(SETTINGS)
  dofn.setup()
  return dofn


def _sequence(chunk, index):
  return chunk.ids[chunk.offsets[index]:chunk.offsets[index + 1]].tolist()


def test_tokenize_records_directly(tokenize_fn, qwen):
  main, tagged = dofn_outputs(tokenize_fn, _records(
      ('a', 'Hello, world!', 'Hi'), ('b', 'Hello', 'word ' * 40),
      ('c', 'Say <|im_end|>', 'ok')))
  [chunk] = main
  prompt_ids = qwen('Hello, world!')['input_ids']
  output_ids = qwen('Hi', add_special_tokens=False)['input_ids']
  assert chunk.example_ids == ['a', 'c']
  assert _sequence(chunk, 0) == prompt_ids + output_ids
  assert chunk.prompt_lengths.tolist()[0] == len(prompt_ids)
  assert chunk.supervised[:chunk.offsets[1]].tolist() == (
      [False] * len(prompt_ids) + [True] * len(output_ids))
  # The default maps special-token text to the special id, as the spec.
  assert qwen.convert_tokens_to_ids('<|im_end|>') in _sequence(chunk, 1)
  assert [(r.reason, r.line_number) for r in tagged['rejected']] == [
      ('too_long', 2)]
  assert tagged['stats'] == [{'truncated': 0,
                              'records_with_special_token_text': 1,
                              'tokenizer_backend/fastokens': 3}]


@pytest.mark.slow
def test_tokenize_records_in_pipeline(qwen):
  with beam_test_pipeline() as root:
    tokenized = (root | beam.Create([_records(('x', 'a b c', 'd'))])
                 | beam.ParDo(TokenizeRecords(SETTINGS)).with_outputs(
                     'rejected', 'stats', main='chunks'))
    expected = (qwen('a b c')['input_ids'] +
                qwen('d', add_special_tokens=False)['input_ids'])
    assert_that(tokenized.chunks | beam.Map(
        lambda chunk: (chunk.example_ids, chunk.ids.tolist())),
                equal_to([(['x'], expected)]))


def test_tokenize_records_rejects_only_the_record_the_tokenizer_fails_on(
    monkeypatch):
  dofn = TokenizeRecords(SETTINGS)
  dofn.setup()
  encode = dofn._tokenizer.encoder.encode  # pylint: disable=protected-access

  def failing(texts, mode):
    if any('boom' in text for text in texts):
      raise RuntimeError('boom')
    return encode(texts, mode)
  monkeypatch.setattr(dofn._tokenizer.encoder, 'encode', failing)  # pylint: disable=protected-access
  main, tagged = dofn_outputs(dofn, _records(('a', 'fine', 'ok'),
                                         ('b', 'boom', 'x'),
                                         ('c', 'fine too', 'ok')))
  assert main[0].example_ids == ['a', 'c']
  assert [(r.reason, r.message) for r in tagged['rejected']] == [
      ('tokenizer_error', 'RuntimeError: boom')]


@pytest.mark.parametrize('mode, prompt_start, output_end', [
    ('output_right', 0, 2),
    ('prompt_left', 1, 3),
])
def test_fit_lengths_truncates(mode, prompt_start, output_end):
  # max_seq_len 4 allows 5 tokens in prompt + output: 3 + 3 is one over.
  fit = fit_lengths(np.array([3]), np.array([3]), 4, mode)
  assert (fit.prompt_start[0], fit.output_end[0]) == (prompt_start,
                                                       output_end)
  assert fit.truncated.tolist() == [True]
  assert fit.does_not_fit.tolist() == [0]


@EXAMPLES
@given(prompt=token_ids.filter(bool), output=token_ids.filter(bool),
       max_seq_len=st.integers(1, 60), mode=st.sampled_from(TRUNCATION_MODES))
def test_fit_lengths_properties(prompt, output, max_seq_len, mode):
  fits = len(prompt) + len(output) - 1 <= max_seq_len
  fit = fit_lengths(np.array([len(prompt)]), np.array([len(output)]),
                    max_seq_len, mode)
  if fit.does_not_fit[0]:
    assert not fits
    expected = {'none': 1,  # too_long
                'output_right': 2,  # prompt_too_long
                'prompt_left': 3}[mode]  # output_too_long
    assert fit.does_not_fit[0] == expected
    # Only a record that truncation cannot save is rejected.
    if mode == 'output_right':
      assert len(prompt) > max_seq_len
    if mode == 'prompt_left':
      assert len(output) > max_seq_len
    return
  new_prompt = prompt[fit.prompt_start[0]:]
  new_output = output[:fit.output_end[0]]
  assert fit.truncated[0] == (not fits)
  if fits:
    assert (list(new_prompt), list(new_output)) == (prompt, output)
    return
  assert mode != 'none'
  # Truncation keeps as much as fits: L is exactly max_seq_len.
  assert len(new_prompt) + len(new_output) - 1 == max_seq_len
  assert new_prompt and new_output
  if mode == 'output_right':
    assert list(new_prompt) == prompt
    assert list(new_output) == output[:len(new_output)]
  else:
    assert list(new_output) == output
    assert list(new_prompt) == prompt[len(prompt) - len(new_prompt):]


def _bundle_outputs(dofn, chunks):
  """Every output of one bundle of `chunks`, in order: (tag, value) with
  TokenChunks as tuples of lists, finish_bundle's unwrapped."""
  def plain(value):
    if hasattr(value, 'ids'):
      return tuple(np.asarray(part).tolist() for part in value)
    return value

  outputs = []
  dofn.start_bundle()
  for chunk in chunks:
    for value in dofn.process(chunk):
      tag = getattr(value, 'tag', None)
      outputs.append((tag, plain(getattr(value, 'value', value))))
  for value in dofn.finish_bundle() or ():
    tag = getattr(value, 'tag', None)
    if tag is not None:
      value = value.value
    outputs.append((tag, plain(value.value)))  # a WindowedValue
  return outputs


def test_running_ahead_gives_the_same_outputs_in_the_same_order(
    monkeypatch, gsm8k_chat_records):
  """Chunks tokenized on the encoding thread give what they give without
  it: chunks of pairs, a chunk of conversations between them, a mixed
  chunk, and a chunk the tokenizer fails on (rejected record by record)."""
  pairs = [_records(*[(f'{n}-{i}', f'Question {i} of {n}?', 'word ' * i)
                      for i in range(1, 12)]) for n in range(3)]
  failing = _records(('x', 'fine', 'ok'), ('y', 'boom', 'x'))
  mixed = pairs[1].subset(range(4))
  for number, conversation in enumerate(gsm8k_chat_records, start=100):
    mixed.add(number, f'chat-{number}', b'{}', conversation=conversation)
  chats = mixed.subset(range(4, len(mixed.example_ids)))
  chunks = [pairs[0], chats, pairs[1], failing, mixed, pairs[2]]
  settings = SETTINGS._replace(max_seq_len=4096)
  results = []
  for run_ahead in (False, True):
    dofn = TokenizeRecords(settings, run_ahead=run_ahead)
    dofn.setup()
    encode = dofn._tokenizer.encoder.encode  # pylint: disable=protected-access
    monkeypatch.setattr(
        dofn._tokenizer.encoder, 'encode',  # pylint: disable=protected-access
        lambda texts, mode, encode=encode: (
            _raise('boom') if any('boom' in text for text in texts)
            else encode(texts, mode)))
    results.append(_bundle_outputs(dofn, chunks))
    dofn.teardown()
  assert results[0] == results[1]
  assert sum(tag == 'rejected' for tag, _ in results[0]) == 1
  assert sum(tag is None for tag, _ in results[0]) == len(chunks)


def _raise(message):
  raise RuntimeError(message)


@pytest.fixture(scope='module')
def gsm8k_chat_records():
  """Five conversations of ../shared/data/gsm8k_chat.jsonl, parsed."""
  from sftbeam.transforms.chat_records import parse_conversation
  with open(shared_data('gsm8k_chat.jsonl'), encoding='utf-8') as handle:
    return [parse_conversation(json.loads(next(handle))) for _ in range(5)]
