"""An sftbeam output directory as comparable rows, for tests of two runs.

Two runs of the same input may batch records differently (which records
share a batch depends on bundling); what must not differ is each record's
row, so outputs are compared per example id.
"""

import json
import os
import pathlib

from sftbeam.pipeline.readers import iter_numpy_batches, load_dataset_info
from sftbeam.transforms import filenames, schema


def rows_by_id(output_dir: str) -> dict:
  """{example id: {feature: row as a list}} of every written record."""
  rows = {}
  for batch in iter_numpy_batches(output_dir):
    for index, example_id in enumerate(batch[schema.ID_FEATURE]):
      assert example_id not in rows, f'{example_id} written twice'
      rows[example_id] = {
          name: batch[name][index].tolist()
          for name in schema.MATRIX_FEATURES + schema.ROW_FEATURES}
  return rows


def rejected_lines(output_dir: str) -> set:
  """{(line number, reason)} of every rejected record."""
  info = load_dataset_info(output_dir)
  rejected = set()
  for name in info['rejected_files']:
    with open(os.path.join(output_dir, name), encoding='utf-8') as handle:
      for line in handle:
        record = json.loads(line)
        rejected.add((record['line_number'], record['reason']))
  return rejected


def record_counts(output_dir: str) -> dict:
  """The counts of dataset_info.json that do not depend on batching."""
  counts = load_dataset_info(output_dir)['counts']
  return {name: counts[name] for name in (
      'records_in', 'records_written', 'records_rejected',
      'rejected_by_reason', 'records_truncated', 'real_tokens')}


def run_files(output_dir) -> dict:
  """{name: bytes} of the files of a run that readers see in `output_dir`:
  dataset_info.json, shards, rejected files."""
  return {name: pathlib.Path(output_dir, name).read_bytes()
          for name in os.listdir(output_dir)
          if name == filenames.INFO or name.startswith(
              (filenames.SHARD_PREFIX + '-', filenames.REJECTED_PREFIX + '-'))}
