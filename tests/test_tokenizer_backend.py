"""Tokenizer backends: fastokens must give HuggingFace's ids, or not be used.

Unit tests of the choice (transforms/tokenizer_backend.py) with fakes, and
end to end: rows byte-identical per example id between `--tokenizer_backend
fastokens` and `hf` on all of the shared data and on the hostile input.
"""

import json
import logging

import numpy as np
import pytest

from conftest import run_sftbeam, shared_data
from fake_tokenizer import WordIdTokenizer
from hostile_cases import cases, write_file
from output_rows import record_counts, rejected_lines, rows_by_id
from sftbeam.pipeline.readers import load_dataset_info
from sftbeam.transforms import tokenizer_backend
from sftbeam.transforms.tokenizer_backend import (AutoEncoder, EncodeMode,
                                                  FastokensEncoder,
                                                  HfEncoder, make_encoder)
from sftbeam.transforms.probe_texts import probe_texts

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

MODES = [EncodeMode(add, split) for add in (False, True)
         for split in (False, True)]


def test_probe_texts_cover_the_special_tokens_and_long_texts(qwen):
  specials = tokenizer_backend.special_token_strings(qwen)
  assert '<|im_end|>' in specials and '<think>' not in specials
  probes = probe_texts(specials)
  assert 300 <= len(probes) <= 1000
  assert all(any(token in text for text in probes) for token in specials)
  assert max(map(len, probes)) >= 10_000


@pytest.mark.parametrize('mode', MODES)
def test_fastokens_gives_hf_ids_on_the_probe_texts(qwen, mode):
  probes = probe_texts(tokenizer_backend.special_token_strings(qwen))
  assert tokenizer_backend.first_difference(
      HfEncoder(qwen), FastokensEncoder(qwen), probes, mode) is None


def test_flat_ids_and_offsets(qwen):
  ids, offsets = FastokensEncoder(qwen).encode(['Hello', '', 'a b'],
                                               EncodeMode(False, False))
  assert ids.dtype == np.int64 and offsets.tolist()[0] == 0
  assert offsets[1] == offsets[2]  # the empty text has no tokens
  hf_ids, hf_offsets = HfEncoder(qwen).encode(['Hello', '', 'a b'],
                                              EncodeMode(False, False))
  assert ids.tolist() == hf_ids.tolist()
  assert offsets.tolist() == hf_offsets.tolist()


def test_auto_uses_hf_for_a_tokenizer_fastokens_cannot_load(caplog):
  with caplog.at_level(logging.WARNING, logger='sftbeam'):
    encoder = make_encoder(WordIdTokenizer(), 'auto')
  assert encoder.name == 'hf'
  assert 'not a HuggingFace fast tokenizer' in encoder.reason
  [warning] = caplog.records
  assert 'tokenizer_backend auto uses hf' in warning.getMessage()
  ids, offsets = encoder.encode(['w1 w2', 'w3'], EncodeMode(False, False))
  assert (ids.tolist(), offsets.tolist()) == ([1, 2, 3], [0, 2, 3])


class _OffByOne:
  """A stand-in fast encoder that gets one text wrong."""
  name = 'fastokens'

  def __init__(self, real, wrong_text):
    self._real = real
    self._wrong_text = wrong_text

  def encode(self, texts, mode):
    ids, offsets = self._real.encode(texts, mode)
    for index, text in enumerate(texts):
      if text == self._wrong_text:
        ids = ids.copy()
        ids[offsets[index]] += 1
    return ids, offsets


def test_auto_falls_back_when_a_probe_text_differs(qwen, monkeypatch, caplog):
  real = FastokensEncoder(qwen)
  monkeypatch.setattr(tokenizer_backend, 'FastokensEncoder',
                      lambda tokenizer, loaded=None: _OffByOne(real, 'Hello'))
  monkeypatch.setattr(tokenizer_backend, 'probe_texts',
                      lambda specials: ['fine', 'Hello'])
  encoder = AutoEncoder(qwen)
  with caplog.at_level(logging.WARNING, logger='sftbeam'):
    encoder.check([EncodeMode(False, False)])
  assert encoder.name == 'hf'
  assert "probe text #1 ('Hello'" in encoder.reason
  assert len(caplog.records) == 1


def test_auto_falls_back_when_an_input_text_differs(qwen, monkeypatch):
  real = FastokensEncoder(qwen)
  monkeypatch.setattr(tokenizer_backend, 'FastokensEncoder',
                      lambda tokenizer, loaded=None: _OffByOne(real, 'rare input'))
  encoder = AutoEncoder(qwen)
  mode = EncodeMode(False, False)
  ids, _ = encoder.encode(['common', 'rare input'], mode)
  assert encoder.name == 'hf'
  assert "input text 'rare input'" in encoder.reason
  hf_ids, _ = HfEncoder(qwen).encode(['common', 'rare input'], mode)
  assert ids.tolist() == hf_ids.tolist()  # the call itself gave hf's ids


def test_auto_stops_checking_after_the_first_input_texts(qwen, monkeypatch):
  monkeypatch.setattr(tokenizer_backend, 'CHECKED_INPUT_TEXTS', 3)
  encoder = AutoEncoder(qwen)
  mode = EncodeMode(False, False)
  encoder.encode(['a', 'b'], mode)
  encoder.encode(['c', 'd'], mode)
  assert 'first 3 input texts' in encoder.reason
  calls = []
  monkeypatch.setattr(tokenizer_backend, 'first_difference',
                      lambda *args: calls.append(args))
  encoder.encode(['e'], mode)
  assert not calls


@pytest.fixture
def word_level_tokenizer(tmp_path):
  """A HuggingFace fast tokenizer fastokens cannot load (its Whitespace
  pre-tokenizer), as a tokenizer directory."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  vocab = {'[UNK]': 0, '[PAD]': 1, 'hello': 2, 'world': 3, 'again': 4}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      vocab, unk_token='[UNK]'))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  directory = tmp_path / 'word-level'
  directory.mkdir()
  tokenizer.save(str(directory / 'tokenizer.json'))
  (directory / 'tokenizer_config.json').write_text(json.dumps({
      'tokenizer_class': 'PreTrainedTokenizerFast', 'pad_token': '[PAD]',
      'unk_token': '[UNK]'}))
  records = tmp_path / 'records.jsonl'
  records.write_text('{"prompt": "hello world", "output": "again"}\n'
                     '{"prompt": "hello", "output": "world again"}\n')
  return str(directory), str(records)


def test_forced_fastokens_that_cannot_load_exits_2_at_start(
    word_level_tokenizer, tmp_path):
  directory, records = word_level_tokenizer
  result = run_sftbeam('run', '--input', records, '--output',
                       str(tmp_path / 'out'), '--tokenizer', directory,
                       '--tokenizer_backend', 'fastokens', network=False)
  assert result.returncode == 2
  [line] = result.stderr.strip().splitlines()
  assert 'fastokens cannot load it' in line and 'Whitespace' in line
  assert not (tmp_path / 'out').exists()


def test_auto_runs_on_hf_and_says_why(word_level_tokenizer, tmp_path):
  directory, records = word_level_tokenizer
  result = run_sftbeam('run', '--input', records, '--output',
                       str(tmp_path / 'out'), '--tokenizer', directory,
                       network=False, check=True)
  info = load_dataset_info(str(tmp_path / 'out'))
  assert info['tokenizer']['backend'] == 'hf'
  assert info['tokenizer']['backend_records'] == {'hf': 2}
  assert 'fastokens cannot load it' in info['tokenizer']['backend_reason']
  assert 'tokenizer_backend auto uses hf' in result.stderr
  assert rows_by_id(str(tmp_path / 'out'))  # written with hf


# -------------------------------------------------------------- end to end

def _run(input_paths, output_dir, backend):
  """Any rejections accepted: the hostile file is mostly bad on purpose."""
  return run_sftbeam('run', '--config', 'configs/local.yaml', '--input',
                     *input_paths, '--output', str(output_dir),
                     '--tokenizer_backend', backend,
                     '--max_rejected_fraction', '1', network=False)


@pytest.mark.parametrize('name', ['shared', 'hostile'])
def test_rows_are_identical_with_both_backends(tmp_path, name):
  if name == 'shared':
    inputs = [shared_data(file) for file in (
        'gsm8k_train.jsonl', 'gsm8k_test.jsonl', 'alpaca_5000.jsonl',
        'gsm8k_chat.jsonl')]
  else:
    inputs = [str(tmp_path / 'hostile.jsonl')]
    write_file(inputs[0], cases())
  outputs = {}
  for backend in ('fastokens', 'hf'):
    outputs[backend] = str(tmp_path / backend)
    result = _run(inputs, outputs[backend], backend)
    assert result.returncode == 0, result.stderr[-2000:]
    info = load_dataset_info(outputs[backend])
    assert info['tokenizer']['backend'] == backend
    assert list(info['tokenizer']['backend_records']) == [backend]
  fast, hf = (rows_by_id(outputs[backend]) for backend in ('fastokens', 'hf'))
  assert len(fast) > (10_000 if name == 'shared' else 10)
  assert fast == hf
  assert rejected_lines(outputs['fastokens']) == rejected_lines(outputs['hf'])
  assert record_counts(outputs['fastokens']) == record_counts(outputs['hf'])


