"""Assembling the batch job's Beam graph from the transforms.

  ReadInput -> LinesToBatches (parse, tokenize, batch, pad) ->
  WriteBatches, WriteRejected, SumStats -> WriteDatasetInfo (and
  CountStats: Beam counters and the live progress line)

`LinesToBatches` (transforms/lines_to_batches.py) is the whole computation
from raw lines to serialized batches; the streaming job
(pipeline/streaming.py) uses it too.
"""

import apache_beam as beam

from sftbeam.pipeline import progress, runners
from sftbeam.transforms.dataset_info import WriteDatasetInfo
from sftbeam.transforms.lines_to_batches import LinesToBatches
from sftbeam.transforms.manifest import new_work_dir
from sftbeam.transforms.read import ReadLineChunks
from sftbeam.transforms.stats import SumStatsFn
from sftbeam.transforms.write import WriteBatches, WriteRejected


def build_batch_pipeline(root, config, work_dir=None):
  """Adds the whole batch job under `root`; gives the info PCollection.

  `work_dir`: the run's work directory in the output directory (an
  OutputClaim's); None: a new one (dry runs, which write nothing).
  """
  batching = runners.batching(config, root.options)
  outputs = (
      root
      | 'ReadInput' >> ReadLineChunks(config.input, config.read_chunk_lines,
                                      config.max_line_bytes, batching)
      | 'LinesToBatches' >> LinesToBatches(config, batching))
  work_dir = work_dir or new_work_dir(config.output)
  shard_entries = outputs['batches'] | 'WriteBatches' >> WriteBatches(
      config.output, config.num_shards, config.compression, work_dir)
  rejected_results = outputs['rejected'] | 'WriteRejected' >> WriteRejected(
      config.output, work_dir=work_dir)
  _ = outputs['stats'] | 'CountStats' >> beam.ParDo(progress.CountStats())
  stats = outputs['stats'] | 'SumStats' >> beam.CombineGlobally(SumStatsFn())
  return root | 'WriteDatasetInfo' >> WriteDatasetInfo(
      config.output, config.to_dict(), stats, shard_entries, rejected_results)
