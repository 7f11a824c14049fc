"""A run's record of what it writes in its output directory.

`--overwrite` deletes what such a record names, and nothing else: never
files found by a name pattern. The record of a directory's last run is
DIR/.sftbeam-manifest.json, written before the run writes its first byte:

  run_id, owner        the run (pid, host, start time)
  state                "running", then "complete"
  files                names of the files it writes, relative to DIR (its
                       shards among them: num_shards, named in advance)
  work_dir             its own directory for temp files, DIR/.sftbeam-run-ID
  name_lists           files in work_dir where a writing step lists the
                       names it gives files that could not be named in
                       advance (rejected files: as many as the writers
                       made), written before the first file gets its name

When the run completes, the names in the lists join `files` and the work
directory and lists are gone.
"""

import json
import time
import uuid

from apache_beam.io.filesystems import FileSystems

MANIFEST_FILE = '.sftbeam-manifest.json'
WORK_DIR_PREFIX = '.sftbeam-run-'
# The list of names a writing step keeps in the work directory
# (transforms/write.py: rejected files, as many as the writers made).
REJECTED_LIST = 'rejected'
_NAMES_SUFFIX = '.names.json'


def new_run_id() -> str:
  """A run id: UTC start time and a random part, unique per run."""
  return time.strftime('%Y%m%dT%H%M%SZ', time.gmtime()) + '-' + (
      uuid.uuid4().hex[:8])


def work_dir_name(run_id: str) -> str:
  return WORK_DIR_PREFIX + run_id


def new_work_dir(output_dir: str) -> str:
  """The path of a work directory for a run with no record (tests, dry
  runs): its names are recorded nowhere."""
  return FileSystems.join(output_dir, work_dir_name(new_run_id()))


def names_list_name(step: str) -> str:
  """The name, in the work directory, of the list a writing step keeps."""
  return step + _NAMES_SUFFIX


def record_names(work_dir: str, step: str, names: list):
  """Writes the names that `step` is about to give files, before it does."""
  path = FileSystems.join(work_dir, names_list_name(step))
  with FileSystems.create(path) as handle:
    handle.write(json.dumps(sorted(names)).encode('utf-8'))


def read_json(path: str):
  """The JSON value of the file at `path` (local or remote)."""
  with FileSystems.open(path) as handle:
    return json.loads(handle.read())
