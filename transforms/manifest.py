"""The manifest: the list of what sftbeam wrote in an output directory.

`--overwrite` replaces what this manifest names, and nothing else: never
files found by a name pattern. It is DIR/.sftbeam-manifest.json, rewritten
by every run before the run changes anything in DIR:

  run_id, owner   the run that wrote the manifest (pid, host, start time)
  state           "running": the run writes its whole output in work_dir,
                  beside an earlier run; "replacing": it moves that output
                  into DIR in place of the earlier run; "complete": done
  files           the names, in DIR, of the files sftbeam's runs wrote
                  there: the earlier run's while running, both runs' while
                  replacing, exactly this run's once complete
  work_dir        the run's own directory, DIR/.sftbeam-run-ID (null once
                  complete): everything in it is the run's

A manifest is trusted only as far as DIR: every name in it must be a plain
entry of DIR (no `/`, `..`, absolute path), its work_dir a work directory's
name; a manifest that says otherwise is not read further.
"""

import json

from apache_beam.io.filesystems import FileSystems

from sftbeam.transforms import filenames
from sftbeam.transforms.dataset_info import write_json_atomically
from sftbeam.version import VERSION

# A manifest lists a few names per shard: far below this.
MAX_MANIFEST_BYTES = 64 << 20


class UnreadableManifest(ValueError):
  """The manifest is not one sftbeam wrote, or names paths outside DIR."""


def _plain_name(name) -> bool:
  """A name of an entry directly in the directory: nothing else is ever
  deleted, whatever a manifest says."""
  return (isinstance(name, str) and name not in ('', '.', '..') and
          '/' not in name and '\\' not in name and '\0' not in name)


def new_manifest(run_id: str, owner: dict, state: str, files,
                 work_dir: str = None) -> dict:
  """A manifest written by this version of sftbeam (see the module doc)."""
  return {'sftbeam_version': VERSION, 'run_id': run_id, 'owner': owner,
          'state': state, 'files': sorted(set(files)), 'work_dir': work_dir}


def write_manifest(output_dir: str, manifest: dict):
  """Writes `manifest` as the directory's manifest."""
  write_json_atomically(FileSystems.join(output_dir, filenames.MANIFEST),
                        manifest)


def parse_manifest(data: bytes) -> dict:
  """The manifest in `data` (a dict), its `files` and `work_dir` checked.
  Raises UnreadableManifest."""
  if len(data) > MAX_MANIFEST_BYTES:
    raise UnreadableManifest(f'more than {MAX_MANIFEST_BYTES} bytes')
  try:
    manifest = json.loads(data)
    files, work_dir = manifest['files'], manifest['work_dir']
    # name_lists: lists of names in the work directory, in manifests of
    # earlier versions; no longer used and never read, but checked.
    names = files + manifest.get('name_lists', [])
  except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
    raise UnreadableManifest('not a manifest sftbeam wrote') from None
  if not isinstance(names, list) or not all(map(_plain_name, names)):
    raise UnreadableManifest('it names files outside the directory')
  if work_dir is not None and not (isinstance(work_dir, str) and
                                   filenames.WORK_DIR.fullmatch(work_dir)):
    raise UnreadableManifest('its work_dir is not a work directory of sftbeam')
  return manifest
