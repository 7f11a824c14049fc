"""Streaming outputs: fixed windows of wall-clock time, and what each writes.

Up to the batches everything stays in the global window, which never
expires, so nothing can be late there (transforms/batch.py flushes a
bucket's partial batch `max_buffering_seconds` after its first record).
Batches, rejected records and stats are then stamped with the wall-clock
time they reach `IntoWriteWindows` and put in fixed windows: a window's
shards hold the batches completed in it. Such a timestamp is never behind
the watermark (the DirectRunner's Pub/Sub watermark is the time of its last
pull, Dataflow's an estimate of the oldest unacknowledged publish time), so
each window fires once, when the watermark passes its end. Should anything
still come late, the allowed lateness and the late trigger give it a pane
(files) of its own instead of dropping it.

Per window firing: shards and rejected files named
`<prefix>-<start>-<end>-<pane>-<random>`, and a `window-stats-...json`
file (counts and files of the firing).
"""

import collections
import os
import time

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import trigger, window
from apache_beam.utils.windowed_value import PaneInfoTiming

from sftbeam.transforms import filenames
from sftbeam.transforms.dataset_info import write_json_atomically
from sftbeam.transforms.stats import summarize

# A safety net only: stamped with the wall-clock time, elements are never
# behind the watermark (see the module docstring).
ALLOWED_LATENESS_SECONDS = 3600


def write_windows(window_seconds: int) -> beam.WindowInto:
  """Fixed windows that fire once when the watermark passes their end, and
  again for each late element (within ALLOWED_LATENESS_SECONDS), each
  firing holding only what came since the last (discarding)."""
  return beam.WindowInto(
      window.FixedWindows(window_seconds),
      trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
      allowed_lateness=ALLOWED_LATENESS_SECONDS,
      accumulation_mode=trigger.AccumulationMode.DISCARDING)


class IntoWriteWindows(beam.PTransform):
  """Elements -> the same, stamped with the wall-clock time, in fixed windows.

  Each window fires when the watermark passes its end; a late element would
  fire a late pane of its own (nothing is dropped within an hour). `clock`
  (seconds since the epoch) is for tests.
  """

  def __init__(self, window_seconds: int, clock=time.time):
    super().__init__()
    self._window_seconds = window_seconds
    self._clock = clock

  def expand(self, pcoll):
    clock = self._clock
    return (
        pcoll
        | 'StampNow' >> beam.Map(
            lambda element: window.TimestampedValue(element, clock()))
        | 'FixedWindows' >> write_windows(self._window_seconds))


class WriteWindowedFiles(beam.PTransform):
  """Windowed elements -> files of each window firing; gives FileResults."""

  def __init__(self, output_dir: str, prefix: str, suffix: str, sink_fn,
               shards: int):
    super().__init__()
    self._output_dir = output_dir
    self._prefix = prefix
    self._suffix = suffix
    self._sink_fn = sink_fn
    self._shards = shards

  def _file_naming(self, window_, pane, *unused_shard_and_destination):
    return filenames.window_file_name(self._prefix, self._suffix, window_, pane)

  def expand(self, pcoll):
    return pcoll | 'WriteToFiles' >> fileio.WriteToFiles(
        path=self._output_dir, file_naming=self._file_naming,
        sink=self._sink_fn, shards=self._shards,
        # Every element goes through fileio's sharding GroupByKey: at most
        # `shards` files per window firing, not one per bundle.
        max_writers_per_bundle=0)


class WriteWindowStats(beam.DoFn):
  """('', {'shards', 'rejected_files', 'stats'}) of a window firing ->
  ('', {'stats', 'shards'}).

  `shards` are the firing's shard entries (tfrecord.describe_shard). Writes
  the firing's `window-stats-<start>-<end>-<pane>-<random>.json` (window,
  pane, counts, summed stats, shard entries, rejected files) and gives its
  summed stats and shard entries.
  """

  def __init__(self, output_dir: str):
    self._output_dir = output_dir

  def process(self, keyed_groups, window_=beam.DoFn.WindowParam,
              pane=beam.DoFn.PaneInfoParam):
    _, groups = keyed_groups
    stats = collections.Counter()
    for window_stats in groups['stats']:
      stats.update(window_stats)
    window_file = {
        'window': {'start': filenames.utc(window_.start),
                   'end': filenames.utc(window_.end)},
        'pane': {'index': pane.index,
                 'timing': PaneInfoTiming.to_string(pane.timing)},
        'counts': summarize(stats),
        'stats': dict(stats),
        'shards': sorted(groups['shards'], key=lambda entry: entry['name']),
        'rejected_files': sorted(map(os.path.basename,
                                     groups['rejected_files'])),
        'written_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }
    name = filenames.window_file_name(filenames.WINDOW_STATS_PREFIX,
                                      filenames.WINDOW_STATS_SUFFIX, window_,
                                      pane)
    write_json_atomically(FileSystems.join(self._output_dir, name),
                          window_file)
    yield '', {'stats': dict(stats), 'shards': window_file['shards']}
