"""Runs benchmarks/run_benchmark.py once at a tiny size, so it cannot rot.

Checks the JSON it writes has the expected rows and values that agree with
each other; no timing is asserted (this machine is shared).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, shared_data
from sftbeam.pipeline.options import OPTIONS_BY_NAME

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, 'benchmarks', 'run_benchmark.py')
RECORDS = 300  # all from gsm8k_train: none is rejected


@pytest.fixture(scope='module')
def report(tmp_path_factory):
  shared_data('gsm8k_train.jsonl')
  work = tmp_path_factory.mktemp('bench')
  json_path = work / 'results.json'
  # No network: the whole benchmark runs in a namespace with only loopback.
  result = subprocess.run(
      ['unshare', '-n', '--', sys.executable, SCRIPT, '--records',
       str(RECORDS), '--contenders', 'raw,sftbeam,loop', '--workdir',
       str(work / 'workdir'), '--json', str(json_path)],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
  assert '| sftbeam | 300 |' in result.stdout
  with open(json_path, encoding='utf-8') as handle:
    return json.load(handle)


def rows(report):
  return {row['contender']: row for row in report['contenders']}


def test_every_contender_ran_on_the_same_records(report):
  by_name = rows(report)
  assert list(by_name) == ['raw', 'sftbeam', 'loop']
  for row in by_name.values():
    assert row['status'] == 'ok'
    assert row['records'] == RECORDS
    assert row['records_per_s'] > 0 and row['tokens_per_s'] > 0
    assert 0 < row['timed_s'] <= row['process_s']
    assert row['peak_rss_mb'] > 50  # a Python process with a tokenizer
  assert by_name['sftbeam']['records_written'] == RECORDS
  assert by_name['loop']['records_written'] == RECORDS
  # Same tokenizer, same records: the same real tokens everywhere.
  assert len({row['real_tokens'] for row in by_name.values()}) == 1


def test_ratios_are_to_the_raw_tokenizer(report):
  by_name = rows(report)
  assert by_name['raw']['ratio_to_raw'] == 1.0
  assert by_name['raw']['padding_efficiency'] is None
  for name in ('sftbeam', 'loop'):
    assert by_name[name]['ratio_to_raw'] == pytest.approx(
        by_name[name]['records_per_s'] / by_name['raw']['records_per_s'])


def test_padding_schemes_match_what_the_contenders_stored(report):
  by_name = rows(report)
  schemes = {scheme['scheme']: scheme['efficiency']
             for scheme in report['padding']}
  assert all(0 < efficiency <= 1 for efficiency in schemes.values())
  # The loop pads consecutive batches of 32 to their own maximum.
  assert by_name['loop']['padding_efficiency'] == pytest.approx(
      schemes['batch_max_input_order'])
  if OPTIONS_BY_NAME['pad_to'].default == 'bucket':
    assert by_name['sftbeam']['padding_efficiency'] == pytest.approx(
        schemes['default_buckets_pad_to_bucket'])
  assert schemes['global_max'] < schemes['default_buckets_pad_to_bucket']


def test_report_records_the_setup(report):
  assert report['records'] == RECORDS
  assert report['versions']['tokenizers']
  assert 'TOKENIZERS_PARALLELISM' in report['env']


def test_datasets_contender_is_skipped_without_the_extra(monkeypatch,
                                                         tmp_path):
  spec = importlib.util.spec_from_file_location('run_benchmark', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(
      importlib.util, 'find_spec',
      lambda name: None if name == 'datasets' else find_spec(name))
  row = module.run_datasets(str(tmp_path / 'input.jsonl'), str(tmp_path))
  assert row['status'].startswith('skipped: `datasets` is not installed')
  assert "'.[benchmark]'" in module.format_table([row])

