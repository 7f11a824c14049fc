"""transforms/dataset_info.py: atomic writes (never through a link, never
missing while replaced), window files found by name, not by pattern."""

import json
import os
import threading

import pytest

from output_dirs import OUTSIDE
from sftbeam.transforms import filenames
from sftbeam.transforms.dataset_info import (matching_paths,
                                             write_json_atomically)


def test_atomic_write_never_writes_through_a_link(tmp_path):
  """dataset_info.json and the manifest (and a streaming run's window
  stats): the temp file is created new, never through a link there; a link
  at the final name is replaced, not written through; a temp file left by
  a killed write is replaced."""
  victim = tmp_path / 'victim.txt'
  victim.write_bytes(OUTSIDE)
  output_dir = tmp_path / 'out'
  output_dir.mkdir()
  path = output_dir / filenames.INFO
  temp = output_dir / (filenames.INFO + '.incomplete')
  os.symlink(victim, temp)
  with pytest.raises(FileExistsError, match='a link or not a regular file'):
    write_json_atomically(str(path), {'run': 1})
  assert victim.read_bytes() == OUTSIDE and not path.exists()
  os.remove(temp)
  temp.write_bytes(b'left by a killed write')
  os.symlink(victim, path)
  write_json_atomically(str(path), {'run': 2})
  assert victim.read_bytes() == OUTSIDE
  assert not path.is_symlink() and json.loads(path.read_bytes()) == {'run': 2}
  assert sorted(os.listdir(output_dir)) == [filenames.INFO]


def test_a_streaming_runs_files_are_listed_in_a_directory_named_like_a_glob(
    tmp_path):
  """A streaming run lists its rejected and window-stats files; the
  directory's name is not a pattern."""
  output_dir = tmp_path / 'stream[1]'
  output_dir.mkdir()
  (tmp_path / 'stream1').mkdir()
  for directory in (output_dir, tmp_path / 'stream1'):
    (directory / 'rejected-a.jsonl').write_bytes(b'')
  assert matching_paths(str(output_dir), filenames.REJECTED_PREFIX,
                        filenames.REJECTED_SUFFIX) == [
                            str(output_dir / 'rejected-a.jsonl')]


def test_dataset_info_is_never_missing_while_replaced(tmp_path):
  """A reader polling the file sees the old or the new one, whole."""
  path = str(tmp_path / filenames.INFO)
  write_json_atomically(path, {'version': 0})
  seen, failures, done = set(), [], threading.Event()

  def poll():
    while not done.is_set():
      try:
        with open(path, encoding='utf-8') as handle:
          seen.add(json.load(handle)['version'])
      except (OSError, ValueError) as error:
        failures.append(repr(error))

  poller = threading.Thread(target=poll)
  poller.start()
  try:
    for version in range(1, 400):
      write_json_atomically(path, {'version': version, 'pad': 'x' * 5000})
  finally:
    done.set()
    poller.join()
  assert not failures, failures[:3]
  assert len(seen) > 1
  assert os.listdir(tmp_path) == [filenames.INFO]
