"""End to end through the CLI, offline, with the real embedded tokenizer.

Each run happens in a network namespace holding only loopback, so any
network access fails it. Every row read back with tf.data is checked
against a straightforward implementation of the spec written here.
"""

import collections
import hashlib
import json
import os
import re

import numpy as np
import pytest

from conftest import SAMPLE, run_sftbeam, shared_data
from sftbeam.pipeline.options import DEFAULT_BOUNDARIES
from sftbeam.pipeline.readers import iter_numpy_batches, load_dataset_info
from sftbeam import tokenize_prompt_and_output
from sftbeam.transforms.filenames import MANIFEST
from sftbeam.transforms.tokenizer_source import embedded_tokenizer_dir

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

SAMPLE_REJECTIONS = {'invalid_json': 1, 'missing_field': 1,
                     'field_not_string': 1, 'empty_prompt': 1,
                     'not_an_object': 1, 'too_long': 1}


def load_records(path):
  """id -> (prompt, output) of every usable line, ids as documented."""
  records = {}
  with open(path, encoding='utf-8') as handle:
    for line in handle:
      try:
        obj = json.loads(line)
        prompt, output = obj['prompt'], obj['output']
      except (ValueError, KeyError, TypeError):
        continue
      if not isinstance(prompt, str) or not isinstance(output, str):
        continue
      example_id = obj.get('id') or hashlib.sha256(json.dumps(
          [prompt, output], ensure_ascii=False).encode()).hexdigest()[:16]
      records[str(example_id)] = (prompt, output)
  return records


def reference_batch(pairs, tokenizer, width):
  """The spec, row by row: tokenize apart, concatenate, pad, shift, mask."""
  input_ids, labels, mask = [], [], []
  for prompt, output in pairs:
    prompt_ids = tokenizer(prompt)['input_ids']
    output_ids = tokenizer(output, add_special_tokens=False)['input_ids']
    sequence = prompt_ids + output_ids
    sequence += [tokenizer.pad_token_id] * (width + 1 - len(sequence))
    input_ids.append(sequence[:-1])
    labels.append(sequence[1:])
    mask.append([len(prompt_ids) - 1 <= j < len(prompt_ids) +
                 len(output_ids) - 1 for j in range(width)])
  return np.array(input_ids), np.array(labels), np.array(mask)


def smallest_boundary(length):
  return next(b for b in DEFAULT_BOUNDARIES if b >= length)


def run(input_path, output_dir, pad_to, *flags):
  result = run_sftbeam('run', '--config', 'configs/local.yaml', '--input',
                       input_path, '--output', str(output_dir), '--pad_to',
                       pad_to, *flags, network=False, check=True)
  return result.stdout


def check_output(output_dir, records, tokenizer, pad_to):
  """Checks every row; gives {bucket width: rows} seen in the batches."""
  rows_per_width = collections.Counter()
  seen = set()
  real_tokens = stored_tokens = 0
  for batch in iter_numpy_batches(str(output_dir)):
    ids = batch['example_ids']
    rows, width = batch['input_ids'].shape
    lengths = batch['prompt_lengths'] + batch['output_lengths'] - 1
    if pad_to == 'longest':
      assert width == lengths.max()
    else:
      assert all(smallest_boundary(length) == width for length in lengths)
    expected = reference_batch([records[i] for i in ids], tokenizer, width)
    np.testing.assert_array_equal(batch['input_ids'], expected[0])
    np.testing.assert_array_equal(batch['labels'], expected[1])
    np.testing.assert_array_equal(batch['response_mask'], expected[2])
    assert batch['response_mask'].sum(axis=1).tolist() == (
        batch['output_lengths'].tolist())
    seen.update(ids)
    rows_per_width[width] += rows
    real_tokens += int(lengths.sum())
    stored_tokens += rows * width
  return seen, rows_per_width, real_tokens, stored_tokens


@pytest.mark.parametrize('pad_to, flags', [
    ('bucket', ()), ('longest', ()),
    # The distributed graph (Reshuffle + GroupIntoBatches), run locally.
    ('bucket', ('--batching', 'global'))])
def test_sample_end_to_end(tmp_path, qwen, pad_to, flags):
  stdout = run(SAMPLE, tmp_path, pad_to, *flags)
  info = load_dataset_info(str(tmp_path))
  counts = info['counts']
  assert counts['lines'] == 307
  assert counts['blank_lines'] == 1
  assert counts['rejected_by_reason'] == SAMPLE_REJECTIONS
  assert counts['records_written'] == 300
  assert counts['reconciled'] and re.search(r'reconciled +yes', stdout)
  assert 'chat records' not in stdout  # prompt/output records only
  records = load_records(SAMPLE)
  seen, rows_per_width, real, stored = check_output(tmp_path, records, qwen,
                                                    pad_to)
  assert len(seen) == 300
  if pad_to == 'bucket':
    assert {int(b): c['records'] for b, c in counts['buckets'].items()} == (
        dict(rows_per_width))
    for boundary, bucket in counts['buckets'].items():  # the summary's lines
      batches, records = bucket['batches'], bucket['records']
      said = (f'{batches} {"batch" if batches == 1 else "batches"}, '
              f'{records} {"record" if records == 1 else "records"}\n')
      assert re.search(rf'bucket <= {boundary} +{said}', stdout)
  assert counts['padding_efficiency'] == pytest.approx(real / stored)
  rejected = [json.loads(line) for name in info['rejected_files']
              for line in open(tmp_path / name, encoding='utf-8')]
  assert collections.Counter(r['reason'] for r in rejected) == (
      SAMPLE_REJECTIONS)
  assert all(r['source'].endswith('sample.jsonl') and r['line_number']
             for r in rejected)


@pytest.mark.parametrize('pad_to', ['bucket', 'longest'])
def test_gsm8k_test_every_row_matches_reference(tmp_path, qwen, pad_to):
  path = shared_data('gsm8k_test.jsonl')
  run(path, tmp_path, pad_to)
  info = load_dataset_info(str(tmp_path))
  records = load_records(path)
  seen, _, _, _ = check_output(tmp_path, records, qwen, pad_to)
  assert seen == set(records)
  counts = info['counts']
  assert counts['records_in'] == 1319 == counts['records_written']
  assert counts['records_rejected'] == 0 and counts['reconciled']
  if pad_to == 'longest':
    check_library_function_agrees(tmp_path, records, qwen)


def check_library_function_agrees(output_dir, records, tokenizer):
  """The public function on each batch's records gives the written rows."""
  for batch in iter_numpy_batches(str(output_dir)):
    prompts, outputs = zip(*(records[i] for i in batch['example_ids']))
    expected = tokenize_prompt_and_output(list(prompts), list(outputs),
                                          tokenizer)
    for name in ('input_ids', 'labels', 'response_mask'):
      np.testing.assert_array_equal(batch[name], expected[name])


def test_dataset_info_describes_the_run(tmp_path):
  run(SAMPLE, tmp_path, 'bucket')
  info = load_dataset_info(str(tmp_path))
  with open(os.path.join(embedded_tokenizer_dir(), 'tokenizer.json'),
            'rb') as handle:
    sha256 = hashlib.sha256(handle.read()).hexdigest()
  assert info['tokenizer']['tokenizer_json_sha256'] == sha256
  assert info['tokenizer']['pad_token_id'] == 151643
  assert info['tokenizer']['vocab_size'] == 151669
  assert info['config']['batch_size'] == 32
  assert info['config']['pad_to'] == 'bucket'
  assert info['bucket_boundaries'] == list(DEFAULT_BOUNDARIES)
  assert set(info['features']) == {'input_ids', 'labels', 'response_mask',
                                   'shape', 'prompt_lengths',
                                   'output_lengths', 'example_ids'}
  written = ([shard['name'] for shard in info['shards']] +
             info['rejected_files'] + ['dataset_info.json'])
  # The run's record names exactly the files it wrote (--overwrite deletes
  # those and nothing else).
  assert sorted(os.listdir(tmp_path)) == sorted(written + [MANIFEST])
  with open(os.path.join(tmp_path, MANIFEST), encoding='utf-8') as handle:
    assert json.load(handle)['files'] == sorted(written)
