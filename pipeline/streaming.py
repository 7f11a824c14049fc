"""Streaming mode: records from Pub/Sub in, windowed TFRecord shards out.

  ReadPubSub -> ToLineChunks -> LinesToBatches (the batch mode's parse,
  tokenize+bucket, batch, pad) -> Window* -> WriteShards, WriteRejected
  (+ PublishDeadLetters), SumWindowStats -> CollectWindow ->
  WriteWindowStats -> UpdateDatasetInfo

Each message body is one JSON record, validated as a batch line is. Its
`source` is `<subscription or topic>#<message id>` and its line number is
null; its id comes from the body's id field or the content hash, exactly as
in batch mode (attributes are not read), so a record gets the same id and
the same row in both modes.

Time. Up to the batches everything stays in the global window, which never
expires, so nothing can be late there: GroupIntoBatches flushes a bucket's
batch when it is full or `max_buffering_seconds` after its first record.
Batches, rejected records and stats are then stamped with the wall-clock
time they reach the window step and put in fixed windows of
`window_seconds`: a window's shards hold the batches completed in it. Such a
timestamp is never behind the watermark (the DirectRunner's Pub/Sub
watermark is the time of its last pull, Dataflow's an estimate of the oldest
unacknowledged publish time), so each window fires once, when the watermark
passes its end. Should anything still come late, the allowed lateness and
the late trigger give it a pane (files) of its own instead of dropping it.

Outputs. Per window firing: shards and rejected files named
`<prefix>-<start>-<end>-<pane>-<random>`, and a
`window-stats-...json` record (counts and files of the firing). After each,
dataset_info.json is rewritten (atomically) with the running counts and every
shard in the directory, so the readers read a streaming directory as they
read a batch one.
"""

import collections
import json
import os
import time
import uuid

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import (PipelineOptions,
                                                  StandardOptions)
from apache_beam.transforms import trigger, window
from apache_beam.transforms.userstate import CombiningValueStateSpec
from apache_beam.utils.windowed_value import PaneInfoTiming

from sftbeam.pipeline import remote
from sftbeam.pipeline.graph import LinesToBatches
from sftbeam.pipeline.options import ConfigError
from sftbeam.pipeline.output_dir import STREAMING_NAMES, prepare_output_dir
from sftbeam.pipeline.readers import load_dataset_info
from sftbeam.transforms import progress, schema
from sftbeam.transforms.records import LineChunk
from sftbeam.transforms.stats import (SumStatsFn, WriteDatasetInfoFn, summarize,
                              write_json_atomically)
from sftbeam.transforms.write import TFRecordSink, shard_suffix

# The DirectRunner's streaming engine, named directly: plain DirectRunner
# would first try Prism, which downloads a binary.
STREAMING_RUNNER = 'BundleBasedDirectRunner'
# A safety net only: stamped with the wall-clock time, elements are never
# behind the watermark (see the module docstring).
ALLOWED_LATENESS_SECONDS = 3600
_TIME_FORMAT = '%Y%m%dT%H%M%SZ'


def streaming_options(beam_args) -> PipelineOptions:
  options = PipelineOptions(beam_args)
  standard = options.view_as(StandardOptions)
  standard.streaming = True
  if not standard.runner:
    standard.runner = STREAMING_RUNNER
  return options


def message_to_chunk(message, source: str, max_line_bytes: int) -> LineChunk:
  """PubsubMessage -> a LineChunk of one line, the message body.

  A body over max_line_bytes is cut like a long file line, its real size
  kept, so the parser rejects it as line_too_long.
  """
  data = message.data
  return LineChunk(f'{source}#{message.message_id}',
                   [(None, data[:max_line_bytes], len(data))])


def _stamp_now(element):
  return window.TimestampedValue(element, time.time())


class IntoWriteWindows(beam.PTransform):
  """Elements -> the same, stamped with the wall-clock time, in fixed windows.

  Each window fires when the watermark passes its end; a late element would
  fire a late pane of its own (nothing is dropped within an hour).
  """

  def __init__(self, window_seconds: int):
    super().__init__()
    self._window_seconds = window_seconds

  def expand(self, pcoll):
    return (
        pcoll
        | 'StampNow' >> beam.Map(_stamp_now)
        | 'FixedWindows' >> beam.WindowInto(
            window.FixedWindows(self._window_seconds),
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            allowed_lateness=ALLOWED_LATENESS_SECONDS,
            accumulation_mode=trigger.AccumulationMode.DISCARDING))


def _utc(timestamp) -> str:
  return timestamp.to_utc_datetime().strftime(_TIME_FORMAT)


def window_file_name(prefix: str, suffix: str, window_, pane) -> str:
  """`<prefix>-<start>-<end>-<pane>-<random><suffix>` of a window firing.

  fileio's own names leave the pane out, so a second firing of a window, or
  a restarted run writing the same window, would reuse a name; the random
  part keeps every file's name its own.
  """
  pane_index = pane.index if pane else 0
  return (f'{prefix}-{_utc(window_.start)}-{_utc(window_.end)}-{pane_index}-'
          f'{uuid.uuid4().hex[:12]}{suffix}')


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
    return window_file_name(self._prefix, self._suffix, window_, pane)

  def expand(self, pcoll):
    return pcoll | 'WriteToFiles' >> fileio.WriteToFiles(
        path=self._output_dir, file_naming=self._file_naming,
        sink=self._sink_fn, shards=self._shards,
        # Every element goes through fileio's sharding GroupByKey: at most
        # `shards` files per window firing, not one per bundle.
        max_writers_per_bundle=0)


def _matching_paths(output_dir: str, prefix: str, suffix: str) -> list:
  pattern = FileSystems.join(output_dir, f'{prefix}-*{suffix}')
  return [metadata.path
          for metadata in FileSystems.match([pattern])[0].metadata_list]


class _WriteWindowStatsFn(beam.DoFn):
  """('', {'shards', 'rejected_files', 'stats'}) of a window firing -> stats.

  Writes the firing's `window-stats-<start>-<end>-<pane>-<random>.json`
  (window, pane, counts, summed stats, files) and gives the summed stats.
  """

  def __init__(self, output_dir: str):
    self._output_dir = output_dir

  def process(self, keyed_groups, window_=beam.DoFn.WindowParam,
              pane=beam.DoFn.PaneInfoParam):
    _, groups = keyed_groups
    stats = collections.Counter()
    for window_stats in groups['stats']:
      stats.update(window_stats)
    record = {
        'window': {'start': _utc(window_.start), 'end': _utc(window_.end)},
        'pane': {'index': pane.index,
                 'timing': PaneInfoTiming.to_string(pane.timing)},
        'counts': summarize(stats),
        'stats': dict(stats),
        'shards': sorted(map(os.path.basename, groups['shards'])),
        'rejected_files': sorted(map(os.path.basename,
                                     groups['rejected_files'])),
        'written_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }
    name = window_file_name(schema.WINDOW_STATS_PREFIX,
                            schema.WINDOW_STATS_SUFFIX, window_, pane)
    write_json_atomically(FileSystems.join(self._output_dir, name), record)
    progress.add('windows_written')
    yield '', dict(stats)


class _UpdateDatasetInfoFn(WriteDatasetInfoFn):
  """('', stats of one window firing) -> dataset_info.json, rewritten.

  One key, so one firing at a time: the running counts (those of an earlier
  run continued in this directory, plus this run's) and every shard and
  rejected file in the directory.
  """
  TOTALS = CombiningValueStateSpec('totals', coders.PickleCoder(),
                                   SumStatsFn())

  def __init__(self, output_dir: str, config: dict, earlier_stats: dict):
    super().__init__(output_dir, config, config['tokenizer'],
                     config['special_tokens_in_text'])
    self._earlier_stats = earlier_stats

  def process(self, keyed_stats, totals=beam.DoFn.StateParam(TOTALS)):
    totals.add(keyed_stats[1])
    stats = collections.Counter(self._earlier_stats)
    stats.update(totals.read())
    yield self.write_info(
        dict(stats),
        _matching_paths(self._output_dir, schema.SHARD_PREFIX,
                        shard_suffix(self._config['compression'])),
        _matching_paths(self._output_dir, schema.REJECTED_PREFIX,
                        schema.REJECTED_SUFFIX))


def _dead_letter(rejected) -> PubsubMessage:
  return PubsubMessage(rejected.to_json().encode('utf-8'),
                       {'reason': rejected.reason})


def build_streaming_pipeline(root, config, earlier_stats=None):
  """Adds the streaming job under `root`; gives the info dict of each update.

  `earlier_stats`: the summed stats of an earlier run this one continues.
  """
  source = config.input_subscription or config.input_topic
  outputs = (
      root
      | 'ReadPubSub' >> beam.io.ReadFromPubSub(
          topic=config.input_topic or None,
          subscription=config.input_subscription or None,
          with_attributes=True)
      | 'ToLineChunks' >> beam.Map(message_to_chunk, source,
                                   config.max_line_bytes)
      | 'LinesToBatches' >> LinesToBatches(config,
                                           config.max_buffering_seconds))
  if config.dead_letter_topic:
    _ = (outputs['rejected']
         | 'ToDeadLetters' >> beam.Map(_dead_letter)
         | 'PublishDeadLetters' >> beam.io.WriteToPubSub(
             config.dead_letter_topic, with_attributes=True))
  shard_results = (
      outputs['batches']
      | 'WindowBatches' >> IntoWriteWindows(config.window_seconds)
      | 'WriteShards' >> WriteWindowedFiles(
          config.output, schema.SHARD_PREFIX, shard_suffix(config.compression),
          lambda _: TFRecordSink(config.compression), config.num_shards))
  rejected_results = (
      outputs['rejected']
      | 'WindowRejected' >> IntoWriteWindows(config.window_seconds)
      | 'RejectedToJson' >> beam.Map(lambda rejected: rejected.to_json())
      | 'WriteRejected' >> WriteWindowedFiles(
          config.output, schema.REJECTED_PREFIX, schema.REJECTED_SUFFIX,
          lambda _: fileio.TextSink(), 1))
  window_stats = (
      outputs['stats']
      | 'WindowStats' >> IntoWriteWindows(config.window_seconds)
      | 'SumWindowStats' >> beam.CombineGlobally(
          SumStatsFn()).without_defaults())
  return (
      {'shards': shard_results | 'ShardNames' >> beam.Map(
          lambda result: ('', result.file_name)),
       'rejected_files': rejected_results | 'RejectedNames' >> beam.Map(
           lambda result: ('', result.file_name)),
       'stats': window_stats | 'KeyStats' >> beam.WithKeys('')}
      | 'CollectWindow' >> beam.CoGroupByKey()
      | 'WriteWindowStats' >> beam.ParDo(_WriteWindowStatsFn(config.output))
      | 'ToGlobalWindow' >> beam.WindowInto(window.GlobalWindows())
      | 'UpdateDatasetInfo' >> beam.ParDo(_UpdateDatasetInfoFn(
          config.output, config.to_dict(), earlier_stats or {})))


def _earlier_stats(output_dir: str) -> dict:
  """The summed stats of every window-stats record in `output_dir`."""
  stats = collections.Counter()
  for path in _matching_paths(output_dir, schema.WINDOW_STATS_PREFIX,
                              schema.WINDOW_STATS_SUFFIX):
    with FileSystems.open(path) as handle:
      stats.update(json.loads(handle.read())['stats'])
  return dict(stats)


def _continues_earlier_run(config) -> bool:
  """Whether --output holds a streaming run of this config to continue."""
  if not FileSystems.exists(FileSystems.join(config.output, schema.INFO_FILE)):
    return False
  earlier = dict(load_dataset_info(config.output)['config'], overwrite=False)
  if not earlier.get('streaming'):
    return False
  changed = sorted(name for name, value in dict(config.to_dict(),
                                                overwrite=False).items()
                   if earlier.get(name) != value)
  if changed:
    raise ConfigError(
        f'{config.output} holds a streaming run with other options '
        f'({", ".join(changed)}): pass the same options to continue it, '
        '--overwrite to replace it, or another --output')
  return True


def prepare_output(config) -> dict:
  """Claims --output; gives the stats of the earlier run it continues.

  A directory holding a streaming run of the same options is continued (its
  shards stay, its counts go on); otherwise the batch rules apply (empty, or
  --overwrite).
  """
  if not config.overwrite and _continues_earlier_run(config):
    return _earlier_stats(config.output)
  prepare_output_dir(config.output, config.overwrite,
                     run_names=STREAMING_NAMES)
  return {}


def _describe_progress(counts: dict, elapsed: float) -> str:
  return (f'[{elapsed:6.0f}s] received '
          f'{counts.get("lines_read", 0)} messages, wrote '
          f'{counts.get("batches_written", 0)} batches '
          f'({counts.get("records_written", 0)} records), rejected '
          f'{counts.get("rejected", 0)}; {counts.get("windows_written", 0)} '
          'window firings')


def run(config, beam_args) -> int:
  """Runs the streaming job until it is cancelled (locally: Ctrl-C)."""
  options = streaming_options(beam_args)
  remote.check_dataflow_job(config, options)
  if remote.is_dry_run(options):
    print(remote.dry_run(config, options, build_streaming_pipeline))
    return 0
  earlier_stats = prepare_output(config)
  source = config.input_subscription or config.input_topic
  print(f'streaming {source} into {config.output}, windows of '
        f'{config.window_seconds} s; stop with Ctrl-C', flush=True)
  try:
    with progress.printed_every(_describe_progress):
      with remote.new_pipeline(options) as root:
        build_streaming_pipeline(root, config, earlier_stats)
  except KeyboardInterrupt:
    # Locally the job stops with this process; a Dataflow job keeps running.
    print('stopped. A local run loses the records it received but had not '
          'written yet; a Dataflow job keeps running: drain it with gcloud '
          'dataflow jobs drain (README: streaming mode)', flush=True)
  return 0
