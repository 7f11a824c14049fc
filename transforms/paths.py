"""Telling local paths from remote ones (gs://, s3://, ...)."""


def is_remote(path: str) -> bool:
  """True for a path on a remote Beam filesystem: it names a scheme."""
  return '://' in path
