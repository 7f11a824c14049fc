"""A run killed part-way leaves nothing a reader accepts, and an earlier
complete run as it was; --overwrite then gives the complete result
(docs/safety.md).

The CLI runs as a subprocess in its own process group (and network
namespace) on gsm8k_train replicated twice, and is killed with SIGKILL
by its pid: while it writes temp files, when the first shard has its final
name in the run's work directory, and, over a complete run, while it runs.
(A kill at each step of moving a finished run into place is in
test_safety.py.)
"""

import fnmatch
import json
import os
import random
import signal
import subprocess
import time

import pytest

from conftest import ROOT, SFTBEAM, shared_data
from output_rows import rows_by_id, run_files
from sftbeam.pipeline import cli
from sftbeam.pipeline.readers import (IncompleteOutput, iter_numpy_batches,
                              load_dataset_info, read_tf_dataset)
from sftbeam.transforms import filenames, manifest, spec_arithmetic

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

COPIES = 2
# Poll often enough to land between the last shard getting its final name
# and the run's end, and try again if a kill lands too late.
POLL_SECONDS = 0.002
KILL_ATTEMPTS = 5
# A shard under its final name in a run's work directory.
STAGED_SHARD = filenames.work_dir_name('*') + '/' + filenames.SHARD_PREFIX + '-*'



@pytest.fixture(scope='module')
def big_input(tmp_path_factory):
  """(path, {id: (prompt, output)}): gsm8k_train COPIES times, unique ids."""
  with open(shared_data('gsm8k_train.jsonl'), encoding='utf-8') as handle:
    records = [json.loads(line) for line in handle]
  path = str(tmp_path_factory.mktemp('kill') / 'gsm8k_x2.jsonl')
  expected = {}
  with open(path, 'w', encoding='utf-8') as handle:
    for copy in range(COPIES):
      for number, record in enumerate(records):
        example_id = f'{copy}-{number}'
        expected[example_id] = (record['prompt'], record['output'])
        handle.write(json.dumps(dict(record, id=example_id)) + '\n')
  return path, expected


def start_run(input_path, output_dir, log_path, *flags):
  """Starts the CLI in a new session (process group), offline."""
  command = ['unshare', '-n', '--', SFTBEAM, 'run', '--config',
             'configs/local.yaml', '--input', input_path, '--output',
             str(output_dir), *flags]
  with open(log_path, 'wb') as log:
    return subprocess.Popen(command, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def files_under(output_dir):
  """Paths relative to output_dir of every file below it."""
  found = []
  for directory, _, names in os.walk(output_dir):
    found += [os.path.relpath(os.path.join(directory, name), output_dir)
              for name in names]
  return found


def kill_when(process, output_dir, pattern, log_path, timeout=300):
  """SIGKILLs the run's process group once a file matching `pattern`
  exists; gives the files present at that moment."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    present = files_under(output_dir)
    if fnmatch.filter(present, pattern):
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
      return present
    if process.poll() is not None:
      with open(log_path, encoding='utf-8', errors='replace') as log:
        pytest.fail(f'the run ended ({process.returncode}) before any '
                    f'{pattern} appeared:\n{log.read()[-3000:]}')
    time.sleep(POLL_SECONDS)
  os.killpg(process.pid, signal.SIGKILL)
  process.wait()
  pytest.fail(f'no {pattern} within {timeout} s')


def assert_readers_refuse(output_dir):
  output_dir = str(output_dir)
  assert not os.path.exists(os.path.join(output_dir, filenames.INFO))
  with pytest.raises(IncompleteOutput, match='did not finish'):
    load_dataset_info(output_dir)
  with pytest.raises(IncompleteOutput):
    read_tf_dataset(output_dir)
  with pytest.raises(IncompleteOutput):
    next(iter_numpy_batches(output_dir))


def assert_final_shards_whole(output_dir):
  """A file under a final shard name is always complete: fileio writes it
  in a temp directory and moves it when closed (in the run's work
  directory, whence the finished run is moved into place)."""
  import tensorflow as tf
  for name in fnmatch.filter(files_under(output_dir),
                             STAGED_SHARD) + fnmatch.filter(
                                 os.listdir(output_dir),
                                 filenames.SHARD_PREFIX + '-*'):
    records = tf.data.TFRecordDataset(os.path.join(output_dir, name))
    assert sum(1 for _ in records) > 0  # DataLossError if cut short


def test_killed_runs_are_refused_and_overwrite_completes(big_input, tmp_path,
                                                          capsys, qwen):
  input_path, expected = big_input
  output_dir = tmp_path / 'out'
  log_path = tmp_path / 'run.log'

  # 1. Killed while shards are being written to temp files.
  process = start_run(input_path, output_dir, log_path)
  present = kill_when(process, output_dir, filenames.work_dir_name('*/*'),
                      log_path)
  # Shards get their final names only after all are written.
  assert not fnmatch.filter(present, filenames.SHARD_PREFIX + '-*')
  assert filenames.INFO not in present
  assert_readers_refuse(output_dir)
  assert_final_shards_whole(output_dir)

  # 2. Without --overwrite the leftovers are refused: exit 2, one line.
  assert cli.main(['run', '--input', input_path, '--output',
                   str(output_dir)]) == 2
  error = capsys.readouterr().err.strip().splitlines()
  assert len(error) == 1 and '--overwrite' in error[0]

  # 3. --overwrite, killed again once shards have their final names in the
  # work directory (a kill that lands after the run's end is tried again).
  for _ in range(KILL_ATTEMPTS):
    process = start_run(input_path, output_dir, log_path, '--overwrite')
    present = kill_when(process, output_dir, STAGED_SHARD, log_path)
    if filenames.INFO not in present:
      break
  assert filenames.INFO not in present, (
      f'no kill landed between the shards and {filenames.INFO} in '
      f'{KILL_ATTEMPTS} runs')
  assert_readers_refuse(output_dir)
  assert_final_shards_whole(output_dir)

  # 4. --overwrite to the end: the complete result, and nothing stale.
  process = start_run(input_path, output_dir, log_path, '--overwrite')
  assert process.wait(timeout=600) == 0, log_path.read_text()
  info = load_dataset_info(str(output_dir))
  counts = info['counts']
  assert counts['records_in'] == counts['records_written'] == len(expected)
  assert counts['records_rejected'] == 0 and counts['reconciled'] is True
  assert sorted(fnmatch.filter(os.listdir(output_dir),
                               filenames.SHARD_PREFIX + '-*')) == [
                                   shard['name'] for shard in info['shards']]
  assert not fnmatch.filter(os.listdir(output_dir),
                            filenames.work_dir_name('*'))
  rows = rows_by_id(str(output_dir))
  assert set(rows) == set(expected)
  for example_id in random.Random(0).sample(sorted(expected), 20):
    prompt, output = expected[example_id]
    reference = spec_arithmetic.tokenize_prompt_and_output(
        [prompt], [output], qwen)
    real = reference['input_ids'].shape[1]
    assert rows[example_id]['input_ids'][:real] == (
        reference['input_ids'][0].tolist())
    assert rows[example_id]['response_mask'][:real] == (
        reference['response_mask'][0].tolist())

  # 5. --overwrite over that complete run, killed while it runs: the
  # complete run is still there, byte for byte, and reads.
  complete = run_files(output_dir)
  process = start_run(input_path, output_dir, log_path, '--overwrite')
  kill_when(process, output_dir, filenames.work_dir_name('*/*'), log_path)
  assert run_files(output_dir) == complete
  assert set(rows_by_id(str(output_dir))) == set(expected)
