"""Claiming the output directory for a run: one run at a time, and only
sftbeam's own files replaced.

  with prepare_output_dir(output_dir, overwrite, inputs) as claim:
    ... the run writes inside claim.work_dir, under recorded names ...
    claim.complete()

In this order, before the run writes anything: an --output that is or holds
an input file is refused; the directory is locked (pipeline.run_lock); one
with anything in it is refused unless --overwrite. With --overwrite, sftbeam
deletes what the record of the directory's last run names
(transforms.manifest; dataset_info.json first, so readers stop accepting
the directory at once), and nothing else: a file this run would write
under a name that no record names (another tool's, an older sftbeam's),
or a streaming run's window file (no record names those), is refused, not
replaced or left beside the new run's. Then this run's record is written.
"""

import os
import re
import shutil

from apache_beam.io.filesystem import BeamIOError, FileSystem
from apache_beam.io.filesystems import FileSystems

from sftbeam.pipeline import run_lock
from sftbeam.pipeline.options import ConfigError
from sftbeam.transforms import manifest, schema
from sftbeam.transforms.paths import is_remote
from sftbeam.transforms.windows import WINDOW_NAME_PATTERN
from sftbeam.transforms.dataset_info import (ATOMIC_TEMP_SUFFIX,
                                           write_json_atomically)
from sftbeam.version import VERSION

_INFO_NAMES = (rf'{re.escape(schema.INFO_FILE)}'
               rf'(?:{re.escape(ATOMIC_TEMP_SUFFIX)})?')
_SHARD_NAME = (rf'{re.escape(schema.SHARD_PREFIX)}-\d{{5}}-of-\d{{5}}'
               rf'{re.escape(schema.SHARD_SUFFIX)}(?:\.gz)?')
_REJECTED_NAME = (rf'{re.escape(schema.REJECTED_PREFIX)}-\d{{5}}-of-\d{{5}}'
                  rf'{re.escape(schema.REJECTED_SUFFIX)}')
# A streaming run's window files, which its record does not name.
_WINDOW_FILE_NAME = (
    rf'(?:{re.escape(schema.SHARD_PREFIX)}|{re.escape(schema.REJECTED_PREFIX)}'
    rf'|{re.escape(schema.WINDOW_STATS_PREFIX)}){WINDOW_NAME_PATTERN}'
    rf'(?:{re.escape(schema.SHARD_SUFFIX)}(?:\.gz)?'
    rf'|{re.escape(schema.REJECTED_SUFFIX)}'
    rf'|{re.escape(schema.WINDOW_STATS_SUFFIX)})')
# The names a batch run gives its files, and a streaming run's window files:
# one of them already there, but not recorded, is someone else's file (which
# the run would replace) or an earlier streaming run's (which --overwrite
# would leave beside the new run's files).
BATCH_NAMES = re.compile(
    rf'{_INFO_NAMES}|{_SHARD_NAME}|{_REJECTED_NAME}|{_WINDOW_FILE_NAME}')
# A streaming run also lists every file of these patterns as its own.
STREAMING_NAMES = re.compile(
    rf'{_INFO_NAMES}|{re.escape(schema.SHARD_PREFIX)}-.*'
    rf'{re.escape(schema.SHARD_SUFFIX)}(?:\.gz)?|'
    rf'{re.escape(schema.REJECTED_PREFIX)}-.*{re.escape(schema.REJECTED_SUFFIX)}'
    rf'|{re.escape(schema.WINDOW_STATS_PREFIX)}-.*'
    rf'{re.escape(schema.WINDOW_STATS_SUFFIX)}(?:{re.escape(ATOMIC_TEMP_SUFFIX)})?')
# Files every run writes under fixed names (the rest it records as it goes).
_FIXED_FILES = (schema.INFO_FILE, schema.INFO_FILE + ATOMIC_TEMP_SUFFIX,
                manifest.MANIFEST_FILE + ATOMIC_TEMP_SUFFIX)


def _entries(output_dir: str) -> list:
  """Names directly under `output_dir` (remote: every object below it)."""
  if not is_remote(output_dir):
    return os.listdir(output_dir) if os.path.isdir(output_dir) else []
  try:
    match = FileSystems.match([FileSystems.join(output_dir, '**')])[0]
  except BeamIOError as error:
    raise ConfigError(
        f'cannot list --output {output_dir} to check that it is empty '
        f'({str(error).splitlines()[0][:200]}): check your credentials '
        '(gcloud auth application-default login) and the bucket') from None
  prefix = output_dir.rstrip('/') + '/'
  return [metadata.path[len(prefix):] for metadata in match.metadata_list]


def _top_level(name: str) -> str:
  """The entry of DIR that a remote object name (a/b/c) lies in."""
  return name.split('/', 1)[0]


def _inside(path: str, directory: str) -> bool:
  return path == directory or path.startswith(directory.rstrip('/') + '/')


def check_output_apart(output_dir: str, patterns):
  """Refuses an --output that is, or holds, a file an input pattern names.

  Local patterns: the files they match now (symlinks resolved). Remote
  ones, matched only when the job runs: the objects now under a remote
  --output that they would match.
  """
  local_output = not is_remote(output_dir)
  real_output = os.path.realpath(output_dir) if local_output else output_dir
  remote_entries = None
  for pattern in patterns:
    if is_remote(pattern) != (not local_output):
      continue  # one local and one remote: apart
    if local_output:
      paths = [metadata.path for metadata in
               FileSystems.match([pattern])[0].metadata_list]
      inside = [path for path in paths
                if _inside(os.path.realpath(path), real_output)]
    else:
      if remote_entries is None:
        remote_entries = [FileSystems.join(output_dir, name)
                          for name in _entries(output_dir)]
      regex = re.compile(FileSystem.translate_pattern(pattern))
      inside = [path for path in remote_entries if regex.match(path)]
    if inside:
      raise ConfigError(
          f'--output {output_dir} holds the input file {inside[0]} (--input '
          f'{pattern}): sftbeam would write over its own input; choose an '
          '--output apart from the input')


def _plain_name(name) -> bool:
  """A name of an entry directly in the directory: nothing else is ever
  deleted, whatever a record says."""
  return (isinstance(name, str) and name not in ('', '.', '..') and
          '/' not in name and '\\' not in name)


def _recorded(output_dir: str) -> list:
  """What the record of the directory's last run names: its files, the
  names it listed while running, its work directory."""
  path = FileSystems.join(output_dir, manifest.MANIFEST_FILE)
  if not FileSystems.exists(path):
    return []
  unreadable = ConfigError(
      f'{path} is not a record sftbeam can read, so sftbeam does not know '
      'which files there are its own: move the directory\'s files away, or '
      'choose another --output')
  try:
    record = manifest.read_json(path)
    names = list(record['files'])
    work_dir = record['work_dir']
    for list_name in record['name_lists']:
      list_path = FileSystems.join(output_dir, work_dir, list_name)
      if FileSystems.exists(list_path):
        names += manifest.read_json(list_path)
  except (ValueError, KeyError, TypeError, BeamIOError):
    raise unreadable from None
  if work_dir is not None:
    if not (_plain_name(work_dir) and
            work_dir.startswith(manifest.WORK_DIR_PREFIX)):
      raise unreadable
    names.append(work_dir)
  if not all(map(_plain_name, names)):
    raise unreadable
  return names


def _delete(output_dir: str, names: list, present: set):
  """Deletes these entries of `output_dir` that are present, dataset_info.json
  first, then files, then directories."""
  names = sorted(set(names) & present,
                 key=lambda name: (name != schema.INFO_FILE,
                                   name.startswith(manifest.WORK_DIR_PREFIX),
                                   name))
  for name in names:
    path = FileSystems.join(output_dir, name)
    if is_remote(output_dir):
      # A name present as a prefix of objects is a directory there.
      FileSystems.delete([path + '/' if not FileSystems.exists(path)
                          else path])
    elif os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


def _clear(output_dir: str, overwrite: bool, run_names):
  """Refuses a directory holding anything unless overwrite; with it, deletes
  what the last run recorded, after checking that no other file there has
  a name this run may write or an earlier streaming run left (`run_names`,
  a regex)."""
  entries = [name for name in _entries(output_dir)
             if _top_level(name) != run_lock.LOCK_FILE]
  if not entries:
    return
  if not overwrite:
    raise ConfigError(
        f'output directory {output_dir} is not empty ({len(entries)} '
        'entries): pass --overwrite to replace an earlier run, or choose '
        'another --output')
  recorded = set(_recorded(output_dir))
  present = {_top_level(name) for name in entries}
  strangers = sorted(name for name in present - recorded
                     if run_names.fullmatch(name))
  if strangers:
    raise ConfigError(
        f'--output {output_dir} holds {strangers[0]}'
        f'{f" and {len(strangers) - 1} more" if len(strangers) > 1 else ""}, '
        'which no sftbeam run recorded writing there (an older sftbeam\'s '
        'output, or someone else\'s file) and which this run would replace or '
        'list as its own: move it away, or choose another --output')
  _delete(output_dir, recorded, present)


class OutputClaim:
  """An output directory locked for one run, with the run's record.

  `work_dir` is the run's own directory for temp files. Use it as a context
  manager: a run that raises deletes what it wrote (its record included,
  and the directory itself if the run made it), and the lock is released
  in any case.
  """

  def __init__(self, output_dir: str, owner: dict, lock,
               created_dir: bool = False):
    self.output_dir = output_dir
    self.run_id = owner['run_id']
    self.work_dir = FileSystems.join(output_dir,
                                     manifest.work_dir_name(self.run_id))
    self._owner = owner
    self._lock = lock
    self._completed = False
    self._created_dir = created_dir  # a local directory this run made

  def write_record(self, state: str, files, running: bool):
    """Writes the record: `files` and, while `running`, the work directory
    and the lists of names the writing steps keep there."""
    work_dir = manifest.work_dir_name(self.run_id) if running else None
    name_lists = ([manifest.names_list_name(manifest.REJECTED_LIST)]
                  if running else [])
    write_json_atomically(
        FileSystems.join(self.output_dir, manifest.MANIFEST_FILE), {
            'sftbeam_version': VERSION,
            'run_id': self.run_id,
            'owner': self._owner,
            'state': state,
            'files': sorted(files),
            'work_dir': work_dir,
            'name_lists': name_lists,
        })

  def _written(self) -> list:
    """The entries of the directory this run wrote or named."""
    return [name for name in _recorded(self.output_dir)
            if name != manifest.MANIFEST_FILE]

  def complete(self):
    """Records every file of the finished run; removes its work directory."""
    present = {_top_level(name) for name in _entries(self.output_dir)}
    work_dir_name = manifest.work_dir_name(self.run_id)
    files = [name for name in self._written()
             if name in present and name != work_dir_name]
    self.write_record('complete', files, running=False)
    self._completed = True
    _delete(self.output_dir, [work_dir_name], present)

  def abandon(self):
    """Deletes what this run wrote, its record last."""
    present = {_top_level(name) for name in _entries(self.output_dir)}
    _delete(self.output_dir, self._written() + [manifest.MANIFEST_FILE],
            present)

  def release(self):
    self._lock.release()

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    try:
      # Not on Ctrl-C: a Dataflow job may still be writing.
      if (exc_type is not None and issubclass(exc_type, Exception) and
          not self._completed):
        self.abandon()
    finally:
      self.release()
    if self._created_dir and not self._completed:
      try:
        os.rmdir(self.output_dir)  # only if empty: as it was, absent
      except OSError:
        pass


def prepare_output_dir(output_dir: str, overwrite: bool, inputs=(),
                       files=(), lock=None,
                       run_names=BATCH_NAMES) -> OutputClaim:
  """Claims `output_dir` for a run (see the module docstring).

  Raises ConfigError when another run holds it, it holds a file of the
  `inputs` patterns, or it is not empty and overwrite is off. `files`: the
  names of files the run will write that are known now (recorded with the
  fixed ones); `run_names` matches every name the run may write. `lock`:
  the directory's lock if the caller holds it already.
  The lock is held until the claim is released, or its process ends.
  """
  if not is_remote(output_dir) and os.path.lexists(output_dir) and (
      not os.path.isdir(output_dir)):
    raise ConfigError(f'--output {output_dir} is a file, not a directory: '
                      'choose another --output')
  check_output_apart(output_dir, inputs)
  created_dir = not is_remote(output_dir) and not os.path.isdir(output_dir)
  if created_dir:
    os.makedirs(output_dir)
  if lock is None:
    lock = run_lock.acquire(output_dir,
                            run_lock.owner_record(manifest.new_run_id()))
  try:
    _clear(output_dir, overwrite, run_names)
    claim = OutputClaim(output_dir, lock.owner, lock, created_dir)
    claim.write_record('running', _FIXED_FILES + tuple(files), running=True)
  except BaseException:
    lock.release()
    raise
  return claim
