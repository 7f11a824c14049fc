"""Runs benchmarks/run_benchmark.py once at a tiny size, so it cannot rot.

Checks the JSON it writes has the expected rows and values that agree with
each other, that each sftbeam contender ran as it is named and that
loop-fast writes the loop's batches; and loop-fast's byte building on edge
cases. No timing is asserted (this machine is shared).
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, shared_data
from sftbeam.pipeline.options import OPTIONS_BY_NAME
from sftbeam.transforms.example_codec import decode_example
from sftbeam.transforms.tfrecord import iter_records

# The harness and its contenders import each other as benchmarks/ does when
# run as a script.
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
# pylint: disable=wrong-import-position,wrong-import-order
import measure
import run_benchmark
from contenders import hf_datasets, loop, loop_fast
# pylint: enable=wrong-import-position,wrong-import-order

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, 'benchmarks', 'run_benchmark.py')
RECORDS = 300  # all from gsm8k_train: none is rejected
CONTENDERS = ['raw', 'raw-fast', 'sftbeam', 'sftbeam-hf', 'sftbeam-packed',
              'sftbeam-chat', 'loop', 'loop-fast']
# Every contender but the chat one reads the prompt/output records.
PROMPT_OUTPUT = [name for name in CONTENDERS if name != 'sftbeam-chat']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """The benchmark's workdir after one run of every contender but
  datasets, outputs kept; its stdout is in stdout.txt beside it."""
  shared_data('gsm8k_train.jsonl')
  shared_data('gsm8k_chat.jsonl')
  work = tmp_path_factory.mktemp('bench')
  # No network: the whole benchmark runs in a namespace with only loopback.
  result = subprocess.run(
      ['unshare', '-n', '--', sys.executable, SCRIPT, '--records',
       str(RECORDS), '--contenders', ','.join(CONTENDERS), '--workdir',
       str(work / 'workdir'), '--json', str(work / 'results.json'),
       '--keep-outputs'],
      capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  (work / 'stdout.txt').write_text(result.stdout, encoding='utf-8')
  return work


@pytest.fixture(scope='module')
def report(workdir):
  with open(workdir / 'results.json', encoding='utf-8') as handle:
    return json.load(handle)


def rows(report):
  return {row['contender']: row for row in report['contenders']}


def dataset_info(workdir, name):
  with open(workdir / 'workdir' / f'out-{name}' / 'dataset_info.json',
            encoding='utf-8') as handle:
    return json.load(handle)


def test_table_and_ratios_are_printed(workdir):
  stdout = (workdir / 'stdout.txt').read_text(encoding='utf-8')
  for name in CONTENDERS:
    assert f'| {name} | 300 |' in stdout
  assert 'ratios of records/s:' in stdout
  assert 'sftbeam / loop-fast' in stdout


def test_every_contender_ran_on_the_same_records(report, workdir):
  by_name = rows(report)
  assert list(by_name) == CONTENDERS
  for row in by_name.values():
    assert row['status'] == 'ok'
    assert row['records'] == RECORDS
    assert row['records_per_s'] > 0 and row['tokens_per_s'] > 0
    assert 0 < row['timed_s'] <= row['process_s']
    assert row['peak_rss_mb'] > 50  # a Python process with a tokenizer
  for name in CONTENDERS:
    if name not in ('raw', 'raw-fast'):
      assert by_name[name]['records_written'] == RECORDS
      assert by_name[name]['output_mb'] * (1 << 20) == measure.dir_bytes(
          str(workdir / 'workdir' / f'out-{name}'))
      assert by_name[name]['output_mb'] > 0
  # Same tokenizer, same records: the same real tokens everywhere.
  assert len({by_name[name]['real_tokens'] for name in PROMPT_OUTPUT}) == 1
  # A conversation holds more than one prompt/output pair's tokens.
  assert by_name['sftbeam-chat']['real_tokens'] > by_name['raw'][
      'real_tokens']


def test_ratios_are_to_the_raw_tokenizer(report):
  by_name = rows(report)
  assert by_name['raw']['ratio_to_raw'] == 1.0
  assert by_name['raw']['padding_efficiency'] is None
  assert by_name['raw-fast']['padding_efficiency'] is None
  for name in PROMPT_OUTPUT:
    assert by_name[name]['ratio_to_raw'] == pytest.approx(
        by_name[name]['records_per_s'] / by_name['raw']['records_per_s'])
  assert by_name['sftbeam-chat']['ratio_to_raw'] is None  # other input


def test_ratios_block_divides_records_per_second(report):
  by_name = rows(report)
  # datasets did not run: its pair is left out.
  assert [pair['ratio'] for pair in report['ratios']] == [
      'sftbeam / sftbeam-hf', 'sftbeam / loop-fast', 'sftbeam-packed / sftbeam']
  for pair in report['ratios']:
    top, bottom = (by_name[name] for name in pair['ratio'].split(' / '))
    assert pair['timed'] == pytest.approx(
        top['records_per_s'] / bottom['records_per_s'])
    assert pair['process'] == pytest.approx(
        top['records_per_s_process'] / bottom['records_per_s_process'])


def test_padding_schemes_match_what_the_contenders_stored(report):
  by_name = rows(report)
  schemes = {scheme['scheme']: scheme['efficiency']
             for scheme in report['padding']}
  assert all(0 < efficiency <= 1 for efficiency in schemes.values())
  # The loops pad consecutive batches of 32 to their own maximum.
  for name in ('loop', 'loop-fast'):
    assert by_name[name]['padding_efficiency'] == pytest.approx(
        schemes['batch_max_input_order'])
  if OPTIONS_BY_NAME['pad_to'].default == 'bucket':
    for name in ('sftbeam', 'sftbeam-hf'):
      assert by_name[name]['padding_efficiency'] == pytest.approx(
          schemes['default_buckets_pad_to_bucket'])
  assert schemes['global_max'] < schemes['default_buckets_pad_to_bucket']


def test_sftbeam_contenders_ran_as_named(workdir, report):
  assert dataset_info(workdir, 'sftbeam')['tokenizer']['backend'] == (
      'fastokens')
  assert dataset_info(workdir, 'sftbeam-hf')['tokenizer']['backend'] == 'hf'
  packed = dataset_info(workdir, 'sftbeam-packed')
  assert (packed['layout'], packed['pack_length']) == ('packed', 2048)
  # Its efficiency column is the packing efficiency.
  assert rows(report)['sftbeam-packed']['padding_efficiency'] == (
      pytest.approx(packed['counts']['packing']['packing_efficiency']))
  chat = dataset_info(workdir, 'sftbeam-chat')['counts']
  assert chat['chat_records'] == RECORDS


def test_loop_fast_writes_the_loops_batches(workdir):
  out = workdir / 'workdir'
  loop, fast = ([decode_example(record) for record in iter_records(
      str(out / f'out-{name}' / 'batches.tfrecord'))]
                for name in ('loop', 'loop-fast'))
  assert len(loop) == len(fast) == -(-RECORDS // 32)
  for expected, got in zip(loop, fast):
    assert sorted(got) == sorted(expected)
    for name, values in expected.items():
      if name == 'example_ids':
        assert got[name] == values
      else:
        np.testing.assert_array_equal(got[name], values, err_msg=name)


class IdsInText:
  """A fastokens stand-in: a text is its token ids, space-separated."""

  @staticmethod
  def encode_batch_flat(texts, add_special_tokens):
    del add_special_tokens
    ids = [[int(token) for token in text.split()] for text in texts]
    offsets = np.cumsum([0] + [len(row) for row in ids])
    return (np.array(sum(ids, []), '<u4').tobytes(),
            offsets.astype('<u8').tobytes())


def test_loop_fast_examples_equal_the_spec_on_edge_cases():
  pad_id = 151643  # a 3-byte varint, as Qwen's
  cases = [([], []), ([7], []), ([], [8, 9]), ([1, 2, 3], [127, 128]),
           ([16383, 16384], [2 ** 21 - 1, 2 ** 21, 2 ** 28 - 1])]
  # A full batch, then a batch holding only empty records, then a partial one.
  records = [cases[index % len(cases)] for index in range(32)]
  records += [([], [])] * 32 + cases[1:]
  lines = [json.dumps({'id': f'r-{index}-é', 'prompt': ' '.join(map(
      str, prompt)), 'output': ' '.join(map(str, output))}).encode('utf-8')
           for index, (prompt, output) in enumerate(records)]
  chunk = loop_fast.read_fast_chunk(lines, IdsInText(), json.loads)
  examples = list(loop_fast.fast_examples(chunk, pad_id))
  assert [rows for _, rows, _ in examples] == [32, 32, len(cases) - 1]
  for batch, (example, rows, width) in enumerate(examples):
    batch_records = records[batch * 32:batch * 32 + rows]
    expected = loop.spec_arrays([prompt for prompt, _ in batch_records],
                                [output for _, output in batch_records],
                                pad_id)
    got = decode_example(example)
    assert width == expected['input_ids'].shape[1]
    np.testing.assert_array_equal(got.pop('shape'), [rows, width])
    assert got.pop('example_ids') == [
        f'r-{batch * 32 + row}-é'.encode('utf-8') for row in range(rows)]
    assert sorted(got) == sorted(expected)
    for name, values in expected.items():
      np.testing.assert_array_equal(got[name], values.ravel(), err_msg=name)


def test_varints_are_protobufs_and_refuse_other_values():
  values = [0, 1, 127, 128, 300, 16383, 16384, 2 ** 21, 2 ** 28 - 1]
  data, counts = loop_fast.varints(np.array(values))
  expected = [loop_fast._varint(value) for value in values]
  assert data == b''.join(expected)
  assert counts.tolist() == [len(value) for value in expected]
  assert loop_fast._varint(300) == b'\xac\x02'  # protobuf's own example
  for value in (-1, 2 ** 28):
    with pytest.raises(ValueError, match=r'ints in \[0, 2\*\*28\)'):
      loop_fast.varints(np.array([5, value]))


def test_chat_input_cycles_the_conversations_with_unique_ids(tmp_path):
  with open(shared_data('gsm8k_chat.jsonl'), encoding='utf-8') as handle:
    sources = [json.loads(line)['messages'] for line in handle]
  count = len(sources) + 2
  with open(run_benchmark.build_chat_input(str(tmp_path), count),
            encoding='utf-8') as handle:
    records = [json.loads(line) for line in handle]
  assert [record['id'] for record in records] == [
      f'bench-chat-{index}' for index in range(count)]
  assert [record['messages'] for record in records] == sources + sources[:2]


def test_datasets_contender_is_skipped_without_the_extra(monkeypatch,
                                                         tmp_path):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, 'find_spec',
      lambda name: None if name == 'datasets' else find_spec(name))
  row = hf_datasets.run(str(tmp_path / 'input.jsonl'), str(tmp_path))
  assert row['status'].startswith('skipped: `datasets` is not installed')
  assert "'.[benchmark]'" in run_benchmark.format_table([row])
