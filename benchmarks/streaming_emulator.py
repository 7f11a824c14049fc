"""Streaming mode on the Pub/Sub emulator: latency, and a restart mid-stream.

  .venv/bin/python benchmarks/streaming_emulator.py latency
  .venv/bin/python benchmarks/streaming_emulator.py restart

latency: a trickle of one record a second for a minute, then a burst of 100;
  prints the time from each publish call to the moment the shard holding the
  record appears under its final name (polled every 0.25 s).
restart: publishes 4 records a second for a minute; 20 s in, the run is
  killed (SIGTERM to its process group) and started again 5 s later with the
  same options and --output; prints what reached the shards: written once,
  twice, or never.
Both use --window_seconds 5 --max_buffering_seconds 2 --batch_size 8.
"""

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

from pubsub_emulator import PubSubEmulator  # pylint: disable=wrong-import-position
# pylint: disable-next=wrong-import-position
from sftbeam.transforms import example_codec, filenames, schema

SFTBEAM = os.path.join(os.path.dirname(sys.executable), 'sftbeam')
GSM8K = os.path.join(os.path.dirname(ROOT), 'shared', 'data',
                     'gsm8k_test.jsonl')
RUN_OPTIONS = ['--window_seconds', '5', '--max_buffering_seconds', '2',
               '--batch_size', '8', '--num_shards', '2']


def _bodies(prefix: str, count: int, start: int = 0) -> list:
  """`count` GSM8K records with ids prefix-N, as message bodies."""
  with open(GSM8K, encoding='utf-8') as handle:
    lines = handle.read().splitlines()[start:start + count]
  return [json.dumps(dict(json.loads(line), id=f'{prefix}-{index}')).encode()
          for index, line in enumerate(lines)]


class ShardWatcher:
  """Polls the output directory; remembers when each shard appeared."""

  def __init__(self, output_dir: str):
    self._output_dir = output_dir
    self.first_seen = {}
    self._ids = {}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)
    self._thread.start()

  def _poll(self):
    while not self._stop.wait(0.25):
      if not os.path.isdir(self._output_dir):
        continue
      now = time.time()
      for name in os.listdir(self._output_dir):
        if name.startswith(filenames.SHARD_PREFIX + '-'):
          self.first_seen.setdefault(name, now)

  def stop(self):
    self._stop.set()
    self._thread.join()

  def ids_by_shard(self) -> dict:
    """{shard name: its example ids}; a shard is final, so read once."""
    for name in list(self.first_seen):
      if name not in self._ids:
        path = os.path.join(self._output_dir, name)
        self._ids[name] = [
            value.decode() for record in tf.data.TFRecordDataset(path)
            for value in example_codec.parse_batch(record)[
                schema.ID_FEATURE].numpy()]
    return dict(self._ids)


class StreamingRun:
  """`sftbeam run --streaming` in a process group of its own."""

  def __init__(self, emulator, subscription: str, output_dir: str, log: str):
    self._command = [SFTBEAM, 'run', '--streaming', '--input_subscription',
                     subscription, '--output', output_dir, *RUN_OPTIONS]
    self._env = dict(os.environ, **emulator.env)
    self._log = log
    self._process = None

  def start(self):
    with open(self._log, 'ab') as log:
      self._process = subprocess.Popen(
          self._command, stdout=log, stderr=subprocess.STDOUT, env=self._env,
          start_new_session=True)

  def stop(self, sig=signal.SIGTERM):
    os.killpg(self._process.pid, sig)
    self._process.wait()


def _written_ids(watcher: ShardWatcher) -> collections.Counter:
  return collections.Counter(
      example_id for ids in watcher.ids_by_shard().values()
      for example_id in ids)


def _wait_for(condition, seconds: float):
  deadline = time.time() + seconds
  while time.time() < deadline and not condition():
    time.sleep(2)


def _percentiles(values) -> str:
  values = sorted(values)
  quantiles = statistics.quantiles(values, n=10)
  return (f'n={len(values)} min {values[0]:.1f} s, median '
          f'{statistics.median(values):.1f} s, p90 {quantiles[-1]:.1f} s, '
          f'max {values[-1]:.1f} s')


def _latencies(watcher, published: dict) -> list:
  seen = {}
  for name, ids in watcher.ids_by_shard().items():
    for example_id in ids:
      seen[example_id] = watcher.first_seen[name]
  return [seen[example_id] - at for example_id, at in published.items()
          if example_id in seen]


class _Experiment(NamedTuple):
  topic: str
  subscription: str
  output_dir: str
  watcher: 'ShardWatcher'
  run: 'StreamingRun'


def _experiment(emulator, work_dir: str, name: str) -> _Experiment:
  """A fresh topic and subscription, and a (not yet started) streaming run
  writing to WORK_DIR/NAME-out, watched for new shards."""
  topic, subscription = emulator.create(name)
  output_dir = os.path.join(work_dir, f'{name}-out')
  run = StreamingRun(emulator, subscription, output_dir,
                     os.path.join(work_dir, f'{name}.log'))
  return _Experiment(topic, subscription, output_dir,
                     ShardWatcher(output_dir), run)


def latency(emulator, work_dir: str):
  topic, _, _, watcher, run = _experiment(emulator, work_dir, 'latency')
  run.start()
  try:
    trickle, burst = _publish_trickle_and_burst(emulator, topic, watcher)
  finally:
    run.stop()
    watcher.stop()
  print('trickle (1 record/s):', _percentiles(_latencies(watcher, trickle)))
  print('burst of 100:', _percentiles(_latencies(watcher, burst)))


def _publish_trickle_and_burst(emulator, topic, watcher):
  emulator.publish(topic, _bodies('warmup', 1))
  _wait_for(lambda: watcher.first_seen, 300)
  trickle = {}
  for body in _bodies('trickle', 60, start=1):
    trickle[json.loads(body)['id']] = time.time()
    emulator.publish(topic, [body])
    time.sleep(1)
  burst_bodies = _bodies('burst', 100, start=61)
  started = time.time()
  emulator.publish(topic, burst_bodies)
  burst = {json.loads(body)['id']: started for body in burst_bodies}
  _wait_for(lambda: len(_written_ids(watcher)) >= 161, 300)
  return trickle, burst


def restart(emulator, work_dir: str):
  topic, subscription, output_dir, watcher, run = _experiment(
      emulator, work_dir, 'restart')
  bodies = _bodies('restart', 240)
  run.start()
  emulator.publish(topic, _bodies('warmup', 1, start=300))
  _wait_for(lambda: watcher.first_seen, 300)

  def publish():
    for body in bodies:
      emulator.publish(topic, [body])
      time.sleep(0.25)

  publisher = threading.Thread(target=publish)
  publisher.start()
  time.sleep(20)
  run.stop()
  killed_at = len(_written_ids(watcher))
  time.sleep(5)
  run.start()
  publisher.join()
  _wait_for(lambda: len(_written_ids(watcher)) >= len(bodies) + 1, 240)
  time.sleep(30)  # anything redelivered late would show up by now
  run.stop()
  watcher.stop()
  written = _written_ids(watcher)
  wanted = {json.loads(body)['id'] for body in bodies}
  print(f'published {len(bodies)} (+1 warm-up); written when killed: '
        f'{killed_at}; after the restart: written once '
        f'{sum(1 for i in wanted if written[i] == 1)}, more than once '
        f'{sum(1 for i in wanted if written[i] > 1)}, never '
        f'{len(wanted - set(written))}; left in the subscription '
        f'{len(emulator.pull_all(subscription))}')
  with open(os.path.join(output_dir, filenames.INFO), encoding='utf-8') as f:
    counts = json.load(f)['counts']
  print('dataset_info counts: records_in', counts['records_in'],
        'written', counts['records_written'], 'rejected',
        counts['records_rejected'])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('experiment', choices=('latency', 'restart'))
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(prefix='sftbeam-streaming-') as work_dir:
    with PubSubEmulator(os.path.join(work_dir, 'emulator')) as emulator:
      {'latency': latency, 'restart': restart}[args.experiment](
          emulator, work_dir)


if __name__ == '__main__':
  main()
