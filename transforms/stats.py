"""Run statistics and the dataset_info.json written next to the shards.

Every step that learns something emits a flat `{name: count}` dict on its
`stats` output; `SumStats` adds them up. Names:
  lines, blank_lines            from the parser, per chunk
  rejected/<reason>             one per rejected record
  truncated                     from the tokenizer step
  records_written, batches_written, real_tokens, stored_tokens,
  bucket/<boundary>/records, bucket/<boundary>/batches   per batch
"""

import collections
import json
import os
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from sftbeam.transforms import progress, schema
from sftbeam.transforms.tokenizer_source import load_tokenizer, tokenizer_identity
from sftbeam.version import VERSION


class SumStatsFn(beam.CombineFn):
  """Adds up stats dicts key by key."""

  def create_accumulator(self):
    return collections.Counter()

  def add_input(self, accumulator, stats):
    accumulator.update(stats)
    return accumulator

  def merge_accumulators(self, accumulators):
    merged = collections.Counter()
    for accumulator in accumulators:
      merged.update(accumulator)
    return merged

  def extract_output(self, accumulator):
    return dict(accumulator)


def rejection_stats(rejected) -> dict:
  """The stats one rejected record contributes (also counted for progress
  and in a Beam counter per reason, `rejected_<reason>`)."""
  progress.add('rejected')
  Metrics.counter('sftbeam', f'rejected_{rejected.reason}').inc()
  return {f'rejected/{rejected.reason}': 1}


def summarize(stats: dict) -> dict:
  """Structures summed stats into the `counts` section of dataset_info."""
  rejected = {name.split('/', 1)[1]: count for name, count in stats.items()
              if name.startswith('rejected/')}
  buckets = collections.defaultdict(dict)
  for name, count in stats.items():
    if name.startswith('bucket/'):
      _, boundary, what = name.split('/')
      buckets[int(boundary)][what] = count
  records_in = stats.get('lines', 0) - stats.get('blank_lines', 0)
  written = stats.get('records_written', 0)
  stored = stats.get('stored_tokens', 0)
  return {
      'lines': stats.get('lines', 0),
      'blank_lines': stats.get('blank_lines', 0),
      'records_in': records_in,
      'records_written': written,
      'records_rejected': sum(rejected.values()),
      'rejected_by_reason': dict(sorted(rejected.items())),
      'records_truncated': stats.get('truncated', 0),
      'reconciled': records_in == written + sum(rejected.values()),
      'batches_written': stats.get('batches_written', 0),
      'buckets': {str(boundary): buckets[boundary]
                  for boundary in sorted(buckets)},
      'real_tokens': stats.get('real_tokens', 0),
      'stored_tokens': stored,
      'padding_efficiency': (stats.get('real_tokens', 0) / stored
                             if stored else None),
  }


def write_json_atomically(path: str, value: dict):
  """Writes JSON to a temp name, then renames it: readers never see half."""
  temp_path = path + '.incomplete'
  with FileSystems.create(temp_path) as handle:
    handle.write(json.dumps(value, indent=2, sort_keys=True).encode('utf-8'))
  if FileSystems.exists(path):
    FileSystems.delete([path])
  FileSystems.rename([temp_path], [path])


class WriteDatasetInfoFn(beam.DoFn):
  """Writes dataset_info.json once the shards it lists are final."""

  def __init__(self, output_dir: str, config: dict, tokenizer_name: str,
               special_tokens_in_text: str):
    self._output_dir = output_dir
    self._config = config
    self._tokenizer_name = tokenizer_name
    self._special_tokens_in_text = special_tokens_in_text
    self._tokenizer_identity = None

  def setup(self):
    self._tokenizer_identity = tokenizer_identity(
        self._tokenizer_name,
        load_tokenizer(self._tokenizer_name, self._special_tokens_in_text))

  def process(self, unused_trigger, stats, shard_entries, rejected_results):
    yield self.write_info(
        stats, shard_entries,
        [result.file_name for result in rejected_results])

  def write_info(self, stats: dict, shard_entries, rejected_paths) -> dict:
    """Writes dataset_info.json listing these files; gives the info.

    `shard_entries`: one `tfrecord.describe_shard` dict per shard.
    """
    info = {
        'schema_version': schema.SCHEMA_VERSION,
        'sftbeam_version': VERSION,
        'features': schema.describe_features(),
        'tokenizer': self._tokenizer_identity,
        'config': self._config,
        'bucket_boundaries': list(self._config['boundaries']),
        'counts': summarize(stats),
        # Packing is not written yet: every batch is padded rows.
        'layout': 'padded',
        'pack_length': None,
        'shards': sorted(shard_entries, key=lambda entry: entry['name']),
        'rejected_files': sorted(map(os.path.basename, rejected_paths)),
        'completed_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }
    path = FileSystems.join(self._output_dir, schema.INFO_FILE)
    write_json_atomically(path, info)
    return info


class WriteDatasetInfo(beam.PTransform):
  """Writes dataset_info.json after the shards and rejected files are final.

  Takes the pipeline root; the summed stats (a one-element PCollection),
  the shard entries of WriteBatches and the FileResults of WriteRejected
  come in as side inputs, which makes this step wait for them. Gives the
  info dict.
  """

  def __init__(self, output_dir, config, stats, shard_results,
               rejected_results):
    super().__init__()
    self._output_dir = output_dir
    self._config = config
    self._stats = stats
    self._shard_results = shard_results
    self._rejected_results = rejected_results

  def expand(self, pbegin):
    return (
        pbegin
        | 'Trigger' >> beam.Create([None])
        | 'WriteInfo' >> beam.ParDo(
            WriteDatasetInfoFn(self._output_dir, self._config,
                                self._config['tokenizer'],
                                self._config['special_tokens_in_text']),
            stats=beam.pvalue.AsSingleton(self._stats),
            shard_entries=beam.pvalue.AsList(self._shard_results),
            rejected_results=beam.pvalue.AsList(self._rejected_results)))
