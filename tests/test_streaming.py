"""Streaming mode against Google's real Pub/Sub emulator.

The end-to-end test publishes a few hundred records (good ones of varied
lengths and bad ones) before and while `sftbeam run --streaming` runs, waits
until every message is accounted for in dataset_info.json, stops the run,
and checks the shards and rejected files against a batch run of the same
records.
"""

import collections
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import SAMPLE, SFTBEAM, run_sftbeam, shared_data
from sftbeam.pipeline import run_lock, streaming
from sftbeam.pipeline.options import ConfigError, defaults, make_config
from sftbeam.pipeline.readers import iter_numpy_batches, load_dataset_info
from pubsub_emulator import PubSubEmulator, missing
from sftbeam.transforms import filenames, schema
from sftbeam.transforms.dataset_info import build_info

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

OPTIONS = ['--batch_size', '8', '--num_shards', '2']
STREAMING_OPTIONS = ['--window_seconds', '2', '--max_buffering_seconds', '1']
# The run waits for every message; a stalled one fails the test after this.
DEADLINE_SECONDS = 300
WINDOW_FILE = re.compile(r'-\d{8}T\d{6}Z-\d{8}T\d{6}Z-\d+-[0-9a-f]{12}\.')


@pytest.fixture(scope='module')
def emulator(tmp_path_factory):
  reason = missing()
  if reason:
    pytest.skip(reason)
  with PubSubEmulator(str(tmp_path_factory.mktemp('pubsub'))) as running:
    yield running


def _bodies() -> list:
  """Good records of varied lengths and bad ones, one JSON body each."""
  with open(SAMPLE, 'rb') as handle:
    sample = [line for line in handle.read().splitlines() if line.strip()]
  with open(shared_data('gsm8k_test.jsonl'), 'rb') as handle:
    gsm8k = handle.read().splitlines()[:60]
  bad = [b'{"prompt": "no output"}', b'[1, 2]', b'{"prompt": "x", "output": ',
         b'{"prompt": " ", "output": "blank prompt"}',
         b'{"prompt": "p", "output": 7}',
         json.dumps({'prompt': 'long ' * 5000, 'output': 'o'}).encode()]
  return sample[:200] + gsm8k + bad


def _rows(output_dir: str) -> dict:
  """{example id: [every (input_ids, labels, mask) row of it, unpadded]}."""
  rows = collections.defaultdict(list)
  for batch in iter_numpy_batches(output_dir):
    lengths = batch['prompt_lengths'] + batch['output_lengths'] - 1
    for index, example_id in enumerate(batch[schema.ID_FEATURE]):
      length = lengths[index]
      rows[example_id].append(tuple(
          batch[name][index, :length].tolist()
          for name in ('input_ids', 'labels', 'response_mask')))
  return rows


def _rejected(output_dir: str, info: dict) -> list:
  records = []
  for name in info['rejected_files']:
    with open(os.path.join(output_dir, name), encoding='utf-8') as handle:
      records.extend(json.loads(line) for line in handle)
  return records


def _batch_reference(tmp_path, bodies):
  """Rows and rejected records of a batch run over the same records."""
  input_path = tmp_path / 'records.jsonl'
  input_path.write_bytes(b'\n'.join(bodies) + b'\n')
  output_dir = str(tmp_path / 'batch')
  run_sftbeam('run', '--input', str(input_path), '--output', output_dir,
              *OPTIONS, network=False, check=True)
  info = load_dataset_info(output_dir)
  return _rows(output_dir), _rejected(output_dir, info)


def _wait_until_accounted(output_dir: str, total: int, run) -> dict:
  """The info once all `total` messages are written or rejected."""
  deadline = time.time() + DEADLINE_SECONDS
  while time.time() < deadline:
    assert run.poll() is None, 'the streaming run exited early'
    if os.path.exists(os.path.join(output_dir, filenames.INFO)):
      info = load_dataset_info(output_dir)
      counts = info['counts']
      if counts['records_written'] + counts['records_rejected'] >= total:
        return info
    time.sleep(1)
  raise AssertionError(f'not every message was accounted for within '
                       f'{DEADLINE_SECONDS} s')


def _stop(run):
  os.killpg(run.pid, signal.SIGTERM)
  try:
    run.wait(30)
  except subprocess.TimeoutExpired:
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()


def test_streaming_matches_batch_and_loses_nothing(emulator, tmp_path):
  bodies = _bodies()
  batch_rows, batch_rejected = _batch_reference(tmp_path, bodies)
  assert len(batch_rejected) >= 8  # the sample's bad lines and ours
  topic, subscription = emulator.create('records')
  dead_topic, dead_subscription = emulator.create('dead-letters')
  output_dir = str(tmp_path / 'stream')
  half = len(bodies) // 2
  # Published before the run starts: kept by the subscription.
  emulator.publish(topic, bodies[:half])
  with open(tmp_path / 'stream.log', 'wb') as log:
    run = subprocess.Popen(
        [SFTBEAM, 'run', '--streaming', '--input_subscription', subscription,
         '--output', output_dir, '--dead_letter_topic', dead_topic, *OPTIONS,
         *STREAMING_OPTIONS],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=dict(os.environ, **emulator.env))
    try:
      _wait_until_accounted(output_dir, 1, run)
      # Published in a burst while the run reads.
      emulator.publish(topic, bodies[half:])
      info = _wait_until_accounted(output_dir, len(bodies), run)
    finally:
      _stop(run)

  counts = info['counts']
  assert counts['records_in'] == len(bodies)
  assert counts['reconciled']
  stream_rows = _rows(output_dir)
  assert {example_id: len(rows) for example_id, rows in stream_rows.items()
          } == {example_id: 1 for example_id in batch_rows}
  for example_id, rows in batch_rows.items():
    assert stream_rows[example_id] == rows, example_id

  stream_rejected = _rejected(output_dir, info)
  assert sorted((r['raw'], r['reason']) for r in stream_rejected) == sorted(
      (r['raw'], r['reason']) for r in batch_rejected)
  assert all(r['source'].startswith(subscription + '#') and
             r['line_number'] is None for r in stream_rejected)
  dead_letters = emulator.pull_all(dead_subscription)
  assert sorted((json.loads(m.data)['raw'], m.attributes['reason'])
                for m in dead_letters) == sorted(
                    (r['raw'], r['reason']) for r in batch_rejected)

  assert all(WINDOW_FILE.search(name) for name in
             [entry['name'] for entry in info['shards']] +
             info['rejected_files'])
  window_stats = [name for name in os.listdir(output_dir)
                  if name.startswith(filenames.WINDOW_STATS_PREFIX)]
  assert window_stats and all(WINDOW_FILE.search(name)
                              for name in window_stats)
  written = 0
  for name in window_stats:
    with open(os.path.join(output_dir, name), encoding='utf-8') as handle:
      written += json.load(handle)['counts']['records_written']
  assert written == len(batch_rows)


def _config(**values):
  return make_config({**defaults(), 'output': 'out', **values})


@pytest.mark.parametrize('values, message', [
    ({'streaming': True}, 'one Pub/Sub source'),
    ({'streaming': True, 'input_topic': 'projects/p/topics/t',
      'input_subscription': 'projects/p/subscriptions/s'},
     'one Pub/Sub source'),
    ({'streaming': True, 'input_topic': 'projects/p/topics/t',
      'input': ['a.jsonl']}, '--input is for batch runs'),
])
def test_streaming_config_errors(values, message):
  with pytest.raises(ConfigError, match=message):
    _config(**values)


def test_streaming_config_accepts_one_source():
  config = _config(streaming=True,
                   input_subscription='projects/p/subscriptions/s')
  assert config.input == [] and config.window_seconds == 60


def _write_json(path, value):
  with open(path, 'w', encoding='utf-8') as handle:
    json.dump(value, handle)


def test_restart_continues_a_streaming_output(tmp_path):
  config = _config(streaming=True, output=str(tmp_path),
                   input_subscription='projects/p/subscriptions/s')
  _write_json(tmp_path / filenames.INFO,
              build_info(config.to_dict(), {}, [], []))
  for name, written in (('a', 3), ('b', 4)):
    _write_json(tmp_path / f'{filenames.WINDOW_STATS_PREFIX}-{name}.json',
                {'stats': {'records_written': written, 'lines': 5},
                 'shards': [{'name': f'batches-{name}.tfrecord'}]})
  earlier, claim = streaming.prepare_output(config)
  # The continued run holds the directory: a second one is refused.
  with pytest.raises(run_lock.OutputLocked):
    streaming.prepare_output(config)
  claim.release()
  assert earlier.stats == {'records_written': 7, 'lines': 10}
  assert sorted(entry['name'] for entry in earlier.shards) == [
      'batches-a.tfrecord', 'batches-b.tfrecord']
  changed = _config(streaming=True, output=str(tmp_path), batch_size=9,
                    input_subscription='projects/p/subscriptions/s')
  with pytest.raises(ConfigError, match=r'other options \(batch_size\)'):
    streaming.prepare_output(changed)


def test_a_malformed_earlier_dataset_info_is_one_config_error(tmp_path):
  config = _config(streaming=True, output=str(tmp_path),
                   input_subscription='projects/p/subscriptions/s')
  (tmp_path / filenames.INFO).write_text('[]')
  with pytest.raises(ConfigError, match=r'not a JSON object: pass --overwrite'):
    streaming.prepare_output(config)


def test_dataflow_streaming_job_builds_offline():
  result = run_sftbeam(
      'run', '--streaming', '--input_subscription',
      'projects/my-project/subscriptions/records', '--output',
      'gs://sftbeam-ci/out', '--runner', 'DataflowRunner', '--dry_run=True',
      '--project', 'my-project', '--region', 'us-central1',
      '--temp_location', 'gs://sftbeam-ci/t', '--staging_location',
      'gs://sftbeam-ci/s', network=False, check=True)
  description = json.loads(result.stdout.split('\n', 1)[1])
  assert description['pipeline_options']['streaming'] is True
  steps = description['steps']
  for step in ('ReadPubSub', 'LinesToBatches', 'WindowBatches', 'WriteShards',
               'WriteRejected', 'UpdateDatasetInfo'):
    assert step in steps

