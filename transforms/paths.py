"""Paths: telling local ones from remote ones (gs://, s3://, ...), and
listing a directory by its exact path.

Beam's FileSystems.match reads `[`, `*` and `?` in a path as glob
characters, with no way to escape them: a directory such as `runs/run[1]`
would match `runs/run1` and never itself. So sftbeam lists a local
directory with os.listdir, and refuses a remote --output holding one of
these characters (pipeline/options.py).
"""

import os
import re

from apache_beam.io.filesystems import FileSystems

GLOB_CHARACTERS = re.compile(r'[*?\[]')


def is_remote(path: str) -> bool:
  """True for a path on a remote Beam filesystem: it names a scheme."""
  return '://' in path


def names_in(directory: str) -> list:
  """Names of the entries directly in a local directory; for a remote one,
  of every object below it (`a/b/c`), relative to it. [] if absent."""
  if not is_remote(directory):
    return os.listdir(directory) if os.path.isdir(directory) else []
  prefix = directory.rstrip('/') + '/'
  match = FileSystems.match([prefix + '**'])[0]
  return [metadata.path[len(prefix):] for metadata in match.metadata_list]
