"""Paths: telling local ones from remote ones (gs://, s3://, ...), and
listing, creating and deleting files by their exact paths.

Beam's FileSystems.match and FileSystems.delete read `[`, `*` and `?` in a
path as glob characters, with no way to escape them: a directory such as
`runs/run[1]` would match `runs/run1` and never itself. So sftbeam lists
and deletes local files with os functions, and refuses a remote --output
holding one of these characters (pipeline/options.py).
"""

import errno
import os
import re
import shutil

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


def file_size(path: str) -> int:
  """The size of the file at `path`, by its exact path."""
  return FileSystems.get_filesystem(path).metadata(path).size_in_bytes


def delete_files(paths):
  """Deletes these files (local ones by their exact path, never what a
  link points to)."""
  for path in paths:
    if is_remote(path):
      FileSystems.delete([path])
    else:
      os.remove(path)


def delete_tree(directory: str):
  """Deletes a directory and everything below it (a local one never
  through a link; a remote one: every object under the prefix)."""
  if is_remote(directory):
    FileSystems.delete([directory.rstrip('/') + '/'])
  else:
    shutil.rmtree(directory)


def create_new_file(path: str):
  """A local file opened for writing that did not exist before: never an
  existing file, nor one a symbolic link at `path` points to.

  A regular file already at `path` is a temp file left by a write that was
  killed (callers use names that are theirs alone): it is replaced. Raises
  FileExistsError, naming `path`, for a link or anything else there.
  """
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
  try:
    return os.fdopen(os.open(path, flags, 0o644), 'wb')
  except FileExistsError:
    if os.path.islink(path) or not os.path.isfile(path):
      raise FileExistsError(
          errno.EEXIST, 'a link or not a regular file where sftbeam writes '
          'a file (it never writes through one): remove it', path) from None
  os.remove(path)
  return os.fdopen(os.open(path, flags, 0o644), 'wb')

