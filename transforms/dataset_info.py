"""dataset_info.json: what a finished output directory holds, written last.

One writer for batch and streaming runs. A batch run writes it once, after
its shards and rejected files are final; a streaming run rewrites it after
every window firing. Readers accept a directory only with this file (see
sftbeam.pipeline.readers), so a killed run is never read as complete.
"""

import collections
import fnmatch
import json
import os
import time

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.userstate import (BagStateSpec,
                                              CombiningValueStateSpec)

from sftbeam.transforms import filenames, schema
from sftbeam.transforms.paths import create_new_file, is_remote, names_in
from sftbeam.transforms.stats import SumStatsFn, backend_records, summarize
from sftbeam.transforms.tokenizer_source import shared_tokenizer
from sftbeam.version import VERSION


def write_json_atomically(path: str, value: dict):
  """Writes JSON so that readers see the old file or the new one, whole,
  and never no file: locally to a new temp file (never through a link
  there, see paths.create_new_file), then `os.replace` (which replaces a
  link at `path`, never writes through it); on an object store (gs://) as
  one object write, which is atomic there."""
  data = json.dumps(value, indent=2, sort_keys=True).encode('utf-8')
  if is_remote(path):
    with FileSystems.create(path) as handle:
      handle.write(data)
    return
  temp_path = filenames.temp_name(path)
  with create_new_file(temp_path) as handle:
    handle.write(data)
  os.replace(temp_path, path)


def matching_paths(output_dir: str, prefix: str, suffix: str) -> list:
  """Paths of the files `<prefix>-*<suffix>` directly in `output_dir` (a
  directory's path, not a pattern: see transforms.paths)."""
  return [FileSystems.join(output_dir, name)
          for name in sorted(names_in(output_dir))
          if fnmatch.fnmatchcase(name, filenames.kind_pattern(prefix, suffix))
          and
          '/' not in name]


def _tokenizer_section(config: dict, stats: dict) -> dict:
  """The tokenizer's identity and which backend encoded how many records."""
  loaded = shared_tokenizer(config['tokenizer'], config['tokenizer_backend'])
  section = loaded.identity()
  used = backend_records(stats)
  section['backend'] = (next(iter(used)) if len(used) == 1 else
                        'mixed' if used else section['backend'])
  section['backend_records'] = used
  return section


def build_info(config: dict, stats: dict, shard_entries,
               rejected_paths, sections=None) -> dict:
  """The dataset_info dict of a run with these summed stats and files.

  `shard_entries`: one describe_shard dict per shard (tfrecord.py,
  parquet_shards.py); file names are relative to the output directory.
  `features`: the Example features, or, for Parquet shards, the columns.
  `sections`: more top-level keys (a mixture run's `split`, `sources`).
  """
  layout = config['layout']
  return {
      'schema_version': schema.SCHEMA_VERSION,
      'sftbeam_version': VERSION,
      'layout': layout,
      'pack_length': config['pack_length'] if layout == 'packed' else None,
      'features': (schema.describe_columns(layout)
                   if config['output_format'] == 'parquet'
                   else schema.describe_features(layout)),
      'tokenizer': _tokenizer_section(config, stats),
      'config': config,
      'bucket_boundaries': list(config['boundaries']),
      'counts': summarize(stats),
      'shards': sorted(shard_entries, key=lambda entry: entry['name']),
      'rejected_files': sorted(map(os.path.basename, rejected_paths)),
      'completed_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
      **(sections or {}),
  }


def write_info(output_dir: str, info: dict) -> dict:
  write_json_atomically(FileSystems.join(output_dir, filenames.INFO), info)
  return info


class _WriteDatasetInfoFn(beam.DoFn):
  """Writes dataset_info.json once the shards it lists are final."""

  def __init__(self, output_dir: str, config: dict, sections=None):
    self._output_dir = output_dir
    self._config = config
    self._sections = sections

  def process(self, unused_trigger, stats, shard_entries, rejected_results):
    yield write_info(self._output_dir, build_info(
        self._config, stats, shard_entries,
        [result.file_name for result in rejected_results], self._sections))


class WriteDatasetInfo(beam.PTransform):
  """Writes dataset_info.json after the shards and rejected files are final.

  Takes the pipeline root; the summed stats (a one-element PCollection),
  the shard entries of WriteBatches and the FileResults of the rejected
  files come in as side inputs, which makes this step wait for them. Gives
  the info dict. `sections`: more top-level keys of dataset_info.json.
  """

  def __init__(self, output_dir, config: dict, stats, shard_entries,
               rejected_results, sections=None):
    super().__init__()
    self._output_dir = output_dir
    self._config = config
    self._sections = sections
    self._stats = stats
    self._shard_entries = shard_entries
    self._rejected_results = rejected_results

  def expand(self, pbegin):
    return (
        pbegin
        | 'Trigger' >> beam.Create([None])
        | 'WriteInfo' >> beam.ParDo(
            _WriteDatasetInfoFn(self._output_dir, self._config,
                                self._sections),
            stats=beam.pvalue.AsSingleton(self._stats),
            shard_entries=beam.pvalue.AsList(self._shard_entries),
            rejected_results=beam.pvalue.AsList(self._rejected_results)))


class UpdateDatasetInfoFn(beam.DoFn):
  """('', {'stats', 'shards'} of one window firing) -> dataset_info.json,
  rewritten.

  Streaming. One key, so one firing at a time: the running counts and
  every shard so far (those of an earlier run continued in this directory,
  `earlier`, plus this run's), and every rejected file in the directory.
  """
  TOTALS = CombiningValueStateSpec('totals', coders.PickleCoder(),
                                   SumStatsFn())
  SHARDS = BagStateSpec('shards', coders.PickleCoder())

  def __init__(self, output_dir: str, config: dict, earlier):
    self._output_dir = output_dir
    self._config = config
    self._earlier = earlier

  def process(self, keyed_firing, totals=beam.DoFn.StateParam(TOTALS),
              shards=beam.DoFn.StateParam(SHARDS)):
    firing = keyed_firing[1]
    totals.add(firing['stats'])
    for entry in firing['shards']:
      shards.add(entry)
    stats = collections.Counter(self._earlier.stats)
    stats.update(totals.read())
    yield write_info(self._output_dir, build_info(
        self._config, dict(stats),
        list(self._earlier.shards) + list(shards.read()),
        matching_paths(self._output_dir, filenames.REJECTED_PREFIX,
                       filenames.REJECTED_SUFFIX)))
