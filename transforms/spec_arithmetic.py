"""The spec's arithmetic: tokenize prompt and output apart, join, pad, shift.

This module is the single home of the SFT arithmetic (docs/spec.md). The
pipeline's tokenize and pad steps and the public `tokenize_prompt_and_output`
all call `encode_pairs`, `join_pairs` and `pad_shift_mask`, so the library
and the pipeline cannot disagree.
"""

import weakref
from typing import NamedTuple, Optional, Sequence

import numpy as np

from sftbeam.transforms.records import TokenChunk, offsets_of, ranges
from sftbeam.transforms.tokenizer_backend import EncodeMode, make_encoder

# How special-token strings inside prompts and outputs (`<|im_end|>`) are
# tokenized: as the special token, as the spec's `tokenizer(text)` does
# ("special"), or as the plain text they are ("text": untrusted data cannot
# inject control tokens).
SPECIAL_TOKEN_MODES = ('special', 'text')
# What becomes of a record over max_seq_len (transforms/tokenize.py; for a
# conversation, whole turns are dropped: transforms/chat.py).
TRUNCATION_MODES = ('none', 'output_right', 'prompt_left')


class PairEncoding(NamedTuple):
  """The prompts and the outputs of many records, tokenized apart: prompt
  i is `prompt_ids[prompt_offsets[i]:prompt_offsets[i + 1]]`, likewise
  outputs."""
  prompt_ids: np.ndarray
  prompt_offsets: np.ndarray
  output_ids: np.ndarray
  output_offsets: np.ndarray

  @property
  def prompt_lengths(self) -> np.ndarray:
    return np.diff(self.prompt_offsets)

  @property
  def output_lengths(self) -> np.ndarray:
    return np.diff(self.output_offsets)


def append_to_each(ids: np.ndarray, offsets: np.ndarray, token: int):
  """(ids, offsets) with `token` appended to every sequence."""
  count = len(offsets) - 1
  new_offsets = offsets + np.arange(count + 1)
  appended = np.full(len(ids) + count, token, dtype=np.int64)
  keep = np.ones(len(appended), np.bool_)
  keep[new_offsets[1:] - 1] = False
  appended[keep] = ids
  return appended, new_offsets


def encode_pairs(encoder, prompts: Sequence[str], outputs: Sequence[str], *,
                 add_special_tokens: Optional[bool],
                 special_tokens_in_text: str,
                 eos_id: Optional[int]) -> PairEncoding:
  """Tokenizes prompts and outputs apart, each in one batched call.

  Prompts get the tokenizer's special tokens (`add_special_tokens` None:
  HuggingFace's default for `tokenizer(text)`, True); outputs never do, and
  get `eos_id` appended when it is given.
  """
  split = special_tokens_in_text == 'text'
  if add_special_tokens is None:
    add_special_tokens = True
  prompt_ids, prompt_offsets = encoder.encode(
      prompts, EncodeMode(add_special_tokens, split))
  output_ids, output_offsets = encoder.encode(outputs, EncodeMode(False, split))
  if eos_id is not None:
    output_ids, output_offsets = append_to_each(output_ids, output_offsets,
                                                 eos_id)
  return PairEncoding(prompt_ids, prompt_offsets, output_ids, output_offsets)


def join_pairs(example_ids, encoded: PairEncoding, keep=None,
               prompt_start=None, output_end=None,
               truncated=None) -> TokenChunk:
  """The records as one TokenChunk: prompt tokens then output tokens, the
  output tokens supervised.

  Only records where `keep` is True (default all); of record i, the prompt
  from token `prompt_start[i]` (default 0) and the output up to token
  `output_end[i]` (default all).
  """
  prompt_lengths = encoded.prompt_lengths
  output_lengths = encoded.output_lengths
  if keep is None:
    keep = np.ones(len(prompt_lengths), np.bool_)
  kept = np.flatnonzero(keep)
  start = 0 if prompt_start is None else prompt_start[kept]
  prompt_kept = prompt_lengths[kept] - start
  output_kept = (output_lengths[kept] if output_end is None
                 else output_end[kept])
  record_lengths = prompt_kept + output_kept
  offsets = offsets_of(record_lengths)
  ids = np.empty(int(offsets[-1]), np.int64)
  # Each record's prompt tokens, then its output tokens, placed by one
  # scatter each (what is kept of the prompts and outputs, in order).
  _place(ids, offsets[:-1], _kept_ranges(
      encoded.prompt_ids, encoded.prompt_offsets[kept] + start, prompt_kept))
  output_positions = _place(ids, offsets[:-1] + prompt_kept, _kept_ranges(
      encoded.output_ids, encoded.output_offsets[kept], output_kept))
  supervised = np.zeros(len(ids), np.bool_)
  supervised[output_positions] = True
  return TokenChunk(
      example_ids=[example_ids[i] for i in kept.tolist()],
      ids=ids,
      offsets=offsets,
      supervised=supervised,
      prompt_lengths=prompt_kept.astype(np.int64),
      truncated=(np.zeros(len(kept), np.bool_) if truncated is None
                 else truncated[kept]))


def _kept_ranges(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
  """(the tokens of ids[starts[i]:starts[i] + lengths[i]] for every i, end
  to end; lengths): `ids` itself when that is all of it, in order."""
  if int(lengths.sum()) == len(ids) and np.array_equal(
      starts, offsets_of(lengths)[:-1]):
    return ids, lengths
  return ids[ranges(starts, lengths)], lengths


def _place(out: np.ndarray, destinations: np.ndarray, pieces) -> np.ndarray:
  """Writes the pieces (tokens end to end, and each one's length) into
  `out`, piece i from position destinations[i]; gives the positions."""
  tokens, lengths = pieces
  positions = ranges(destinations, lengths)
  out[positions] = tokens
  return positions


def resolve_pad_id(tokenizer, pad_id: Optional[int] = None) -> int:
  """`pad_id` if given, else the tokenizer's pad id, else its eos id."""
  for candidate in (pad_id, getattr(tokenizer, 'pad_token_id', None),
                    getattr(tokenizer, 'eos_token_id', None)):
    if candidate is not None:
      return int(candidate)
  raise ValueError(
      'the tokenizer has neither a pad_token_id nor an eos_token_id; '
      'pass pad_id explicitly')


class PaddedRows(NamedTuple):
  """A batch's records padded, before the shift: row i is the spec's
  `seq = tokens + pad...` (`sequences`, int64) and `sup`, its supervised
  flags, False on padding (`supervised`, bool), each (rows, width + 1)."""
  sequences: np.ndarray
  supervised: np.ndarray
  prompt_lengths: np.ndarray
  output_lengths: np.ndarray

  def shifted(self) -> dict:
    """pad_shift_mask's arrays: `input_ids = seq[:-1]`, `labels =
    seq[1:]`, `response_mask = sup[1:]` as views of these rows (copy
    them to keep them apart)."""
    return {
        'input_ids': self.sequences[:, :-1],
        'labels': self.sequences[:, 1:],
        'response_mask': self.supervised[:, 1:],
        'prompt_lengths': self.prompt_lengths,
        'output_lengths': self.output_lengths,
    }


def pad_rows(chunk: TokenChunk, pad_id: int,
             width: Optional[int] = None) -> PaddedRows:
  """The records of a batch padded to `width + 1` tokens (see
  pad_shift_mask, which shifts them)."""
  lengths = chunk.lengths
  longest = int(lengths.max()) - 1
  if width is None:
    width = longest
  elif width < longest:
    raise ValueError(f'width {width} is shorter than the longest row {longest}')
  # One assignment for the whole batch: the mask selects, in row-major
  # order, columns 0..length-1 of each row, the order of the flat tokens.
  filled = np.arange(width + 1) < lengths[:, None]
  sequences = np.full(filled.shape, pad_id, dtype=np.int64)
  sequences[filled] = chunk.ids
  supervised = np.zeros(filled.shape, np.bool_)
  supervised[filled] = chunk.supervised
  return PaddedRows(sequences, supervised, chunk.prompt_lengths,
                    chunk.output_lengths)


def pad_shift_mask(chunk: TokenChunk, pad_id: int,
                   width: Optional[int] = None) -> dict:
  """Pads one batch of records and builds the shifted next-token arrays.

  Gives `input_ids` and `labels` (int64), `response_mask` (bool), each of
  shape `(rows, width)` and each its own contiguous array, plus
  `prompt_lengths` and `output_lengths` (int64, per row). `width` defaults
  to the longest record minus one (the spec's `max_len - 1`); a larger
  width pads further (bucket padding).

  Row i is `seq = tokens + pad...`, `sup` its supervised flags (False on
  padding); `input_ids = seq[:-1]`, `labels = seq[1:]`,
  `response_mask = sup[1:]`. For a prompt/output record that makes
  `response_mask[i, j]` True exactly for
  `prompt_len - 1 <= j < prompt_len + output_len - 1`.
  """
  return {name: np.ascontiguousarray(values) for name, values in
          pad_rows(chunk, pad_id, width).shifted().items()}


def _check_inputs(prompt_strs, output_strs):
  if len(prompt_strs) != len(output_strs):
    raise ValueError(f'prompt_strs has {len(prompt_strs)} items but '
                     f'output_strs has {len(output_strs)}')
  if not prompt_strs:
    raise ValueError('prompt_strs and output_strs are empty')
  for name, strs in (('prompt_strs', prompt_strs), ('output_strs', output_strs)):
    for index, text in enumerate(strs):
      if not isinstance(text, str):
        raise ValueError(f'{name}[{index}] is a {type(text).__name__}, '
                         'not a str')


def _to_tensors(arrays: dict, return_tensors: str) -> dict:
  if return_tensors == 'np':
    return arrays
  if return_tensors == 'pt':
    try:
      import torch  # optional: imported only when asked for
    except ImportError as error:
      raise ImportError('return_tensors="pt" needs PyTorch: '
                        'pip install torch') from error
    return {name: torch.from_numpy(array) for name, array in arrays.items()}
  if return_tensors == 'tf':
    import tensorflow as tf  # heavy: imported only when asked for
    return {name: tf.convert_to_tensor(array) for name, array in arrays.items()}
  raise ValueError(
      f'return_tensors must be "np", "pt" or "tf", not {return_tensors!r}')


# A notebook calls the function again and again with one tokenizer: its
# encoder (a fastokens load and a probe check, seconds) is built once.
_encoders = weakref.WeakKeyDictionary()


def _encoder(tokenizer, backend: str):
  try:
    by_backend = _encoders.setdefault(tokenizer, {})
  except TypeError:  # not weakly referenceable: build it each time
    return make_encoder(tokenizer, backend)
  if backend not in by_backend:
    by_backend[backend] = make_encoder(tokenizer, backend)
  return by_backend[backend]


def tokenize_prompt_and_output(prompt_strs,
                               output_strs,
                               tokenizer,
                               *,
                               return_tensors: str = 'np',
                               pad_id: Optional[int] = None,
                               add_special_tokens: Optional[bool] = None,
                               append_eos: bool = False,
                               special_tokens_in_text: str = 'special',
                               tokenizer_backend: str = 'auto') -> dict:
  """Tokenizes prompts and outputs separately and builds SFT arrays.

  Args:
    prompt_strs: list of prompt strings (each must yield at least one token).
    output_strs: list of output strings, same length.
    tokenizer: a HuggingFace tokenizer (or anything with the same call).
    return_tensors: "np", "pt" or "tf".
    pad_id: padding id; default the tokenizer's pad id, else its eos id.
    add_special_tokens: for prompts; None keeps the tokenizer's default.
      Outputs never get the tokenizer's special tokens.
    append_eos: append the tokenizer's eos id to every output.
    special_tokens_in_text: "special" (default, as the spec's
      `tokenizer(text)`): strings such as `<|im_end|>` in the texts map to
      their special ids; "text": they are tokenized as plain text.
    tokenizer_backend: "auto" (fastokens when it gives the tokenizer's own
      ids, checked), "fastokens" or "hf"; the pipeline's option of that name.

  Returns:
    dict with `input_ids`, `labels` (int64) and `response_mask` (bool), each
    of shape `(batch, max_len - 1)` and each its own array, `max_len` being
    the longest prompt+output in the batch, right-padded with the pad id.
  """
  _check_inputs(prompt_strs, output_strs)
  if special_tokens_in_text not in SPECIAL_TOKEN_MODES:
    raise ValueError(f'special_tokens_in_text must be "special" or "text", '
                     f'not {special_tokens_in_text!r}')
  pad_id = resolve_pad_id(tokenizer, pad_id)
  eos_id = None
  if append_eos:
    eos_id = getattr(tokenizer, 'eos_token_id', None)
    if eos_id is None:
      raise ValueError('append_eos=True but the tokenizer has no eos_token_id')
  encoded = encode_pairs(_encoder(tokenizer, tokenizer_backend),
                         list(prompt_strs), list(output_strs),
                         add_special_tokens=add_special_tokens,
                         special_tokens_in_text=special_tokens_in_text,
                         eos_id=eos_id)
  empty = np.flatnonzero(encoded.prompt_lengths == 0)
  if empty.size:
    raise ValueError(f'prompt_strs[{empty[0]}] has no tokens (empty prompt)')
  chunk = join_pairs(list(range(len(prompt_strs))), encoded)
  arrays = pad_shift_mask(chunk, pad_id)
  arrays = {name: arrays[name]
            for name in ('input_ids', 'labels', 'response_mask')}
  return _to_tensors(arrays, return_tensors)
