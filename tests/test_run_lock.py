"""pipeline/run_lock.py: one run at a time per output directory; the gs://
lock with a fake google-cloud-storage client."""

import json
import subprocess
import sys

import pytest
from google.api_core import exceptions as gcs_exceptions

from sftbeam.pipeline import run_lock
from sftbeam.transforms import filenames


class _FakeBlob:
  """A google.cloud.storage Blob with generations and preconditions."""

  def __init__(self, bucket, name):
    self._bucket = bucket
    self.name = name
    self.generation = None

  def upload_from_string(self, data, if_generation_match=None):
    stored = self._bucket.objects.get(self.name)
    if if_generation_match == 0 and stored is not None:
      raise gcs_exceptions.PreconditionFailed('exists')
    self._bucket.next_generation += 1
    self.generation = self._bucket.next_generation
    self._bucket.objects[self.name] = (data.encode('utf-8'), self.generation)

  def download_as_bytes(self):
    return self._bucket.objects[self.name][0]

  def delete(self, if_generation_match=None):
    stored = self._bucket.objects.get(self.name)
    if stored is None:
      raise gcs_exceptions.NotFound('gone')
    if if_generation_match is not None and stored[1] != if_generation_match:
      raise gcs_exceptions.PreconditionFailed('changed')
    del self._bucket.objects[self.name]


class _FakeBucket:

  def __init__(self, name):
    self.name = name
    self.objects = {}  # name -> (bytes, generation)
    self.next_generation = 0

  def blob(self, name):
    return _FakeBlob(self, name)

  def get_blob(self, name):
    if name not in self.objects:
      return None
    blob = _FakeBlob(self, name)
    blob.generation = self.objects[name][1]
    return blob


class _FakeClient:

  def __init__(self):
    self.buckets = {}

  def bucket(self, name):
    return self.buckets.setdefault(name, _FakeBucket(name))


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def test_gcs_lock_is_exclusive_and_released():
  client = _FakeClient()
  first = run_lock.acquire('gs://b/sft/run1', run_lock.new_owner('one'),
                           client)
  stored = client.bucket('b').objects['sft/run1/' + filenames.LOCK]
  assert json.loads(stored[0])['run_id'] == 'one'
  with pytest.raises(run_lock.OutputLocked, match='in use by run one'):
    run_lock.acquire('gs://b/sft/run1', run_lock.new_owner('two'), client)
  # Another directory of the same bucket is not locked.
  run_lock.acquire('gs://b/sft/run2', run_lock.new_owner('two'), client)
  first.release()
  run_lock.acquire('gs://b/sft/run1', run_lock.new_owner('two'), client)


def test_gcs_lock_of_a_dead_owner_here_is_taken_over():
  client = _FakeClient()
  dead = dict(run_lock.new_owner('dead-run'), pid=_dead_pid())
  run_lock.acquire('gs://b/out', dead, client)
  lock = run_lock.acquire('gs://b/out', run_lock.new_owner('new'), client)
  stored = client.bucket('b').objects['out/' + filenames.LOCK]
  assert json.loads(stored[0])['run_id'] == 'new'
  lock.release()
  assert not client.bucket('b').objects


def test_gcs_lock_of_another_host_is_not_taken_over():
  client = _FakeClient()
  elsewhere = dict(run_lock.new_owner('far-run'), pid=_dead_pid(),
                   host='another-host')
  run_lock.acquire('gs://b/out', elsewhere, client)
  with pytest.raises(run_lock.OutputLocked,
                     match=r'far-run .*another-host.*delete gs://b/out/'):
    run_lock.acquire('gs://b/out', run_lock.new_owner('new'), client)


def test_gcs_lock_release_leaves_a_lock_taken_over_meanwhile():
  client = _FakeClient()
  mine = run_lock.acquire('gs://b/out', run_lock.new_owner('mine'), client)
  objects = client.bucket('b').objects
  name = 'out/' + filenames.LOCK
  objects[name] = (b'{"run_id": "theirs"}', 99)
  mine.release()
  assert objects[name][1] == 99
