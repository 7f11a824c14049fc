"""The tokenizer's facts kept between processes (transforms/
tokenizer_cache.py): a process that finds them encodes as one that loads
the tokenizer with transformers, and a changed file is never served stale.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SAMPLE
from output_rows import record_counts, rows_by_id
from sftbeam.pipeline.readers import load_dataset_info
from sftbeam.transforms import tokenizer_cache, tokenizer_source
from sftbeam.transforms.tokenizer_backend import EncodeMode
from sftbeam.transforms.tokenizer_source import (EMBEDDED, LoadedTokenizer,
                                                 embedded_tokenizer_dir)

TEXTS = ['Natalia sold clips to 48 of her friends.', '', '  two  spaces',
         'Ünïcode — 中文 <|im_end|> <|endoftext|>', 'x' * 3000]
MODES = [EncodeMode(add, split) for add in (False, True)
         for split in (False, True)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """An empty cache directory of this test's own."""
  monkeypatch.setenv(tokenizer_cache.CACHE_DIR_ENV, str(tmp_path / 'cache'))
  return tmp_path / 'cache'


@pytest.fixture
def copied_tokenizer(tmp_path):
  """The embedded tokenizer's files in a directory of this test's own."""
  directory = tmp_path / 'tokenizer'
  shutil.copytree(embedded_tokenizer_dir(), directory)
  return directory


def encodings(loaded: LoadedTokenizer) -> list:
  return [[part.tolist() for part in loaded.encoder.encode(TEXTS, mode)]
          for mode in MODES]


@pytest.mark.parametrize('backend', ['auto', 'hf', 'fastokens'])
def test_kept_facts_encode_as_transformers_does(cache, tokenizer_loads,
                                                backend):
  loaded = LoadedTokenizer(EMBEDDED, backend)
  assert tokenizer_loads == [EMBEDDED]
  assert len(list((cache / 'tokenizers').iterdir())) == 1
  kept = LoadedTokenizer(EMBEDDED, backend)
  assert tokenizer_loads == [EMBEDDED]  # from the cache: transformers not used
  assert kept.facts == loaded.facts
  assert kept.special_tokens == loaded.special_tokens
  assert encodings(kept) == encodings(loaded)
  assert kept.encoder.name == loaded.encoder.name
  assert kept.identity() == loaded.identity()
  # The HuggingFace tokenizer itself (the chat template) on first use.
  assert kept.tokenizer.chat_template == loaded.tokenizer.chat_template
  assert tokenizer_loads == [EMBEDDED, EMBEDDED]


def test_fastokens_loads_only_in_a_process_that_encodes(cache, monkeypatch):
  """The command of a run on other processes checks the tokenizer but
  never encodes: it does not load fastokens. A process that encodes loads
  it once, ahead (prepare_encoder) or at the encoder's first use."""
  loads = []
  load = tokenizer_source.load_fastokens
  monkeypatch.setattr(tokenizer_source, 'load_fastokens',
                      lambda path: loads.append(path) or load(path))
  checked = LoadedTokenizer(EMBEDDED, 'auto')
  assert checked.facts.vocab_size > 0 and checked.special_tokens
  assert not loads
  assert checked.encoder.name == 'fastokens' and len(loads) == 1
  ahead = LoadedTokenizer(EMBEDDED, 'auto')
  ahead.prepare_encoder()
  ahead.prepare_encoder()
  assert len(loads) == 2
  assert encodings(ahead) == encodings(checked) and len(loads) == 2


def test_a_changed_file_is_loaded_again(cache, tokenizer_loads,
                                        copied_tokenizer):
  name = str(copied_tokenizer)
  assert LoadedTokenizer(name, 'auto').facts.eos_token_id == 151645
  config_path = copied_tokenizer / 'tokenizer_config.json'
  config = json.loads(config_path.read_text())
  config['eos_token'] = '<|endoftext|>'
  config_path.write_text(json.dumps(config))
  changed = LoadedTokenizer(name, 'auto')
  assert tokenizer_loads == [name, name]
  assert changed.facts.eos_token_id == 151643
  assert len(list((cache / 'tokenizers').iterdir())) == 2


def test_the_key_covers_contents_directory_and_versions(copied_tokenizer,
                                                        monkeypatch):
  key = tokenizer_cache.cache_key(str(copied_tokenizer))
  assert tokenizer_cache.cache_key(str(copied_tokenizer)) == key
  assert tokenizer_cache.cache_key(embedded_tokenizer_dir()) != key
  (copied_tokenizer / 'added_tokens.json').write_text('{}')
  added = tokenizer_cache.cache_key(str(copied_tokenizer))
  assert added != key
  monkeypatch.setattr(tokenizer_cache.importlib.metadata, 'version',
                      lambda package: '0.0.0')
  assert tokenizer_cache.cache_key(str(copied_tokenizer)) != added


def test_an_unreadable_kept_file_is_loaded_again(cache, tokenizer_loads):
  LoadedTokenizer(EMBEDDED, 'auto')
  (kept,) = (cache / 'tokenizers').iterdir()
  kept.write_text(kept.read_text()[:1000])  # cut short
  assert LoadedTokenizer(EMBEDDED, 'auto').facts.vocab_size > 150_000
  assert tokenizer_loads == [EMBEDDED, EMBEDDED]
  assert json.loads(kept.read_text())['class_name']  # written whole again


def test_an_unwritable_cache_keeps_nothing(tmp_path, monkeypatch,
                                          tokenizer_loads):
  (tmp_path / 'file').write_text('')
  monkeypatch.setenv(tokenizer_cache.CACHE_DIR_ENV,
                     str(tmp_path / 'file' / 'cache'))
  LoadedTokenizer(EMBEDDED, 'auto')
  LoadedTokenizer(EMBEDDED, 'auto')
  assert tokenizer_loads == [EMBEDDED, EMBEDDED]


def test_hub_names_and_remote_directories_are_not_kept(copied_tokenizer):
  assert tokenizer_source.cache_key('gs://bucket/tokenizer') is None
  assert tokenizer_source.cache_key('Qwen/Qwen3-0.6B') is None
  assert tokenizer_source.cache_key(str(copied_tokenizer)) == (
      tokenizer_cache.cache_key(str(copied_tokenizer)))


def test_a_process_with_kept_facts_never_imports_transformers(cache):
  """What a local run's worker does: the facts the command's process kept,
  then the encoder and the probe-text check, without transformers."""
  LoadedTokenizer(EMBEDDED, 'auto')
  script = ('import sys\n'
            'from sftbeam.transforms.tokenizer_backend import EncodeMode\n'
            'from sftbeam.transforms.tokenizer_source import LoadedTokenizer\n'
            'loaded = LoadedTokenizer("embedded", "auto")\n'
            'loaded.encoder.check([EncodeMode(True, False)])\n'
            'print(loaded.encoder.reason)\n'
            'print("transformers" in sys.modules)\n')
  result = subprocess.run([sys.executable, '-c', script], capture_output=True,
                          text=True, check=True,
                          env=dict(os.environ, **{
                              tokenizer_cache.CACHE_DIR_ENV: str(cache)}))
  reason, imported = result.stdout.strip().splitlines()
  assert reason.startswith("fastokens: gave hf's ids on")
  assert imported == 'False'


@pytest.mark.slow
def test_workers_with_kept_facts_write_the_rows_of_workers_without(tmp_path):
  """Two workers that find the kept facts (the command's process wrote
  them) against two that load the tokenizer with transformers (the cache
  directory cannot be written): every row, rejection and count alike."""
  (tmp_path / 'file').write_text('')
  outputs = {}
  for cache in ('kept', 'file/none'):
    outputs[cache] = tmp_path / f'out-{cache.replace("/", "-")}'
    env = dict(os.environ, **{
        tokenizer_cache.CACHE_DIR_ENV: str(tmp_path / cache)})
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), 'sftbeam'), 'run',
         '--config', 'configs/local.yaml', '--input', SAMPLE, '--output',
         str(outputs[cache]), '--workers', '2'],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
  assert len(list((tmp_path / 'kept' / 'tokenizers').iterdir())) == 1
  rows = rows_by_id(str(outputs['kept']))
  assert len(rows) > 250
  assert rows_by_id(str(outputs['file/none'])) == rows
  assert record_counts(str(outputs['kept'])) == record_counts(
      str(outputs['file/none']))
  # backend_reason counts the input texts checked by the worker that wrote
  # dataset_info.json: it may differ between any two runs on 2 workers.
  infos = [dict(load_dataset_info(str(output))['tokenizer'],
                backend_reason=None) for output in outputs.values()]
  assert infos[0] == infos[1] and infos[0]['backend'] == 'fastokens'
