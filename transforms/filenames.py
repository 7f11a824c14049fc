"""Every name a run writes in its output directory, built and matched here
and nowhere else: `--overwrite` touches only sftbeam's own files, so the
names the writers give and the patterns the checks match must agree.

  dataset_info.json                        INFO: written last, the run is
                                           complete
  batches-SSSSS-of-NNNNN.tfrecord[.gz]     a batch run's shards (.parquet
  batches-SSSSS-of-NNNNN.parquet           with --output_format parquet)
  rejected-SSSSS-of-NNNNN.jsonl            a batch run's rejected records
  unfinished-batches-DDDDD-IIIII-of-CCCCC  a shard slot's files before they
                                           are joined (in the work dir)
  KIND-START-END-PANE-RANDOM.SUFFIX        a streaming window firing's
                                           shard, rejected file or stats
  train/, validation/                      a split run's two datasets
                                           (each with dataset_info.json,
                                           shards; train/ the rejected)
  .sftbeam-manifest.json                   the run's manifest of its files
  .sftbeam-run-RUNID/                      a run's work directory
  temp/                                    the writers' temp files (in
                                           the work dir, or a split's)
  .sftbeam-lock                            the lock of the directory
  NAME.incomplete                          the temp file of an atomic write
"""

import re
import time
import uuid

INFO = 'dataset_info.json'
MANIFEST = '.sftbeam-manifest.json'
LOCK = '.sftbeam-lock'
TEMP_SUFFIX = '.incomplete'
SHARD_PREFIX = 'batches'
SHARD_SUFFIX = '.tfrecord'
GZIP_SUFFIX = '.gz'
PARQUET_SUFFIX = '.parquet'
REJECTED_PREFIX = 'rejected'
REJECTED_SUFFIX = '.jsonl'
WINDOW_STATS_PREFIX = 'window-stats'
WINDOW_STATS_SUFFIX = '.json'
TEMP_DIR = 'temp'
TRAIN = 'train'
VALIDATION = 'validation'
# Moved into the output directory in this order: train, the dataset a
# trainer waits for, last.
SPLIT_DIRS = (VALIDATION, TRAIN)
_UNFINISHED_SHARD_PREFIX = 'unfinished-batches'
_WORK_DIR_PREFIX = '.sftbeam-run-'
_TIME_FORMAT = '%Y%m%dT%H%M%SZ'


# ---------------------------------------------------------------- builders

def temp_name(name: str) -> str:
  """The temp file an atomic write of `name` goes through."""
  return name + TEMP_SUFFIX


def shard_suffix(compression: str, output_format: str = 'tfrecord') -> str:
  """A shard's suffix: Parquet compresses inside the file, TFRecord as a
  whole (.gz)."""
  if output_format == 'parquet':
    return PARQUET_SUFFIX
  return SHARD_SUFFIX + (GZIP_SUFFIX if compression == 'gzip' else '')


def is_parquet_shard(name: str) -> bool:
  return name.endswith(PARQUET_SUFFIX)


def shard_name(slot: int, num_shards: int, suffix: str) -> str:
  return f'{SHARD_PREFIX}-{slot:05d}-of-{num_shards:05d}{suffix}'


def shard_names(num_shards: int, suffix: str) -> list:
  """The names of a batch run's shards, known before it starts."""
  return [shard_name(slot, num_shards, suffix) for slot in range(num_shards)]


def slot_file_name(slot: int, index: int, count: int, suffix: str) -> str:
  """A file of shard slot `slot` before the slot's files are joined."""
  return (f'{_UNFINISHED_SHARD_PREFIX}-{slot:05d}-{index:05d}-of-'
          f'{count:05d}{suffix}')


def utc(timestamp) -> str:
  """A Beam timestamp as names and window stats write it."""
  return timestamp.to_utc_datetime().strftime(_TIME_FORMAT)


def window_file_name(prefix: str, suffix: str, window, pane) -> str:
  """`<prefix>-<start>-<end>-<pane>-<random><suffix>` of a window firing.

  fileio's own names leave the pane out, so a second firing of a window, or
  a restarted run writing the same window, would reuse a name; the random
  part keeps every file's name its own.
  """
  pane_index = pane.index if pane else 0
  return (f'{prefix}-{utc(window.start)}-{utc(window.end)}-{pane_index}-'
          f'{uuid.uuid4().hex[:12]}{suffix}')


def new_run_id() -> str:
  """A run id: UTC start time and a random part, unique per run."""
  return time.strftime(_TIME_FORMAT, time.gmtime()) + '-' + (
      uuid.uuid4().hex[:8])


def work_dir_name(run_id: str) -> str:
  return _WORK_DIR_PREFIX + run_id


# ---------------------------------------------------------------- patterns

def _either(*patterns) -> str:
  return '(?:' + '|'.join(patterns) + ')'


_GZIP = rf'(?:{re.escape(GZIP_SUFFIX)})?'
# A shard's suffix, either format.
_SHARD_SUFFIX = _either(re.escape(SHARD_SUFFIX) + _GZIP,
                        re.escape(PARQUET_SUFFIX))
_INFO = rf'{re.escape(INFO)}(?:{re.escape(TEMP_SUFFIX)})?'
_COUNTED = r'-\d{5}-of-\d{5}'
_SHARD = rf'{re.escape(SHARD_PREFIX)}{_COUNTED}{_SHARD_SUFFIX}'
_REJECTED = rf'{re.escape(REJECTED_PREFIX)}{_COUNTED}{re.escape(REJECTED_SUFFIX)}'
_WINDOW = r'-\d{8}T\d{6}Z-\d{8}T\d{6}Z-\d+-[0-9a-f]{12}'
_WINDOW_FILE = (
    _either(*map(re.escape, (SHARD_PREFIX, REJECTED_PREFIX,
                             WINDOW_STATS_PREFIX))) + _WINDOW +
    _either(re.escape(SHARD_SUFFIX) + _GZIP, re.escape(REJECTED_SUFFIX),
            re.escape(WINDOW_STATS_SUFFIX)))
# A split run's dataset directories.
SPLIT_DIR = re.compile(_either(*map(re.escape, SPLIT_DIRS)))
# A work directory's name: sftbeam's alone, so one that no manifest names
# (its run killed as it finished) is known to be a leftover.
WORK_DIR = re.compile(re.escape(_WORK_DIR_PREFIX) +
                      r'\d{8}T\d{6}Z-[0-9a-f]{8}')
# The names a batch run gives its files, and a streaming run's window files:
# one of them already there, but not in a manifest, is someone else's file
# (which the run would replace) or an earlier streaming run's (which
# --overwrite would leave beside the new run's files).
BATCH_NAMES = re.compile(_either(_INFO, _SHARD, _REJECTED, _WINDOW_FILE,
                                 SPLIT_DIR.pattern))
# A streaming run lists every file of these patterns as its own.
STREAMING_NAMES = re.compile(_either(
    _INFO,
    rf'{re.escape(SHARD_PREFIX)}-.*{_SHARD_SUFFIX}',
    rf'{re.escape(REJECTED_PREFIX)}-.*{re.escape(REJECTED_SUFFIX)}',
    rf'{re.escape(WINDOW_STATS_PREFIX)}-.*{re.escape(WINDOW_STATS_SUFFIX)}'
    rf'(?:{re.escape(TEMP_SUFFIX)})?'))
# What a manifest may name as a file: sftbeam's kinds of files, nothing
# else (the manifest's own temp file among them).
LISTABLE = re.compile(_either(STREAMING_NAMES.pattern,
                              re.escape(temp_name(MANIFEST)),
                              SPLIT_DIR.pattern))
# A shard as dataset_info.json lists it (batch or window shard).
SHARD_ENTRY = re.compile(rf'{re.escape(SHARD_PREFIX)}-[A-Za-z0-9._-]+'
                         rf'{_SHARD_SUFFIX}')


def kind_pattern(prefix: str, suffix: str) -> str:
  """The fnmatch pattern of every file `<prefix>-*<suffix>`."""
  return f'{prefix}-*{suffix}'
