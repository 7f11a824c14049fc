"""Stand-ins for what a doc's python block takes from its reader: a model,
an optimizer, a batch... A block declares the ones it uses on the line
before its fence (`<!-- stand-ins: model, optimizer -->`); each is the
function of that name here, called in the directory the block runs in
(tests/test_doc_snippets.py makes it: `out/packed` is a small packed run).
"""

import functools

import torch
import transformers

from sftbeam.readers import iter_numpy_batches

# Qwen's vocabulary size: the ids in a run made with the embedded tokenizer
# are below it.
QWEN_VOCABULARY = 151936


@functools.cache
def model():
  """A tiny random Qwen3 causal LM (built from a config: no download) over
  Qwen's vocabulary, SDPA attention (flash_attention_2 needs a GPU)."""
  torch.manual_seed(0)
  config = transformers.Qwen3Config(
      vocab_size=QWEN_VOCABULARY, tie_word_embeddings=True, hidden_size=16,
      intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
      num_key_value_heads=1, head_dim=8, attn_implementation='sdpa')
  return transformers.Qwen3ForCausalLM(config)


def optimizer():
  """Plain SGD over the stand-in model's parameters."""
  return torch.optim.SGD(model().parameters(), lr=0.01)


def device():
  return 'cpu'


def rank():
  """This process's rank: one process."""
  return 0


def world_size():
  return 1


@functools.cache
def batch():
  """The first batch of `out/packed`, as iter_numpy_batches gives it."""
  return next(iter_numpy_batches('out/packed'))


def _attention_input():
  """Random queries, keys or values for `batch()`: [B, heads, L, head_dim]."""
  rows, length = batch()['input_ids'].shape
  return torch.randn(rows, 2, length, 8)


q = k = v = _attention_input
