"""What several contenders share: batch sizes, reading the input, and
loading the tokenizers as each contender loads them.

sftbeam is imported only inside `hf_tokenizer`: it brings Apache Beam
(seconds of imports), which the raw-fast and loop-fast processes must not pay.
"""

import json
import os

RAW_BATCH = 1000
SPEC_BATCH = 32


def read_jsonl(path):
  with open(path, encoding='utf-8') as handle:
    return [json.loads(line) for line in handle if line.strip()]


def hf_tokenizer(tokenizer_dir):
  """The HuggingFace tokenizer in `tokenizer_dir`, as sftbeam loads it."""
  from sftbeam.transforms.tokenizer_source import load_tokenizer
  return load_tokenizer(tokenizer_dir)


def pad_id_of(tokenizer) -> int:
  """The tokenizer's pad id, else its eos id (as sftbeam pads)."""
  pad_id = tokenizer.pad_token_id
  return tokenizer.eos_token_id if pad_id is None else pad_id


def fastokens_tokenizer(tokenizer_dir):
  """fastokens' tokenizer from `tokenizer_dir`/tokenizer.json."""
  import fastokens  # only in the workers that use it
  return fastokens.Tokenizer.from_file(
      os.path.join(tokenizer_dir, 'tokenizer.json'))
