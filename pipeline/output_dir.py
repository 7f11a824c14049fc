"""Claiming the output directory for a run: one run at a time; an earlier
run replaced only by a complete new one; only sftbeam's own files touched.

  with prepare_output_dir(output_dir, overwrite, inputs) as claim:
    ... the run writes its whole output in claim.work_dir ...
    claim.complete()   # moves it into output_dir in place of the earlier run

Refused before anything changes (ConfigError): an --output that is or
holds an input file; one another run holds (pipeline.run_lock); one with
anything in it, unless --overwrite. With --overwrite the directory's manifest
(transforms.manifest) says which files are sftbeam's, and is trusted only
as far as the directory (plain names of sftbeam's kinds of files). Refused
too: a file under a name this run would write that no manifest names
(another tool's, an older sftbeam's, a streaming run's window file), and a
link, or anything but a regular file (a directory for a work directory),
under a name sftbeam would replace or delete: sftbeam makes no links, and
never writes or deletes through one. Then the leftovers of dead runs go
(work directories, whether a manifest names them or not, and a manifest's temp
file), and the manifest names this run's work directory.

The earlier run stays whole and readable while the new one runs. `complete`
then replaces it: the manifest names both runs' files ("replacing"); the
earlier dataset_info.json goes first, so readers stop accepting the
directory, then the earlier files; the new files move in, dataset_info.json
last; the work directory goes; the manifest names the new files
("complete"). Killed at any point, a run leaves the earlier run readable,
or the new one, or no dataset_info.json (readers refuse the directory) and
a manifest by which the next --overwrite run deletes both runs' files. A run
that fails deletes its work directory and puts the manifest back as it was.

A streaming run writes straight into the directory and never ends, so it
deletes the earlier run when it starts (prepare_streaming_output_dir).
"""

import os
import re
import stat
from typing import NamedTuple

from apache_beam.io.filesystem import BeamIOError, FileSystem
from apache_beam.io.filesystems import FileSystems

from sftbeam.pipeline import run_lock
from sftbeam.pipeline.options import ConfigError
from sftbeam.transforms import filenames, manifest
from sftbeam.transforms.paths import (delete_files, delete_tree, is_remote,
                                      names_in)

# Files a streaming run writes under fixed names (its window files are
# not recorded: see docs/streaming.md).
_STREAMING_FILES = [filenames.INFO, filenames.temp_name(filenames.INFO)]


class ReplaceFailed(Exception):
  """A finished run could not replace the earlier one in --output (the run
  fails, exit 1)."""


def _entries(output_dir: str) -> list:
  """Names directly under `output_dir` (remote: every object below it)."""
  try:
    return names_in(output_dir)
  except BeamIOError as error:
    raise ConfigError(
        f'cannot list --output {output_dir} to check that it is empty '
        f'({str(error).splitlines()[0][:200]}): check your credentials '
        '(gcloud auth application-default login) and the bucket') from None


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


def _read_bytes(path: str, limit: int):
  """At most `limit` bytes of the file at `path`; None if it is absent.
  Locally only a regular file is read, never through a link."""
  if is_remote(path):
    if not FileSystems.exists(path):
      return None
    with FileSystems.open(path) as handle:
      return handle.read(limit)
  try:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                 os.O_CLOEXEC)
  except FileNotFoundError:
    return None
  except OSError:  # a link (ELOOP), a socket (ENXIO), ...
    raise _wrong_kind(path, 'a regular file') from None
  if not stat.S_ISREG(os.fstat(fd).st_mode):
    os.close(fd)
    raise _wrong_kind(path, 'a regular file')
  with os.fdopen(fd, 'rb') as handle:
    return handle.read(limit)


def _wrong_kind(path: str, wanted: str) -> ConfigError:
  try:
    mode = os.lstat(path).st_mode
    found = ('a symbolic link' if stat.S_ISLNK(mode) else 'a directory'
             if stat.S_ISDIR(mode) else 'not a regular file')
  except OSError as error:
    found = f'unreadable ({error.strerror})'
  return ConfigError(
      f'{path} is {found}, where sftbeam expects {wanted} of its own: it '
      'never reads, writes or deletes through a link, nor on another kind '
      'of file; remove it, or choose another --output')


def _read_manifest(output_dir: str):
  """The directory's manifest (transforms.manifest), checked; None if none."""
  path = FileSystems.join(output_dir, filenames.MANIFEST)
  data = _read_bytes(path, manifest.MAX_MANIFEST_BYTES + 1)
  if data is None:
    return None
  try:
    found = manifest.parse_manifest(data)
    if not all(map(filenames.LISTABLE.fullmatch, found['files'])):
      raise manifest.UnreadableManifest('it names files sftbeam does not write')
  except manifest.UnreadableManifest as error:
    raise ConfigError(
        f'{path} is not a manifest sftbeam can read ({error}), so sftbeam does '
        'not know which files there are its own: move the directory\'s files '
        'away, or choose another --output') from None
  return found


def _check_kinds(output_dir: str, names):
  """Refuses a link, or another kind of file than sftbeam makes, under
  `names` (local entries of `output_dir`: work directories, files)."""
  if is_remote(output_dir):
    return  # no links on an object store
  for name in names:
    path = os.path.join(output_dir, name)
    is_dir = _is_directory_name(name)
    try:
      mode = os.lstat(path).st_mode
    except FileNotFoundError:
      continue
    if not (stat.S_ISDIR(mode) if is_dir else stat.S_ISREG(mode)):
      raise _wrong_kind(path, 'a directory' if is_dir else 'a regular file')


def _is_directory_name(name: str) -> bool:
  """Whether sftbeam makes `name` as a directory: a work directory or a
  split run's dataset."""
  return bool(filenames.WORK_DIR.fullmatch(name) or
              filenames.SPLIT_DIR.fullmatch(name))


def _remove(output_dir: str, names):
  """Deletes these entries of `output_dir` (those still there):
  dataset_info.json first (a split's own too), so readers stop accepting
  the directory at once, directories last."""
  infos = [name for name in names if name == filenames.INFO] + [
      FileSystems.join(name, filenames.INFO) for name in names
      if filenames.SPLIT_DIR.fullmatch(name)]
  for name in infos + sorted(set(names) - {filenames.INFO},
                             key=lambda name: (_is_directory_name(name), name)):
    path = FileSystems.join(output_dir, name)
    try:
      if _is_directory_name(name):
        delete_tree(path)
      else:
        delete_files([path])
    except FileNotFoundError:
      pass


class Earlier(NamedTuple):
  """What earlier runs left in a directory."""
  manifest: dict  # the directory's manifest, or None
  files: list  # the files it names that are there
  leftovers: list  # dead runs' work directories, the manifest's temp file


def _examine(output_dir: str, overwrite: bool, run_names) -> Earlier:
  """What earlier runs left; refuses (ConfigError) a directory holding
  anything unless `overwrite`, a file that no manifest names under a name
  this run may write (`run_names`, a regex), and a link or a file of
  another kind where sftbeam would delete or replace one."""
  entries = {_top_level(name) for name in _entries(output_dir)}
  entries.discard(filenames.LOCK)
  if not entries:
    return Earlier(None, [], [])
  if not overwrite:
    raise ConfigError(
        f'output directory {output_dir} is not empty ({len(entries)} '
        'entries): pass --overwrite to replace an earlier run, or choose '
        'another --output')
  found = _read_manifest(output_dir)
  files = sorted(entries & set(found['files'] if found else []))
  leftovers = sorted(name for name in entries if name == filenames.temp_name(filenames.MANIFEST) or
                     filenames.WORK_DIR.fullmatch(name))
  strangers = sorted(name for name in entries - set(files)
                     if run_names.fullmatch(name))
  if strangers:
    raise ConfigError(
        f'--output {output_dir} holds {strangers[0]}'
        f'{f" and {len(strangers) - 1} more" if len(strangers) > 1 else ""}, '
        'which no sftbeam run recorded writing there (an older sftbeam\'s '
        'output, or someone else\'s file) and which this run would replace or '
        'list as its own: move it away, or choose another --output')
  _check_kinds(output_dir, files + leftovers)
  return Earlier(found, files, leftovers)


class Claim:
  """An output directory locked for one run (batch or streaming): another
  run is refused until `release` (or the end of a `with` block)."""

  def __init__(self, output_dir: str, lock):
    self.output_dir = output_dir
    self._lock = lock

  def release(self):
    self._lock.release()

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    self.release()


class OutputClaim(Claim):
  """A batch run's claim: also the run's work directory in the output
  directory (`work_dir`), where the run writes its whole output.

  Use it as a context manager: a run that raises deletes its work
  directory and puts the manifest back (`abandon`), and the lock is released
  in any case.
  """

  def __init__(self, output_dir: str, lock, earlier: Earlier,
               created_dir: bool = False):
    super().__init__(output_dir, lock)
    self.run_id = lock.owner['run_id']
    self._work_dir_name = filenames.work_dir_name(self.run_id)
    self.work_dir = FileSystems.join(output_dir, self._work_dir_name)
    self._earlier = earlier
    self._replacing = False  # complete() has begun to change output_dir
    self._completed = False
    self._created_dir = created_dir  # a local directory this run made

  @property
  def replaces_a_complete_run(self) -> bool:
    """Whether complete() would replace a complete earlier run."""
    return bool({filenames.INFO, filenames.TRAIN} & set(self._earlier.files))

  def _write_manifest(self, state: str, files, running: bool):
    manifest.write_manifest(self.output_dir, manifest.new_manifest(
        self.run_id, self._lock.owner, state, files,
        self._work_dir_name if running else None))

  def start(self):
    """Records the work directory (beside the earlier run's files), then
    makes it."""
    self._write_manifest('running', self._earlier.files, running=True)
    if not is_remote(self.work_dir):
      os.mkdir(self.work_dir)

  def _new_files(self) -> list:
    """The files (and split directories) the run wrote at the top of its
    work directory."""
    entries = names_in(self.work_dir)
    names = [name for name in entries if '/' not in name and
             (is_remote(self.work_dir) or
              os.path.isfile(os.path.join(self.work_dir, name)))]
    splits = [name for name in filenames.SPLIT_DIRS
              if FileSystems.join(name, filenames.INFO) in entries or
              os.path.isfile(os.path.join(self.work_dir, name,
                                          filenames.INFO))]
    if filenames.INFO not in names and len(splits) < len(filenames.SPLIT_DIRS):
      raise ReplaceFailed(f'the run wrote no {filenames.INFO} in '
                          f'{self.work_dir}: it is not complete')
    return names + splits

  def _check_unchanged(self, new_files: list):
    """Raises ReplaceFailed when a file the run would move in or delete was
    added or changed in kind while it ran."""
    earlier = set(self._earlier.files)
    entries = {_top_level(name) for name in _entries(self.output_dir)}
    added = sorted((entries & set(new_files)) - earlier)
    try:
      _check_kinds(self.output_dir, earlier)
    except ConfigError as error:
      raise ReplaceFailed(str(error)) from None
    if added:
      raise ReplaceFailed(
          f'--output {self.output_dir} got a file {added[0]} while the run '
          'ran, under a name the run writes: the new run is not moved in, '
          'the directory is as before; move that file away and run again')

  def complete(self):
    """Replaces the earlier run's files by this run's (see the module
    docstring). Raises ReplaceFailed: before changing anything, when the
    directory changed meanwhile so that this cannot be done safely; after,
    when a file operation fails (the manifest then names both runs' files)."""
    new_files = self._new_files()
    self._check_unchanged(new_files)
    self._write_manifest('replacing', self._earlier.files + new_files,
                         running=True)
    self._replacing = True
    try:
      self._remove_split_temp_dirs(new_files)
      _remove(self.output_dir, self._earlier.files)
      # Last: dataset_info.json (or train/): now the run is readable.
      self._move_in(sorted(set(new_files) - {filenames.INFO} -
                           set(filenames.SPLIT_DIRS)))
      for name in filenames.SPLIT_DIRS + (filenames.INFO,):
        if name in new_files:
          self._move_in([name])
      delete_tree(self.work_dir)
    except (OSError, BeamIOError) as error:
      raise ReplaceFailed(
          f'moving the new run into {self.output_dir} failed '
          f'({str(error).splitlines()[0][:200]}): run again with '
          '--overwrite') from None
    self._write_manifest('complete', new_files, running=False)
    self._completed = True

  def _remove_split_temp_dirs(self, new_files):
    """The writers' temp files stay behind, as they do in the work dir."""
    for name in set(filenames.SPLIT_DIRS) & set(new_files):
      try:
        delete_tree(FileSystems.join(self.work_dir, name, filenames.TEMP_DIR))
      except FileNotFoundError:
        pass

  def _move_in(self, names):
    """Moves these files from the work directory to the output directory
    (a rename replaces whatever is there, never writes through it)."""
    if is_remote(self.work_dir):
      # An object store has no directories: a split's objects move one by one.
      names = [entry for entry in names_in(self.work_dir)
               if _top_level(entry) in names]
    FileSystems.rename(
        [FileSystems.join(self.work_dir, name) for name in names],
        [FileSystems.join(self.output_dir, name) for name in names])

  def abandon(self):
    """Deletes the work directory and puts the earlier manifest back as it
    was (what it names that is gone is gone: a dead run's work directory,
    say); once
    complete() has begun to change the directory, leaves it to the next
    run (the manifest names both runs' files)."""
    if self._replacing:
      return
    _remove(self.output_dir, [self._work_dir_name])
    if self._earlier.manifest is None:
      _remove(self.output_dir, [filenames.MANIFEST])
    else:
      manifest.write_manifest(self.output_dir, self._earlier.manifest)

  def __exit__(self, exc_type, exc, traceback):
    try:
      # Not on Ctrl-C: a Dataflow job may still be writing.
      if (exc_type is not None and issubclass(exc_type, Exception) and
          not self._completed):
        self.abandon()
    finally:
      self.release()
      if self._created_dir and not self._completed:
        _remove_if_empty(self.output_dir)


def _remove_if_empty(directory: str):
  """Removes a local directory this run made, if empty again: as it was,
  absent."""
  try:
    os.rmdir(directory)
  except OSError:
    pass


def _lock(output_dir: str, inputs, lock):
  """Checks `output_dir` against the inputs, makes it if absent (locally)
  and locks it (unless `lock`, held already); gives (lock, made it)."""
  if not is_remote(output_dir) and os.path.lexists(output_dir) and (
      not os.path.isdir(output_dir)):
    raise ConfigError(f'--output {output_dir} is a file, not a directory: '
                      'choose another --output')
  check_output_apart(output_dir, inputs)
  created_dir = False
  if not is_remote(output_dir) and not os.path.isdir(output_dir):
    try:
      os.makedirs(output_dir)
      created_dir = True
    except FileExistsError:
      pass  # a run started at the same moment made it: the lock decides
  if lock is None:
    try:
      lock = run_lock.acquire(output_dir,
                              run_lock.new_owner(filenames.new_run_id()))
    except BaseException:
      if created_dir:
        _remove_if_empty(output_dir)
      raise
  return lock, created_dir


def prepare_output_dir(output_dir: str, overwrite: bool, inputs=(),
                       lock=None) -> OutputClaim:
  """Claims `output_dir` for a batch run (see the module docstring).

  Raises ConfigError when another run holds it, it holds a file of the
  `inputs` patterns, it is not empty and overwrite is off, or it holds a
  file the run would replace but must not. `lock`: the directory's lock if
  the caller holds it already. The lock is held until the claim is
  released, or its process ends.
  """
  lock, created_dir = _lock(output_dir, inputs, lock)
  try:
    earlier = _examine(output_dir, overwrite, filenames.BATCH_NAMES)
    _remove(output_dir, earlier.leftovers)
    claim = OutputClaim(output_dir, lock, earlier, created_dir)
    claim.start()
  except BaseException:
    lock.release()
    if created_dir:
      _remove_if_empty(output_dir)
    raise
  return claim


def prepare_streaming_output_dir(output_dir: str, overwrite: bool,
                                 lock=None) -> Claim:
  """Claims `output_dir` for a streaming run, which writes straight into it:
  the same checks as prepare_output_dir, then (with overwrite) the earlier
  run's files are deleted now, and the manifest names the streaming run's
  fixed files. Release the claim when the run ends.
  """
  lock, _ = _lock(output_dir, (), lock)
  try:
    earlier = _examine(output_dir, overwrite, filenames.STREAMING_NAMES)
    _remove(output_dir, earlier.files + earlier.leftovers)
    manifest.write_manifest(output_dir, manifest.new_manifest(
        lock.owner['run_id'], lock.owner, 'running', _STREAMING_FILES))
  except BaseException:
    lock.release()
    raise
  return Claim(output_dir, lock)
