"""Google Cloud names, checked offline by their documented rules.

Beam given a name Google Cloud would refuse does not say so: with an
invalid bucket in --temp_location and --staging_location it tries to make a
default bucket, retrying credentials and DNS for minutes, and an invalid
Pub/Sub project ends in a traceback. These checks refuse such names before
anything runs. The rules:
  bucket        https://cloud.google.com/storage/docs/buckets#naming
  project id    https://cloud.google.com/resource-manager/docs/creating-managing-projects
  Pub/Sub name  https://cloud.google.com/pubsub/docs/create-topic#resource_names
Each function gives what is wrong with a name in words, or None.
"""

import re
from typing import Optional

_BUCKET_CHARS = re.compile(r'[a-z0-9][a-z0-9._-]*[a-z0-9]')
_IP_ADDRESS = re.compile(r'\d+\.\d+\.\d+\.\d+')
# A project id, after an optional domain prefix (`example.com:my-project`).
_PROJECT_ID = re.compile(r'([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]')
_PUBSUB_NAME = re.compile(r'[A-Za-z][A-Za-z0-9._~+%-]{2,254}')

# In short, for messages (docs/dataflow.md has them whole).
BUCKET_RULES = '3-63 lowercase letters, digits, "-", "_" or "."'
PROJECT_RULES = '6-30 lowercase letters, digits or "-", from a letter'
PUBSUB_NAME_RULES = '3-255 letters, digits or "-_.~+%", from a letter'


def bucket_problem(path: str) -> Optional[str]:
  """What breaks Cloud Storage's rules in the bucket of a gs:// `path`
  (None for a valid one, or a path elsewhere)."""
  if not path.startswith('gs://'):
    return None
  bucket = path[len('gs://'):].split('/', 1)[0]
  parts = bucket.split('.')
  if (not _BUCKET_CHARS.fullmatch(bucket) or not 3 <= len(bucket) <= 222 or
      ('.' not in bucket and len(bucket) > 63) or
      max(map(len, parts)) > 63 or bucket.startswith('goog') or
      'google' in bucket or _IP_ADDRESS.fullmatch(bucket)):
    return (f'bucket name "{bucket}" is not a Cloud Storage bucket name '
            f'({BUCKET_RULES})')
  return None


def project_problem(project: str) -> Optional[str]:
  """What breaks the rules of Google Cloud project ids in `project`."""
  if not _PROJECT_ID.fullmatch(project):
    return (f'project id "{project}" is not a Google Cloud project id '
            f'({PROJECT_RULES})')
  return None


def pubsub_problem(path: str, kind: str) -> Optional[str]:
  """What is wrong with `path` as a Pub/Sub `kind` ("topics" or
  "subscriptions") path, projects/PROJECT/KIND/NAME."""
  parts = path.split('/')
  if len(parts) != 4 or parts[0] != 'projects' or parts[2] != kind:
    return f'"{path}" is not projects/PROJECT/{kind}/NAME'
  problem = project_problem(parts[1])
  if problem:
    return problem
  if not _PUBSUB_NAME.fullmatch(parts[3]) or parts[3].startswith('goog'):
    return (f'{kind[:-1]} name "{parts[3]}" is not a Pub/Sub name '
            f'({PUBSUB_NAME_RULES})')
  return None
