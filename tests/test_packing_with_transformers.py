"""Training a HuggingFace model on packed batches, as docs/packing.md says,
checked on a tiny random Qwen3 built from a config (no download) on CPU:
the guide's functions give every example the logits it has alone, and the
two traps it warns of are real. Prints the numbers the guide quotes:

  .venv/bin/python tests/test_packing_with_transformers.py
"""

import numpy as np
import pytest
import torch
import transformers

import doc_blocks
from token_chunks import pairs_chunk
from sftbeam.pipeline.readers import numpy_batch
from sftbeam.transforms import example_codec, pack

VOCABULARY = 64
PACK_LENGTH = 24
PAD_ID = 0
# Logits of one example computed packed or alone differ by float rounding.
SAME = 1e-4


def packing_guide() -> dict:
  """The names docs/packing.md's python blocks without stand-ins define
  (to_torch, masked_loss, same_example_causal_mask, train_step, ...)."""
  guide = {}
  for block in doc_blocks.blocks('docs/packing.md'):
    if block.language == 'python' and not (block.not_run or block.stand_ins):
      exec(block.code, guide)
  return guide


def tiny_model(attn_implementation: str):
  """A random 2-layer Qwen3 (the same weights for every implementation),
  in training mode as in a training loop."""
  torch.manual_seed(0)
  config = transformers.Qwen3Config(
      vocab_size=VOCABULARY, hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
      head_dim=8,
      attn_implementation=attn_implementation)
  return transformers.Qwen3ForCausalLM(config).train()


def packed_batch() -> dict:
  """Six examples of random tokens packed into rows of PACK_LENGTH, as the
  readers give the batch (with cu_seqlens and max_seqlen)."""
  generator = np.random.default_rng(0)
  prompts = [generator.integers(1, VOCABULARY, size) for size in
             (4, 3, 6, 2, 5, 3)]
  outputs = [generator.integers(1, VOCABULARY, size) for size in
             (6, 3, 7, 2, 6, 5)]
  chunk = pairs_chunk(prompts, outputs)
  rows = pack.best_fit_decreasing(chunk.lengths - 1, PACK_LENGTH)
  arrays = pack.packed_arrays(chunk, rows, PACK_LENGTH, PAD_ID)
  batch = numpy_batch(example_codec.serialize_batch(
      arrays, arrays['example_ids'], 'packed'))
  assert batch['examples_per_row'].max() > 1  # examples share rows
  return batch


def logits_alone(model, batch: dict) -> torch.Tensor:
  """[B, L, vocabulary]: each example's logits computed on it alone, in its
  cells; zeros on padding."""
  input_ids = torch.from_numpy(batch['input_ids'])
  segment_ids = torch.from_numpy(batch['segment_ids'])
  logits = torch.zeros(*input_ids.shape, VOCABULARY)
  for row in range(len(input_ids)):
    for segment in range(1, int(segment_ids[row].max()) + 1):
      cells = segment_ids[row] == segment
      logits[row, cells] = model(
          input_ids=input_ids[row, cells][None]).logits[0]
  return logits


def real(batch: dict) -> torch.Tensor:
  """bool [B, L]: the cells examples fill (not padding)."""
  return torch.from_numpy(batch['segment_ids'] > 0)


def largest_difference(logits, alone, batch) -> float:
  """The largest |difference| of two logits arrays over real cells."""
  return float((logits - alone)[real(batch)].abs().max())


def loss(guide: dict, logits: torch.Tensor, batch: dict) -> float:
  """The guide's masked loss of `logits` on the batch's labels."""
  tensors = guide['to_torch'](batch, 'cpu')
  return float(guide['masked_loss'](logits, tensors['labels'],
                                    tensors['response_mask']))


def boolean_mask_logits(guide, model, batch) -> torch.Tensor:
  """The model's logits with the guide's same-example boolean 4D mask."""
  tensors = guide['to_torch'](batch, 'cpu')
  return model(input_ids=tensors['input_ids'],
               position_ids=tensors['positions'],
               attention_mask=guide['same_example_causal_mask'](
                   tensors['segment_ids'])).logits


def position_ids_logits(model, batch, **options) -> torch.Tensor:
  """The model's logits given position_ids and no attention mask."""
  return model(input_ids=torch.from_numpy(batch['input_ids']),
               position_ids=torch.from_numpy(batch['positions']),
               **options).logits


@torch.no_grad()
def measurements() -> dict:
  """{'IMPLEMENTATION, case': (largest logit difference from the examples
  alone, loss)}; the case 'alone' is the examples alone."""
  guide, batch = packing_guide(), packed_batch()
  found = {}
  for implementation in ('sdpa', 'eager'):
    model = tiny_model(implementation)
    alone = logits_alone(model, batch)
    found[f'{implementation}, alone'] = (0.0, loss(guide, alone, batch))
    tensors = guide['to_torch'](batch, 'cpu')
    mask = guide['same_example_causal_mask'](tensors['segment_ids'])
    cases = {
        'boolean mask': boolean_mask_logits(guide, model, batch),
        'additive mask': model(
            input_ids=tensors['input_ids'], position_ids=tensors['positions'],
            attention_mask=guide['additive_mask'](mask)).logits,
        'position_ids, use_cache default': position_ids_logits(model, batch),
        'position_ids, use_cache=False': position_ids_logits(
            model, batch, use_cache=False),
    }
    for case, logits in cases.items():
      found[f'{implementation}, {case}'] = (
          largest_difference(logits, alone, batch), loss(guide, logits, batch))
  return found


@pytest.fixture(scope='module')
def measured():
  return measurements()


def test_the_guides_train_step_takes_a_readers_batch():
  """train_step (to_torch and all) on a batch with cu_seqlens and the int
  max_seqlen, as iter_numpy_batches gives it: a finite loss, the weights
  moved."""
  guide, batch = packing_guide(), packed_batch()
  model = tiny_model('sdpa')
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
  before = model.lm_head.weight.detach().clone()
  assert np.isfinite(guide['train_step'](model, optimizer, batch,
                                         device='cpu'))
  assert not torch.equal(before, model.lm_head.weight)


def test_the_guides_boolean_mask_with_sdpa_is_each_example_alone(measured):
  largest, packed_loss = measured['sdpa, boolean mask']
  assert largest < SAME
  assert packed_loss == pytest.approx(measured['sdpa, alone'][1], rel=1e-6)


def test_a_boolean_mask_with_eager_attention_is_wrong_silently(measured):
  """Eager attention adds the mask to the scores: True adds 1, False 0, so
  examples see each other; the additive mask is right."""
  largest, wrong_loss = measured['eager, boolean mask']
  assert largest > 100 * SAME
  assert wrong_loss != pytest.approx(measured['eager, alone'][1], rel=1e-3)
  assert measured['eager, additive mask'][0] < SAME


@pytest.mark.parametrize('implementation', ['sdpa', 'eager'])
def test_position_ids_without_a_mask_need_use_cache_false(measured,
                                                          implementation):
  """Transformers separates examples by where position_ids restart only
  without a cache; with the default use_cache a training forward makes
  one and attends across examples."""
  assert measured[f'{implementation}, position_ids, use_cache default'][
      0] > 100 * SAME
  assert measured[f'{implementation}, position_ids, use_cache=False'][
      0] < SAME


if __name__ == '__main__':
  print(f'transformers {transformers.__version__}, torch {torch.__version__}')
  for case, (largest, value) in measurements().items():
    print(f'{case:40} largest logit difference {largest:.2g}, loss '
          f'{value:.6f}')
