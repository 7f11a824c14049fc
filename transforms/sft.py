"""The spec's function: tokenize prompt and output apart, pad, shift, mask.

This module is the single home of the SFT arithmetic (see
`../shared/spec/`). The pipeline's padding DoFn and the public
`tokenize_prompt_and_output` both call `pad_shift_mask`, and both tokenize
through `encode_texts`, so the library and the pipeline cannot disagree.
"""

import itertools
from typing import Optional, Sequence

import numpy as np


def rust_backend(tokenizer):
  """The Rust tokenizer behind a HuggingFace fast tokenizer, else None.

  Its encode calls never change the tokenizer's settings, so threads may
  share it; a Python tokenizer's calls may.
  """
  return getattr(tokenizer, 'backend_tokenizer', None)


def encode_texts(tokenizer, texts: Sequence[str], add_special_tokens: bool):
  """Token ids of each text, in one batched tokenizer call.

  HuggingFace fast tokenizers go straight to their Rust backend
  (`encode_batch_fast` skips offset bookkeeping we never use); anything else
  that behaves like a HuggingFace tokenizer is called the usual way.
  """
  backend = rust_backend(tokenizer)
  if backend is not None:
    encodings = backend.encode_batch_fast(
        list(texts), add_special_tokens=add_special_tokens)
    return [encoding.ids for encoding in encodings]
  return list(
      tokenizer(list(texts), add_special_tokens=add_special_tokens)['input_ids'])


def encode_prompts(tokenizer, prompts, add_special_tokens: Optional[bool]):
  """Prompt ids; `add_special_tokens=None` means the tokenizer's default."""
  if add_special_tokens is None:
    add_special_tokens = True  # HuggingFace's own default for __call__
  return encode_texts(tokenizer, prompts, add_special_tokens)


def encode_outputs(tokenizer, outputs, eos_id: Optional[int]):
  """Output ids: never the tokenizer's specials; `eos_id` appended if given."""
  ids = encode_texts(tokenizer, outputs, add_special_tokens=False)
  if eos_id is not None:
    ids = [list(row) + [eos_id] for row in ids]
  return ids


def resolve_pad_id(tokenizer, pad_id: Optional[int] = None) -> int:
  """`pad_id` if given, else the tokenizer's pad id, else its eos id."""
  for candidate in (pad_id, getattr(tokenizer, 'pad_token_id', None),
                    getattr(tokenizer, 'eos_token_id', None)):
    if candidate is not None:
      return int(candidate)
  raise ValueError(
      'the tokenizer has neither a pad_token_id nor an eos_token_id; '
      'pass pad_id explicitly')


def pad_shift_mask(prompt_ids: Sequence[Sequence[int]],
                   output_ids: Sequence[Sequence[int]],
                   pad_id: int,
                   width: Optional[int] = None) -> dict:
  """Pads one batch and builds the shifted next-token arrays.

  Takes per-row prompt and output token ids (each prompt non-empty). Gives
  `input_ids` and `labels` (int64) and `response_mask` (bool), each of shape
  `(rows, width)`. `width` defaults to the longest prompt+output minus one
  (the spec's `max_len - 1`); a larger width pads further (bucket padding).

  Row i is `seq = prompt + output + pad...`; `input_ids = seq[:-1]`,
  `labels = seq[1:]`, and `response_mask[i, j]` is True exactly for
  `prompt_len - 1 <= j < prompt_len + output_len - 1`.
  """
  prompt_lengths = np.fromiter(map(len, prompt_ids), np.int64, len(prompt_ids))
  output_lengths = np.fromiter(map(len, output_ids), np.int64, len(output_ids))
  total_lengths = prompt_lengths + output_lengths
  longest = int(total_lengths.max()) - 1
  if width is None:
    width = longest
  elif width < longest:
    raise ValueError(f'width {width} is shorter than the longest row {longest}')

  sequences = np.full((len(total_lengths), width + 1), pad_id, dtype=np.int64)
  # One assignment for the whole batch: the mask selects, in row-major
  # order, columns 0..total-1 of each row, the order of the joined tokens.
  tokens = np.fromiter(
      itertools.chain.from_iterable(
          itertools.chain.from_iterable(zip(prompt_ids, output_ids))),
      np.int64, int(total_lengths.sum()))
  sequences[np.arange(width + 1) < total_lengths[:, None]] = tokens

  columns = np.arange(width)
  response_mask = ((columns >= (prompt_lengths - 1)[:, None]) &
                   (columns < (total_lengths - 1)[:, None]))
  return {
      'input_ids': sequences[:, :-1],
      'labels': sequences[:, 1:],
      'response_mask': response_mask,
      'prompt_lengths': prompt_lengths,
      'output_lengths': output_lengths,
  }


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


def tokenize_prompt_and_output(prompt_strs,
                               output_strs,
                               tokenizer,
                               *,
                               return_tensors: str = 'np',
                               pad_id: Optional[int] = None,
                               add_special_tokens: Optional[bool] = None,
                               append_eos: bool = False) -> dict:
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

  Returns:
    dict with `input_ids`, `labels` (int64) and `response_mask` (bool), each
    of shape `(batch, max_len - 1)`, `max_len` being the longest
    prompt+output in the batch, right-padded with the pad id.
  """
  _check_inputs(prompt_strs, output_strs)
  pad_id = resolve_pad_id(tokenizer, pad_id)
  eos_id = None
  if append_eos:
    eos_id = getattr(tokenizer, 'eos_token_id', None)
    if eos_id is None:
      raise ValueError('append_eos=True but the tokenizer has no eos_token_id')
  prompt_ids = encode_prompts(tokenizer, prompt_strs, add_special_tokens)
  output_ids = encode_outputs(tokenizer, output_strs, eos_id)
  for index, ids in enumerate(prompt_ids):
    if not len(ids):
      raise ValueError(f'prompt_strs[{index}] has no tokens (empty prompt)')
  arrays = pad_shift_mask(prompt_ids, output_ids, pad_id)
  arrays = {name: arrays[name]
            for name in ('input_ids', 'labels', 'response_mask')}
  return _to_tensors(arrays, return_tensors)
