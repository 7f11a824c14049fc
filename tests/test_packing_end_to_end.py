"""The packed layout end to end: real tokenizer, real data, the CLI.

Every packed record, cut out of its row by its segment id, must equal the
spec's row for that record (the library function's, computed apart); every
record appears exactly once; the same input and options give byte-identical
shards; token-budget batches keep their budget.
"""

import hashlib
import json
import os

import numpy as np
import pytest

from conftest import run_sftbeam, shared_data
from sftbeam import tokenize_prompt_and_output
from sftbeam.pipeline.readers import iter_numpy_batches, load_dataset_info

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

PACK_LENGTH = 2048


def records_of(*paths, limit=None):
  """id -> (prompt, output) of the first `limit` records of each file."""
  records = {}
  for path in paths:
    with open(path, encoding='utf-8') as handle:
      for number, line in enumerate(handle):
        if limit is not None and number >= limit:
          break
        record = json.loads(line)
        records[f'{os.path.basename(path)}:{number}'] = (record['prompt'],
                                                         record['output'])
  return records


@pytest.fixture(scope='module')
def packed_input(tmp_path_factory):
  """gsm8k_train + alpaca_5000 (the first 3000 of each), with ids."""
  records = records_of(shared_data('gsm8k_train.jsonl'),
                       shared_data('alpaca_5000.jsonl'), limit=3000)
  path = tmp_path_factory.mktemp('packed') / 'input.jsonl'
  with open(path, 'w', encoding='utf-8') as handle:
    for example_id, (prompt, output) in records.items():
      handle.write(json.dumps({'id': example_id, 'prompt': prompt,
                               'output': output}) + '\n')
  return str(path), records


def run(input_path, output_dir, *flags):
  return run_sftbeam('run', '--config', 'configs/local.yaml', '--input',
                     input_path, '--output', str(output_dir), '--layout',
                     'packed', '--pack_length', str(PACK_LENGTH), *flags,
                     network=False, check=True)


@pytest.fixture(scope='module')
def packed_run(packed_input, tmp_path_factory):
  output_dir = tmp_path_factory.mktemp('packed-out')
  result = run(packed_input[0], output_dir)
  return str(output_dir), result.stdout


def test_every_packed_record_is_its_spec_row(packed_input, packed_run, qwen):
  _, records = packed_input
  output_dir, _ = packed_run
  seen = []
  for batch in iter_numpy_batches(output_dir):
    rows, width = batch['input_ids'].shape
    assert width == PACK_LENGTH
    ids = iter(batch['example_ids'])
    for row in range(rows):
      segments = batch['segment_ids'][row]
      assert int(segments.max()) == batch['examples_per_row'][row]
      for segment in range(1, batch['examples_per_row'][row] + 1):
        example_id = next(ids)
        cells = segments == segment
        prompt, output = records[example_id]
        spec = tokenize_prompt_and_output([prompt], [output], qwen)
        length = spec['input_ids'].shape[1]
        assert cells.sum() == length
        # One contiguous run, positions 0..L-1: no attention or loss
        # crosses into a neighbour.
        assert np.array_equal(batch['positions'][row][cells],
                              np.arange(length))
        for name in ('input_ids', 'labels', 'response_mask'):
          assert np.array_equal(batch[name][row][cells], spec[name][0]), (
              example_id, name)
        seen.append(example_id)
      padding = segments == 0
      assert not batch['response_mask'][row][padding].any()
      assert (batch['input_ids'][row][padding] == qwen.pad_token_id).all()
  # Every record exactly once, but the Alpaca records with an empty output
  # (rejected: empty_output).
  assert len(seen) == len(set(seen))
  rejected = {json.loads(line)['raw'] for name in load_dataset_info(
      output_dir)['rejected_files'] for line in open(
          os.path.join(output_dir, name), encoding='utf-8')}
  assert {json.loads(raw)['id'] for raw in rejected} | set(seen) == set(
      records)
  assert rejected and all('"output": ""' in raw for raw in rejected)


def test_packing_is_reported(packed_run):
  output_dir, stdout = packed_run
  info = load_dataset_info(output_dir)
  assert info['layout'] == 'packed'
  assert info['pack_length'] == PACK_LENGTH
  packing = info['counts']['packing']
  assert packing['packing_efficiency'] == info['counts']['padding_efficiency']
  assert packing['packing_efficiency'] > 0.95
  assert packing['examples_per_row_max'] >= packing['examples_per_row_mean']
  assert 'packing efficiency' in stdout
  assert set(info['features']) >= {'segment_ids', 'positions',
                                   'examples_per_row'}


def _shard_digests(output_dir):
  return {name: hashlib.sha256(open(os.path.join(output_dir, name),
                                    'rb').read()).hexdigest()
          for name in sorted(os.listdir(output_dir))
          if name.startswith('batches-')}


def test_same_input_and_options_give_byte_identical_shards(
    packed_input, packed_run, tmp_path):
  run(packed_input[0], tmp_path)
  assert _shard_digests(str(tmp_path)) == _shard_digests(packed_run[0])


def test_token_budget_batches_keep_their_budget(packed_input, tmp_path):
  run_sftbeam('run', '--config', 'configs/local.yaml', '--input',
              packed_input[0], '--output', str(tmp_path), '--batch_tokens',
              '4096', network=False, check=True)
  batches = 0
  for batch in iter_numpy_batches(str(tmp_path)):
    rows, width = batch['input_ids'].shape
    assert rows * width <= 4096 or rows == 1
    batches += 1
  info = load_dataset_info(str(tmp_path))
  # Full batches of a bucket hold max(1, 4096 // boundary) rows.
  for boundary, bucket in info['counts']['buckets'].items():
    rows = max(1, 4096 // int(boundary))
    assert bucket['batches'] == -(-bucket['records'] // rows)
  assert info['counts']['batches_written'] == batches

