"""Who turns texts into token ids: fastokens or HuggingFace tokenizers.

  hf         HuggingFace tokenizers' own Rust encoder: the reference.
  fastokens  a Rust reimplementation of the same encoding (PyPI `fastokens`),
             many times faster than hf on a whole chunk of texts (raw-fast
             against raw in docs/performance.md), with every input's ids
             in one flat buffer instead of a list per text.
  auto       fastokens when it loads the tokenizer and gives hf's ids on the
             probe texts (transforms/probe_texts.py) and on the first texts
             it is asked to encode; otherwise hf, with one warning line.

Every backend encodes a list of texts at once and gives `(ids, offsets)`:
text i's ids are `ids[offsets[i]:offsets[i + 1]]` (both int64 arrays).
Special-token strings in the texts (`<|im_end|>`) map to their special ids,
or with `split_special_tokens` are tokenized as the plain text they are.
"""

import itertools
import logging
import re
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np

from sftbeam.transforms.probe_texts import probe_texts
from sftbeam.transforms.records import offsets_of

BACKENDS = ('auto', 'fastokens', 'hf')
# `auto` also compares this many of the first texts it encodes, per kind of
# call, before it stops checking.
CHECKED_INPUT_TEXTS = 512

_log = logging.getLogger('sftbeam')


class BackendUnavailable(ValueError):
  """The backend asked for cannot encode this tokenizer."""


class EncodeMode(NamedTuple):
  """How texts are encoded: the tokenizer's own specials added (prompts may
  get a BOS), and special-token strings in the text kept as plain text."""
  add_special_tokens: bool
  split_special_tokens: bool


def special_token_strings(tokenizer) -> list:
  """The strings of the tokenizer's special tokens (`<|im_end|>`, ...):
  those that `split_special_tokens` decides about."""
  backend = getattr(tokenizer, 'backend_tokenizer', None)
  if backend is not None:
    return sorted(token.content for token in
                  backend.get_added_tokens_decoder().values() if token.special)
  return sorted(getattr(tokenizer, 'all_special_tokens', ()) or ())


def special_text_pattern(special_tokens) -> Optional[re.Pattern]:
  """A regex finding any of the special-token strings (longest first)."""
  if not special_tokens:
    return None
  return re.compile('|'.join(
      map(re.escape, sorted(special_tokens, key=len, reverse=True))))


def _flat(id_lists) -> Tuple[np.ndarray, np.ndarray]:
  offsets = offsets_of(np.fromiter(map(len, id_lists), np.int64,
                                   len(id_lists)))
  ids = np.fromiter(itertools.chain.from_iterable(id_lists), np.int64,
                    int(offsets[-1]))
  return ids, offsets


class Encoder:
  """Encodes many texts at once: `encode(texts, mode) -> (ids, offsets)`.

  `name` is the backend that encodes, `reason` why that one.
  """
  name = ''
  reason = ''

  def check(self, modes):
    """Makes sure the encoder can be trusted in `modes` (see AutoEncoder)."""
    del modes  # a backend chosen by name is trusted as it is

  def encode(self, texts: Sequence[str], mode: EncodeMode):
    raise NotImplementedError


class HfEncoder(Encoder):
  """HuggingFace's encoder: a fast tokenizer's Rust backend, or, for any
  other tokenizer object, its `__call__`."""
  name = 'hf'

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer
    self._rust = {}  # split_special_tokens -> a Rust Tokenizer set so

  def _rust_backend(self, split_special_tokens: bool):
    """The Rust tokenizer set to the mode: the tokenizer's own when it is
    (usually so for "special"), else a copy (the flag is the tokenizer's
    state, not a call argument, and the caller's tokenizer must stay as it
    was)."""
    if split_special_tokens not in self._rust:
      import tokenizers  # pylint: disable=import-outside-toplevel
      backend = self._tokenizer.backend_tokenizer
      if backend.encode_special_tokens != split_special_tokens:
        backend = tokenizers.Tokenizer.from_str(backend.to_str())
        backend.encode_special_tokens = split_special_tokens
      self._rust[split_special_tokens] = backend
    return self._rust[split_special_tokens]

  def encode(self, texts: Sequence[str], mode: EncodeMode):
    if getattr(self._tokenizer, 'backend_tokenizer', None) is not None:
      encodings = self._rust_backend(mode.split_special_tokens).encode_batch_fast(
          list(texts), add_special_tokens=mode.add_special_tokens)
      return _flat([encoding.ids for encoding in encodings])
    kwargs = {'add_special_tokens': mode.add_special_tokens}
    if mode.split_special_tokens:
      kwargs['split_special_tokens'] = True
    return _flat(self._tokenizer(list(texts), **kwargs)['input_ids'])


def load_fastokens(tokenizer_json: str):
  """A fastokens tokenizer from a `tokenizer.json` path, or the exception
  that stopped it. Releases the GIL while it loads (seconds), so it can run
  on a thread while the HuggingFace tokenizer loads."""
  try:
    import fastokens  # pylint: disable=import-outside-toplevel
    return fastokens.Tokenizer.from_file(tokenizer_json)
  except Exception as error:  # pylint: disable=broad-except
    return error


class FastokensEncoder(Encoder):
  """fastokens, built from the tokenizer's own configuration.

  By default from the loaded tokenizer's serialization, which is exactly
  what HuggingFace encodes with. `loaded` may hand in one built from the
  tokenizer's `tokenizer.json` file instead (faster to have, as it loads
  beside the HuggingFace tokenizer; transformers may adjust settings on
  load, so only AutoEncoder, which checks, takes it), or the exception
  that stopped that.
  """
  name = 'fastokens'

  def __init__(self, tokenizer, loaded=None):
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is None:
      raise BackendUnavailable(
          f'{type(tokenizer).__name__} is not a HuggingFace fast tokenizer')
    if loaded is None:
      import fastokens  # pylint: disable=import-outside-toplevel
      try:
        loaded = fastokens.Tokenizer.from_json_str(backend.to_str())
      except Exception as error:  # pylint: disable=broad-except
        loaded = error
    if isinstance(loaded, Exception):
      raise BackendUnavailable(
          f'fastokens cannot load it: {str(loaded).splitlines()[0][:200]}')
    self._tokenizer = loaded

  def encode(self, texts: Sequence[str], mode: EncodeMode):
    ids, offsets = self._tokenizer.encode_batch_flat(
        list(texts), add_special_tokens=mode.add_special_tokens,
        split_special_tokens=mode.split_special_tokens)
    return (np.frombuffer(ids, '<u4').astype(np.int64),
            np.frombuffer(offsets, '<u8').astype(np.int64))


def ids_per_text(encoder, texts: Sequence[str], mode: EncodeMode) -> list:
  """`encoder`'s ids for each text, as lists."""
  ids, offsets = encoder.encode(texts, mode)
  return [ids[start:end].tolist()
          for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def segment_encode(encoder):
  """The `encode` of chat.tokenize_conversations over `encoder`:
  (texts, split_special_tokens) -> ids per text, no special tokens added."""
  return lambda texts, split: ids_per_text(encoder, texts,
                                           EncodeMode(False, split))


def first_difference(reference, candidate, texts, mode: EncodeMode):
  """Index of the first text the two encoders encode differently, or None."""
  expected = reference.encode(texts, mode)
  got = candidate.encode(texts, mode)
  if np.array_equal(expected[1], got[1]) and np.array_equal(expected[0],
                                                            got[0]):
    return None
  for index in range(len(texts)):
    want = expected[0][expected[1][index]:expected[1][index + 1]]
    have = got[0][got[1][index]:got[1][index + 1]]
    if not np.array_equal(want, have):
      return index
  return None


class AutoEncoder(Encoder):
  """fastokens while it agrees with hf, else hf.

  Each mode of encoding is checked before its first use: the probe texts,
  then the first CHECKED_INPUT_TEXTS texts it is asked to encode in that
  mode. From the first difference on it encodes with hf, and says so once.
  `check(modes)` runs the probe check up front (a worker's setup).
  """

  def __init__(self, tokenizer, fastokens_loaded=None):
    self._hf = HfEncoder(tokenizer)
    self._probes = probe_texts(special_token_strings(tokenizer))
    self._unchecked = {}  # mode -> input texts still to compare in it
    self._checked_inputs = 0
    self._fast = None
    try:
      self._fast = FastokensEncoder(tokenizer, fastokens_loaded)
      self.reason = 'fastokens: loaded, not yet checked'
    except BackendUnavailable as error:
      self._fall_back(str(error))

  @property
  def name(self) -> str:
    return 'hf' if self._fast is None else 'fastokens'

  def _fall_back(self, why: str):
    self._fast = None
    self.reason = f'hf: {why}'
    _log.warning('sftbeam: tokenizer_backend auto uses hf: %s', why)

  def check(self, modes):
    """Compares the backends on the probe texts in each of `modes`."""
    for mode in modes:
      if self._fast is None or mode in self._unchecked:
        continue
      index = first_difference(self._hf, self._fast, self._probes, mode)
      if index is not None:
        self._fall_back(f'fastokens gave other ids than hf for probe text '
                        f'#{index} ({self._probes[index][:40]!r}, {mode})')
        return
      self._unchecked[mode] = CHECKED_INPUT_TEXTS
      self._describe_checks()

  def _describe_checks(self):
    self.reason = (f'fastokens: gave hf\'s ids on {len(self._probes)} probe '
                   f'texts in {len(self._unchecked)} modes and on the first '
                   f'{self._checked_inputs} input texts')

  def encode(self, texts: Sequence[str], mode: EncodeMode):
    self.check([mode])
    if self._fast is None:
      return self._hf.encode(texts, mode)
    if self._unchecked[mode]:
      checked = list(texts[:self._unchecked[mode]])
      self._unchecked[mode] -= len(checked)
      index = first_difference(self._hf, self._fast, checked, mode)
      if index is not None:
        self._fall_back(f'fastokens gave other ids than hf for input text '
                        f'{checked[index][:40]!r} ({mode})')
        return self._hf.encode(texts, mode)
      self._checked_inputs += len(checked)
      self._describe_checks()
    return self._fast.encode(texts, mode)


def make_encoder(tokenizer, backend: str, fastokens_loaded=None):
  """The encoder `backend` names, for `tokenizer`.

  `fastokens` raises BackendUnavailable when it cannot load the tokenizer;
  `auto` never raises (it falls back to hf). The encoder's `name` says
  which backend encodes and `reason` why. `fastokens_loaded`: for `auto`,
  a fastokens tokenizer already loaded from the tokenizer's file (see
  FastokensEncoder).
  """
  if backend == 'hf':
    encoder = HfEncoder(tokenizer)
    encoder.reason = 'hf: chosen with tokenizer_backend hf'
    return encoder
  if backend == 'fastokens':
    encoder = FastokensEncoder(tokenizer)
    encoder.reason = 'fastokens: chosen with tokenizer_backend fastokens'
    return encoder
  if backend == 'auto':
    return AutoEncoder(tokenizer, fastokens_loaded)
  raise ValueError(f'tokenizer_backend must be one of {", ".join(BACKENDS)}, '
                   f'not {backend!r}')
