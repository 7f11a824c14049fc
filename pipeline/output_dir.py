"""Claiming the output directory for a run.

A directory with anything in it is refused unless --overwrite; with it, the
earlier run's dataset_info.json goes first (so readers stop accepting the
directory at once), then its shards, rejected files and fileio temp dirs.
Files sftbeam did not write are left alone.
"""

import fnmatch
import os
import shutil

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from sftbeam.pipeline.options import ConfigError
from sftbeam.transforms import schema
from sftbeam.transforms.paths import is_remote

_OWN_PATTERNS = (schema.INFO_FILE + '*', schema.SHARD_PREFIX + '-*',
                 schema.UNFINISHED_SHARD_PREFIX + '-*',
                 schema.REJECTED_PREFIX + '-*',
                 schema.WINDOW_STATS_PREFIX + '-*', '.temp*')


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


def _delete(output_dir: str, names: list):
  for name in names:
    path = FileSystems.join(output_dir, name)
    if not is_remote(output_dir) and os.path.isdir(path):
      shutil.rmtree(path)
    else:
      FileSystems.delete([path])


def _own_entries(output_dir: str) -> list:
  """sftbeam's entries, dataset_info.json first."""
  names = _entries(output_dir)
  return [name for pattern in _OWN_PATTERNS
          for name in sorted(fnmatch.filter(names, pattern))]


def prepare_output_dir(output_dir: str, overwrite: bool):
  """Raises ConfigError if `output_dir` holds anything and overwrite is off."""
  if not is_remote(output_dir) and os.path.lexists(output_dir) and (
      not os.path.isdir(output_dir)):
    raise ConfigError(f'--output {output_dir} is a file, not a directory: '
                      'choose another --output')
  entries = _entries(output_dir)
  if entries and not overwrite:
    raise ConfigError(
        f'output directory {output_dir} is not empty ({len(entries)} '
        'entries): pass --overwrite to replace an earlier run, or choose '
        'another --output')
  if overwrite:
    _delete(output_dir, _own_entries(output_dir))
  if not is_remote(output_dir):
    os.makedirs(output_dir, exist_ok=True)


def remove_empty_temp_dirs(output_dir: str):
  """fileio leaves its emptied local temp directories behind."""
  if is_remote(output_dir):
    return
  for name in fnmatch.filter(_entries(output_dir), '.temp*'):
    path = os.path.join(output_dir, name)
    if os.path.isdir(path) and not os.listdir(path):
      os.rmdir(path)
