"""What the steps read from a loaded HuggingFace tokenizer, kept in a file
so that the next process that loads the same tokenizer skips transformers.

Loading a HuggingFace tokenizer (importing transformers, then
`AutoTokenizer.from_pretrained`) takes about 1.1 CPU s, in the `sftbeam`
command's process and again in each worker of a local run. On prompt/output
records the steps read from it only its `TokenizerFacts`: the Rust
tokenizer as transformers configured it (the `hf` backend, and the
reference the `auto` backend checks fastokens against), its pad and eos
ids, its special-token strings, its length and its class name. Rebuilding
that Rust tokenizer from its saved serialization takes about 0.3 s,
without transformers.

The first process that loads a local tokenizer (the embedded one or a
directory; never a hub name or a remote directory) writes its facts to
CACHE_DIR/tokenizers/KEY.json; later processes read them. KEY is the
sha256 of the tokenizer's directory, the contents of its files that
transformers reads, and the versions of transformers and tokenizers: a
changed file, another directory or another version is another key, so a
file is never read for a tokenizer other than the one it was written from.
The `auto` backend still checks fastokens against the reference in every
process. The chat template is read from the HuggingFace tokenizer itself,
loaded on the first chat record (transforms/tokenizer_source.py).

CACHE_DIR is $SFTBEAM_CACHE_DIR, else $XDG_CACHE_HOME/sftbeam, else
~/.cache/sftbeam; one file of about 6 MB per tokenizer (Qwen's), which can
be deleted at any time. Where the directory cannot be written, nothing is
kept and each process loads the tokenizer with transformers.
"""

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from typing import List, NamedTuple, Optional

from sftbeam.transforms.tokenizer_backend import special_token_strings

CACHE_DIR_ENV = 'SFTBEAM_CACHE_DIR'
# The files transformers reads to load a tokenizer from a directory
# (config.json: which class, when tokenizer_config.json does not say).
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'vocab.json',
                   'merges.txt', 'special_tokens_map.json',
                   'added_tokens.json', 'chat_template.jinja',
                   'chat_template.json', 'tokenizer.model', 'config.json')
# Part of every key: a file written in another layout is never read.
_FORMAT = 1

_log = logging.getLogger('sftbeam')


class TokenizerFacts(NamedTuple):
  """What the steps read from a loaded HuggingFace tokenizer."""
  class_name: str
  vocab_size: int  # len(tokenizer): its ids are 0 to vocab_size - 1
  pad_token_id: Optional[int]
  eos_token_id: Optional[int]
  special_tokens: List[str]  # tokenizer_backend.special_token_strings
  # Its Rust tokenizer (`backend_tokenizer.to_str()`); None: a slow
  # tokenizer, which has none (and is never cached).
  backend_json: Optional[str]


class RustTokenizer:
  """The Rust tokenizer of TokenizerFacts, where the encoders
  (transforms/tokenizer_backend.py) take a HuggingFace fast tokenizer:
  they read only its `backend_tokenizer`."""

  def __init__(self, facts: TokenizerFacts):
    import tokenizers  # pylint: disable=import-outside-toplevel
    self.backend_tokenizer = tokenizers.Tokenizer.from_str(facts.backend_json)


def facts_of(tokenizer) -> TokenizerFacts:
  """The facts of a loaded HuggingFace tokenizer."""
  backend = getattr(tokenizer, 'backend_tokenizer', None)
  return TokenizerFacts(type(tokenizer).__name__, len(tokenizer),
                        tokenizer.pad_token_id, tokenizer.eos_token_id,
                        special_token_strings(tokenizer),
                        backend and backend.to_str())


def cache_dir() -> str:
  """Where sftbeam keeps what it caches (see the module docstring)."""
  if os.environ.get(CACHE_DIR_ENV):
    return os.environ[CACHE_DIR_ENV]
  base = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  return os.path.join(base, 'sftbeam')


def cache_key(directory: str) -> str:
  """The key of the tokenizer in local `directory` (module docstring)."""
  digest = hashlib.sha256()
  versions = [importlib.metadata.version(package)
              for package in ('transformers', 'tokenizers')]
  digest.update(json.dumps([_FORMAT, os.path.abspath(directory),
                            versions]).encode())
  for name in TOKENIZER_FILES:
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      with open(path, 'rb') as handle:
        content = handle.read()
      digest.update(f'\0{name}\0{len(content)}\0'.encode())
      digest.update(content)
  return digest.hexdigest()


def _path(key: str) -> str:
  return os.path.join(cache_dir(), 'tokenizers', f'{key}.json')


def read(key: str) -> Optional[TokenizerFacts]:
  """The facts kept under `key`, or None (none kept, or unreadable)."""
  try:
    with open(_path(key), encoding='utf-8') as handle:
      return TokenizerFacts(**json.load(handle))
  except (OSError, ValueError, TypeError):
    return None


def write(key: str, facts: TokenizerFacts):
  """Keeps `facts` under `key`; a directory that cannot be written is
  skipped (the next process loads with transformers again)."""
  path = _path(key)
  temp_path = None
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Written whole, then renamed: a reader never sees half a file.
    handle, temp_path = tempfile.mkstemp(dir=os.path.dirname(path),
                                         suffix='.incomplete')
    with os.fdopen(handle, 'w', encoding='utf-8') as out:
      json.dump(facts._asdict(), out, ensure_ascii=False)
    os.replace(temp_path, path)
  except OSError as error:
    _log.debug('sftbeam: tokenizer not cached in %s: %s', path, error)
    if temp_path and os.path.exists(temp_path):
      os.remove(temp_path)
