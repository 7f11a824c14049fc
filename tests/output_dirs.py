"""Output directories as tests build and compare them."""

import json
import os
import pathlib
import stat

from sftbeam.transforms import filenames

OUTSIDE = b'a file outside the output directory\n'


def tree(directory) -> dict:
  """{relative path: what it is} below `directory`, links not followed:
  a regular file's bytes, a link's target, 'directory' or 'other'."""
  found = {}
  for parent, names, files in os.walk(directory):
    for name in names + files:
      path = os.path.join(parent, name)
      mode = os.lstat(path).st_mode
      found[os.path.relpath(path, directory)] = (
          ('link', os.readlink(path)) if stat.S_ISLNK(mode) else
          'directory' if stat.S_ISDIR(mode) else
          pathlib.Path(path).read_bytes() if stat.S_ISREG(mode) else 'other')
  return found


def standin_earlier_run(output_dir):
  """A directory with what an earlier run left there, as its manifest names
  it (dataset_info.json, a shard), and the user's notes.txt."""
  output_dir.mkdir()
  files = ['batches-00000-of-00001.tfrecord', filenames.INFO]  # sorted
  for name in files:
    (output_dir / name).write_bytes(b'earlier run')
  (output_dir / 'notes.txt').write_bytes(b'keep me')
  # As an earlier version wrote it: with the (empty) name_lists it had.
  manifest = {'run_id': 'earlier', 'owner': None, 'state': 'complete',
              'files': files, 'work_dir': None, 'name_lists': [],
              'sftbeam_version': '0.2.0'}
  (output_dir / filenames.MANIFEST).write_text(
      json.dumps(manifest, indent=2, sort_keys=True))
