"""Streaming mode: records from Pub/Sub in, windowed TFRecord shards out.

  ReadPubSub -> ToLineChunks -> LinesToBatches (the batch mode's parse,
  tokenize, batch, pad) -> Window* -> WriteShards, WriteRejected
  (+ PublishDeadLetters), SumWindowStats -> CollectWindow ->
  WriteWindowStats -> UpdateDatasetInfo

Each message body is one JSON record, validated as a batch line is; its id
comes from the body's id field or the content hash, exactly as in batch
mode (attributes are not read), so a record gets the same id and the same
row in both modes. The windows and what each writes are in
transforms/windows.py; this module assembles the graph, claims or continues
the output directory, and runs the job until it is stopped.
"""

import collections
import json
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.transforms import window

from sftbeam.pipeline import progress, remote, run_lock, runners
from sftbeam.pipeline.options import ConfigError
from sftbeam.pipeline.checks import check_run
from sftbeam.pipeline.output_dir import Claim, prepare_streaming_output_dir
from sftbeam.pipeline.readers import IncompleteOutput, load_dataset_info
from sftbeam.transforms import filenames, manifest
from sftbeam.transforms.dataset_info import (UpdateDatasetInfoFn,
                                             matching_paths)
from sftbeam.transforms.lines_to_batches import LinesToBatches
from sftbeam.transforms.read import message_to_chunk
from sftbeam.transforms.stats import SumStatsFn, rejected_by_reason
from sftbeam.transforms.tfrecord import describe_shard
from sftbeam.transforms.filenames import shard_suffix
from sftbeam.transforms.windows import (IntoWriteWindows, WriteWindowedFiles,
                                        WriteWindowStats)
from sftbeam.transforms.write import TFRecordSink


def _dead_letter(rejected) -> PubsubMessage:
  return PubsubMessage(rejected.to_json().encode('utf-8'),
                       {'reason': rejected.reason})


def build_streaming_pipeline(root, config, earlier=None):
  """Adds the streaming job under `root`; gives the info dict of each update.

  `earlier`: the EarlierRun this one continues (its stats and shards).
  """
  source = config.input_subscription or config.input_topic
  lines = (
      root
      | 'ReadPubSub' >> beam.io.ReadFromPubSub(
          topic=config.input_topic or None,
          subscription=config.input_subscription or None,
          with_attributes=True)
      | 'ToLineChunks' >> beam.Map(message_to_chunk, source,
                                   config.max_line_bytes))
  # Up to the batches everything stays in the global window; a bucket's
  # partial batch leaves max_buffering_seconds after its first record.
  outputs = lines | 'LinesToBatches' >> LinesToBatches(
      config, 'global', config.max_buffering_seconds)
  if config.dead_letter_topic:
    _ = (outputs['rejected']
         | 'ToDeadLetters' >> beam.Map(_dead_letter)
         | 'PublishDeadLetters' >> beam.io.WriteToPubSub(
             config.dead_letter_topic, with_attributes=True))
  shard_results = (
      outputs['batches']
      | 'WindowBatches' >> IntoWriteWindows(config.window_seconds)
      | 'WriteShards' >> WriteWindowedFiles(
          config.output, filenames.SHARD_PREFIX, shard_suffix(config.compression),
          lambda _: TFRecordSink(config.compression), config.num_shards))
  rejected_results = (
      outputs['rejected']
      | 'WindowRejected' >> IntoWriteWindows(config.window_seconds)
      | 'RejectedToJson' >> beam.Map(lambda rejected: rejected.to_json())
      | 'WriteRejected' >> WriteWindowedFiles(
          config.output, filenames.REJECTED_PREFIX, filenames.REJECTED_SUFFIX,
          lambda _: fileio.TextSink(), 1))
  _ = outputs['stats'] | 'CountStats' >> beam.ParDo(progress.CountStats())
  window_stats = (
      outputs['stats']
      | 'WindowStats' >> IntoWriteWindows(config.window_seconds)
      | 'SumWindowStats' >> beam.CombineGlobally(
          SumStatsFn()).without_defaults())
  return (
      {'shards': shard_results | 'DescribeShards' >> beam.Map(
          lambda result: ('', describe_shard(
              FileSystems.join(config.output, result.file_name)))),
       'rejected_files': rejected_results | 'RejectedNames' >> beam.Map(
           lambda result: ('', result.file_name)),
       'stats': window_stats | 'KeyStats' >> beam.WithKeys('')}
      | 'CollectWindow' >> beam.CoGroupByKey()
      | 'WriteWindowStats' >> beam.ParDo(WriteWindowStats(config.output))
      | 'ToGlobalWindow' >> beam.WindowInto(window.GlobalWindows())
      | 'UpdateDatasetInfo' >> beam.ParDo(UpdateDatasetInfoFn(
          config.output, config.to_dict(), earlier or EarlierRun({}, []))))


class EarlierRun(NamedTuple):
  """What an earlier streaming run in the output directory left: its summed
  stats and its shards' entries (from its window-stats files)."""
  stats: dict
  shards: list


def _earlier_run(output_dir: str) -> EarlierRun:
  stats, shards = collections.Counter(), []
  for path in matching_paths(output_dir, filenames.WINDOW_STATS_PREFIX,
                             filenames.WINDOW_STATS_SUFFIX):
    with FileSystems.open(path) as handle:
      window_file = json.loads(handle.read())
    stats.update(window_file['stats'])
    shards += window_file['shards']
  return EarlierRun(dict(stats), shards)


def _continues_earlier_run(config) -> bool:
  """Whether --output, which holds a dataset_info.json, holds a streaming
  run of this config to continue."""
  try:
    earlier = dict(load_dataset_info(config.output)['config'],
                   overwrite=False)
  except IncompleteOutput as error:
    raise ConfigError(f'{error}: pass --overwrite to replace what is in '
                      f'{config.output}, or another --output') from None
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


def prepare_output(config):
  """Claims --output: gives (the earlier run it continues, the Claim to
  release when the run ends).

  The directory is locked first, as a batch run locks it. One holding a
  streaming run of the same options is continued (its shards stay, its
  counts go on); otherwise the batch rules apply (empty, or --overwrite),
  but an earlier run is deleted when this one starts: a streaming run
  writes straight into the directory and has no end to replace it at.
  """
  lock = None
  if not config.overwrite and FileSystems.exists(
      FileSystems.join(config.output, filenames.INFO)):
    lock = run_lock.acquire(config.output,
                            run_lock.new_owner(filenames.new_run_id()))
  try:
    if lock is not None and _continues_earlier_run(config):
      return _earlier_run(config.output), Claim(config.output, lock)
    # Not a run to continue: claimed with a batch run's checks (the lock
    # held throughout, so no other run slips in between).
    claim = prepare_streaming_output_dir(config.output, config.overwrite,
                                         lock=lock)
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  return EarlierRun({}, []), claim


def _describe_progress(tally: dict, elapsed: float) -> str:
  rejected = sum(rejected_by_reason(tally).values())
  return (f'[{elapsed:6.0f}s] received {tally.get("lines", 0)} messages, '
          f'wrote {tally.get("batches_written", 0)} batches '
          f'({tally.get("records_written", 0)} records), rejected '
          f'{rejected}')


def run(config, beam_args) -> int:
  """Runs the streaming job until it is cancelled (locally: Ctrl-C)."""
  options = runners.pipeline_options(beam_args, streaming=True)
  check_run(config, options)
  if remote.is_dry_run(options):
    print(remote.dry_run(config, options, build_streaming_pipeline))
    return 0
  earlier, claim = prepare_output(config)
  source = config.input_subscription or config.input_topic
  print(f'streaming {source} into {config.output}, windows of '
        f'{config.window_seconds} s; stop with Ctrl-C', flush=True)
  try:
    with progress.printed(_describe_progress,
                          enabled=runners.runs_in_this_process(options)):
      with runners.new_pipeline(options) as root:
        build_streaming_pipeline(root, config, earlier)
  except KeyboardInterrupt:
    # Locally the job stops with this process; a Dataflow job keeps running.
    print('stopped. A local run loses the records it received but had not '
          'written yet; a Dataflow job keeps running: drain it with gcloud '
          'dataflow jobs drain (docs/streaming.md)', flush=True)
  finally:
    claim.release()
  return 0
