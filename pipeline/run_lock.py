"""One run at a time per output directory: a lock held for the whole run.

Local directory: an OS lock (`flock`) on DIR/.sftbeam-lock. The kernel
drops it when its process ends, however it ends, so a killed run never
leaves the directory locked. The file records its owner (run id, pid, host,
start time) for the message a second run prints, and is removed on release.
It is opened without following a link, and must be a regular file with no
other name: a link or hard link there would lead the write elsewhere.

gs:// directory: the object DIR/.sftbeam-lock, created only if absent
(`if_generation_match=0`) through google-cloud-storage. An object outlives
a killed run: a lock whose owner ran on this host with a pid that is gone is
taken over; any other stays until its run releases it, or until someone
deletes it (the message says how).
"""

import fcntl
import json
import os
import socket
import stat
import time

from sftbeam.pipeline.options import ConfigError
from sftbeam.transforms import filenames


class OutputLocked(ConfigError):
  """Another run holds the output directory."""


def new_owner(run_id: str) -> dict:
  """Who takes a lock: this process, on this host, for run `run_id`."""
  return {'run_id': run_id, 'pid': os.getpid(), 'host': socket.gethostname(),
          'started_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}


def describe_owner(owner) -> str:
  if not isinstance(owner, dict):
    return 'an unknown run (its lock records no owner)'
  return (f'run {owner.get("run_id")} (pid {owner.get("pid")} on '
          f'{owner.get("host")}, since {owner.get("started_at")})')


def _parse_owner(data: bytes):
  try:
    return json.loads(data)
  except ValueError:
    return None


def _gone_from_this_host(owner) -> bool:
  """Whether `owner` ran on this host and its process no longer exists."""
  if not isinstance(owner, dict) or owner.get('host') != socket.gethostname():
    return False
  try:
    os.kill(int(owner['pid']), 0)
  except ProcessLookupError:
    return True
  except (PermissionError, KeyError, TypeError, ValueError):
    return False
  return False


class LocalLock:
  """An flock on DIR/.sftbeam-lock, taken at construction."""

  def __init__(self, directory: str, owner: dict):
    self.owner = owner
    self._path = os.path.join(directory, filenames.LOCK)
    self._fd = self._lock_current_file()
    os.ftruncate(self._fd, 0)
    os.write(self._fd, json.dumps(owner).encode('utf-8'))

  def _lock_current_file(self) -> int:
    """Locks the file now at the path (not one a releasing run unlinked
    between our open and our flock); gives its descriptor."""
    while True:
      fd = self._open()
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        owner = _parse_owner(os.pread(fd, 4096, 0))
        os.close(fd)
        raise OutputLocked(
            f'{os.path.dirname(self._path)} is in use by '
            f'{describe_owner(owner)}: wait for it to end, or choose another '
            '--output') from None
      try:
        if os.stat(self._path).st_ino == os.fstat(fd).st_ino:
          return fd
      except FileNotFoundError:
        pass
      os.close(fd)

  def _open(self) -> int:
    """Opens or creates the lock file: a regular file, with no other name
    (a hard link out of the directory), never followed as a link.
    Raises ConfigError naming it otherwise."""
    try:
      fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW |
                   os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as error:  # ELOOP: a link; EISDIR: a directory; ...
      raise self._refused('a symbolic link' if os.path.islink(self._path)
                          else f'not a file ({error.strerror})') from None
    status = os.fstat(fd)
    if stat.S_ISREG(status.st_mode) and status.st_nlink == 1:
      return fd
    os.close(fd)
    raise self._refused('not a regular file'
                        if not stat.S_ISREG(status.st_mode) else
                        f'a file with {status.st_nlink} names (hard links)')

  def _refused(self, problem: str) -> ConfigError:
    return ConfigError(
        f'{self._path} is {problem}: sftbeam writes its lock there, never '
        'through a link nor into a file of another kind; remove it, or '
        'choose another --output')

  def release(self):
    """Removes the lock file, then unlocks (in this order: a run waiting on
    the old file then sees that it is gone and takes the new one)."""
    if self._fd is None:
      return
    os.unlink(self._path)
    os.close(self._fd)
    self._fd = None


def _split_gcs_path(path: str):
  """gs://bucket/some/dir -> ('bucket', 'some/dir/')."""
  bucket, _, prefix = path[len('gs://'):].partition('/')
  prefix = prefix.strip('/')
  return bucket, prefix + '/' if prefix else ''


class GcsLock:
  """The object DIR/.sftbeam-lock, created if absent at construction.

  `client` is a google.cloud.storage.Client (by default one with the
  application default credentials); tests pass a fake.
  """

  def __init__(self, directory: str, owner: dict, client=None):
    self.owner = owner
    # Imported here: only gs:// runs need it, and it is slow to import.
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    if client is None:
      from google.cloud import storage  # pylint: disable=import-outside-toplevel
      client = storage.Client()
    self._exceptions = exceptions
    bucket_name, prefix = _split_gcs_path(directory)
    self._directory = directory
    self._bucket = client.bucket(bucket_name)
    self._name = prefix + filenames.LOCK
    self._generation = self._create(json.dumps(owner))

  def _create(self, data: str) -> int:
    """Creates the object; takes over once from an owner gone from this
    host; gives the object's generation."""
    for _ in range(2):
      blob = self._bucket.blob(self._name)
      try:
        blob.upload_from_string(data, if_generation_match=0)
        return blob.generation
      except self._exceptions.PreconditionFailed:
        holder = self._bucket.get_blob(self._name)
        if holder is None:
          continue  # released meanwhile: try again
        owner = _parse_owner(holder.download_as_bytes())
        if not _gone_from_this_host(owner):
          raise OutputLocked(
              f'{self._directory} is in use by {describe_owner(owner)}: wait '
              'for it to end, or, if that run is dead, delete '
              f'gs://{self._bucket.name}/{self._name} and run again') from None
        try:
          holder.delete(if_generation_match=holder.generation)
        except (self._exceptions.PreconditionFailed,
                self._exceptions.NotFound):
          pass  # another run took it over first; the next create says so
    raise OutputLocked(f'{self._directory} is in use by another run (its lock '
                       'changed hands while sftbeam tried to take it)')

  def release(self):
    if self._generation is None:
      return
    try:
      self._bucket.blob(self._name).delete(
          if_generation_match=self._generation)
    except (self._exceptions.PreconditionFailed, self._exceptions.NotFound):
      pass  # taken over meanwhile: it is not ours to delete
    self._generation = None


def acquire(directory: str, owner: dict, client=None):
  """Locks `directory` (existing, local or gs://) for `owner`; gives the lock
  (`release()` it). Raises OutputLocked naming the run that holds it."""
  if directory.startswith('gs://'):
    return GcsLock(directory, owner, client)
  if '://' in directory:
    raise ConfigError(f'--output {directory}: sftbeam can lock a local or '
                      'gs:// directory only')
  return LocalLock(directory, owner)
