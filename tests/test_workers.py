"""A local run on several worker processes (the `workers` option).

Each worker reads its own byte ranges and row groups and batches its own
records, so a run on N workers may group rows into other batches than a
run on one; every record's row, every rejection and every count must be
the same.
"""

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from conftest import SAMPLE, run_sftbeam, shared_data
from output_rows import record_counts, rows_by_id
from sftbeam.console import HIDE_TORCH_ENV
from sftbeam.pipeline.readers import load_dataset_info
from sftbeam.pipeline import runners
from sftbeam.pipeline.options import defaults, make_config


def _config(**values):
  return make_config(dict(defaults(), input=['in.jsonl'], output='out',
                          **values))


def test_workers_default_to_the_cores_for_large_input():
  cores = len(os.sched_getaffinity(0))
  small = runners.MULTI_WORKER_MIN_BYTES - 1
  assert runners.local_workers(_config(), small) == 1
  assert runners.local_workers(_config(), small + 1) == cores
  assert runners.local_workers(_config(), None) == cores
  assert runners.local_workers(_config(workers=3), small) == 3


@pytest.mark.parametrize('workers, mode, processes', [
    (1, 'in_memory', 1), (3, 'multi_processing', 3)])
def test_workers_choose_the_runners_mode(workers, mode, processes):
  options = runners.with_workers(runners.pipeline_options([]), workers)
  assert options.view_as(DirectOptions).direct_running_mode == mode
  assert runners.worker_processes(options) == processes
  assert runners.runs_in_this_process(options) == (workers == 1)


def test_beam_flags_that_choose_the_mode_win():
  options = runners.with_workers(PipelineOptions(
      ['--runner', 'FnApiRunner', '--direct_running_mode', 'multi_threading']),
                                 4)
  assert options.view_as(DirectOptions).direct_running_mode == (
      'multi_threading')
  assert runners.worker_processes(options) == 1


@pytest.mark.slow
def test_every_record_gets_the_same_row_on_three_workers(tmp_path):
  """JSON lines (one with bad lines), a gzip'd file (read whole by one
  worker) and Parquet row groups, on 1 and on 3 worker processes."""
  inputs = tmp_path / 'in'
  inputs.mkdir()
  shutil.copy(shared_data('gsm8k_train.jsonl'), inputs / 'gsm8k.jsonl')
  shutil.copy(SAMPLE, inputs / 'sample.jsonl')
  shutil.copy(shared_data('gsm8k_test.jsonl'), inputs / 'test.jsonl')
  subprocess.run(['gzip', str(inputs / 'test.jsonl')], check=True)
  with open(shared_data('alpaca_5000.jsonl'), encoding='utf-8') as handle:
    alpaca = [json.loads(line) for line in handle]
  pq.write_table(pa.Table.from_pylist(alpaca), inputs / 'alpaca.parquet',
                 row_group_size=700)
  outputs = {}
  for workers in (1, 3):
    outputs[workers] = tmp_path / f'out-{workers}'
    result = run_sftbeam('run', '--config', 'configs/local.yaml', '--input',
                         str(inputs / '*'), '--output', str(outputs[workers]),
                         '--workers', str(workers), '--read_chunk_lines',
                         '1000', network=False, check=True)
    assert result.stderr == ''  # the workers' own log lines stay quiet
  rows = rows_by_id(str(outputs[1]))
  assert len(rows) > 13_000
  assert rows_by_id(str(outputs[3])) == rows
  assert rejections(outputs[3]) == rejections(outputs[1])
  assert {source for source, _, _ in rejections(outputs[1])} == {
      'sample.jsonl', 'alpaca.parquet'}
  assert record_counts(str(outputs[3])) == record_counts(str(outputs[1]))


def rejections(output_dir) -> set:
  """{(input file, line or row number, reason)} of every rejected record."""
  found = set()
  for name in load_dataset_info(str(output_dir))['rejected_files']:
    with open(output_dir / name, encoding='utf-8') as handle:
      for line in handle:
        record = json.loads(line)
        found.add((os.path.basename(record['source']),
                   record.get('line_number') or record['row_number'],
                   record['reason']))
  return found


def test_a_local_worker_loads_the_tokenizer_without_pytorch():
  """A worker of the command (which inherits HIDE_TORCH_ENV) does not
  import PyTorch to load the tokenizer, and can still import it after."""
  script = ('import sys\n'
            'from sftbeam.transforms.tokenizer_source import load_tokenizer\n'
            'load_tokenizer("embedded")\n'
            'print("torch" in sys.modules)\n'
            'import torch\n'
            'print(torch.__name__)\n')
  result = subprocess.run(
      [sys.executable, '-c', script], capture_output=True, text=True,
      check=True, env=dict(os.environ, **{HIDE_TORCH_ENV: '1'}))
  assert result.stdout.split() == ['False', 'torch']
