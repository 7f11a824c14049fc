"""Assembling the batch job's Beam graph from the transforms.

  ReadInput (JSON lines and Parquet) -> LinesToBatches (parse, tokenize,
  batch, pad) ->
  WriteBatches, WriteRejected, SumStats -> WriteDatasetInfo (and
  CountStats: Beam counters and the live progress line)

`LinesToBatches` (transforms/lines_to_batches.py) is the whole computation
from raw lines to encoded batches; the streaming job
(pipeline/streaming.py) uses it too.
"""

import apache_beam as beam

from sftbeam.pipeline import progress, runners
from sftbeam.transforms.dataset_info import WriteDatasetInfo
from sftbeam.transforms.lines_to_batches import LinesToBatches, field_names
from sftbeam.transforms.parse import record_columns
from sftbeam.transforms.read_input import ReadInput
from sftbeam.transforms.stats import SumStatsFn
from sftbeam.transforms.write import WriteBatches, WriteRejected


def build_batch_pipeline(root, config, run_dir=None):
  """Adds the whole batch job under `root`; gives the info PCollection.

  `run_dir`: the directory the job writes its whole output in (shards,
  rejected files, dataset_info.json; temp files below it): an OutputClaim's
  work directory, moved into --output once the job has succeeded. None:
  --output itself (dry runs, which write nothing).
  """
  batching = runners.batching(config, root.options)
  outputs = (
      root
      | 'ReadInput' >> ReadInput(
          config.input, config.read_chunk_lines, config.max_line_bytes,
          record_columns(field_names(config)), batching)
      | 'LinesToBatches' >> LinesToBatches(config, batching))
  run_dir = run_dir or config.output
  shard_entries = outputs['batches'] | 'WriteBatches' >> WriteBatches(
      run_dir, config.num_shards, config.compression, config.output_format,
      config.layout)
  rejected_results = outputs['rejected'] | 'WriteRejected' >> WriteRejected(
      run_dir)
  _ = outputs['stats'] | 'CountStats' >> beam.ParDo(progress.CountStats())
  stats = outputs['stats'] | 'SumStats' >> beam.CombineGlobally(SumStatsFn())
  return root | 'WriteDatasetInfo' >> WriteDatasetInfo(
      run_dir, config.to_dict(), stats, shard_entries, rejected_results)
