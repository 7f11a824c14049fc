"""Assembling the Beam graph from the transforms.

  ReadInput -> LinesToBatches (parse, tokenize+bucket, batch, pad) ->
  WriteBatches, WriteRejected, SumStats -> WriteDatasetInfo

`LinesToBatches` is the whole computation from raw lines to serialized
batches; the batch and the streaming graphs both use it.
"""

from typing import Any, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.runners.runner import create_runner

from sftbeam.transforms.batch import BatchByBucket
from sftbeam.transforms.manifest import new_work_dir
from sftbeam.transforms.pad import PadBatches
from sftbeam.transforms.parse import FieldNames, ParseLines
from sftbeam.transforms.read import ReadLineChunks
from sftbeam.transforms.stats import SumStatsFn, WriteDatasetInfo, rejection_stats
from sftbeam.transforms.tokenize import TokenizeAndBucket, TokenizeSettings
from sftbeam.transforms.write import WriteBatches, WriteRejected


def tokenize_settings(config) -> TokenizeSettings:
  return TokenizeSettings(
      tokenizer=config.tokenizer,
      boundaries=tuple(config.boundaries),
      max_seq_len=config.max_seq_len,
      truncation=config.truncation,
      add_special_tokens=config.add_special_tokens,
      append_eos=config.append_eos,
      special_tokens_in_text=config.special_tokens_in_text,
      threads=config.tokenizer_threads)


class LinesToBatches(beam.PTransform):
  """LineChunks -> {'batches', 'rejected', 'stats'} PCollections.

  `batches` are serialized batch Examples, `rejected` Rejected records,
  `stats` the stats dicts of every step (sum them with SumStatsFn).
  """

  def __init__(self, config, max_buffering_seconds=None,
               batch_within_bundle=False):
    super().__init__()
    self._config = config
    self._max_buffering_seconds = max_buffering_seconds
    self._batch_within_bundle = batch_within_bundle

  def expand(self, chunks):
    config = self._config
    fields = FieldNames(config.prompt_field, config.output_field,
                        config.id_field)
    parsed = chunks | 'ParseLines' >> beam.ParDo(
        ParseLines(fields, config.max_line_bytes)).with_outputs(
            ParseLines.REJECTED, ParseLines.STATS, main='records')
    tokenized = parsed.records | 'TokenizeAndBucket' >> beam.ParDo(
        TokenizeAndBucket(tokenize_settings(config), run_ahead=True)
    ).with_output_types(Tuple[int, Any]).with_outputs(
            TokenizeAndBucket.REJECTED, TokenizeAndBucket.STATS,
            main='keyed')
    padded = (
        tokenized.keyed
        | 'BatchByBucket' >> BatchByBucket(config.batch_size,
                                           self._max_buffering_seconds,
                                           self._batch_within_bundle)
        | 'PadBatches' >> beam.ParDo(
            PadBatches(config.pad_to, config.pad_id, config.tokenizer,
                       config.special_tokens_in_text)).with_outputs(
                           PadBatches.STATS, main='batches'))
    rejected = ((parsed.rejected, tokenized.rejected)
                | 'AllRejected' >> beam.Flatten())
    stats = ((parsed.stats, tokenized.stats, padded.stats,
              rejected | 'RejectionStats' >> beam.Map(rejection_stats))
             | 'AllStats' >> beam.Flatten())
    return {'batches': padded.batches, 'rejected': rejected, 'stats': stats}


def batches_globally(config, options) -> bool:
  """The `global_batching` option, its null resolved by the runner."""
  if config.global_batching is not None:
    return config.global_batching
  # Resolved as Beam resolves it: names are case-insensitive, may be full
  # paths, and an unset runner means the DirectRunner.
  runner = create_runner(options.view_as(StandardOptions).runner or
                         'DirectRunner')
  return type(runner).__name__ not in StandardOptions.LOCAL_RUNNERS


def build_batch_pipeline(root, config, work_dir=None):
  """Adds the whole batch job under `root`; gives the info PCollection.

  `work_dir`: the run's work directory in the output directory (an
  OutputClaim's); None: a new one (dry runs, which write nothing).
  """
  global_batching = batches_globally(config, root.options)
  outputs = (
      root
      | 'ReadInput' >> ReadLineChunks(config.input, config.read_chunk_lines,
                                      config.max_line_bytes,
                                      spread=global_batching)
      | 'LinesToBatches' >> LinesToBatches(
          config, batch_within_bundle=not global_batching))
  work_dir = work_dir or new_work_dir(config.output)
  shard_results = outputs['batches'] | 'WriteBatches' >> WriteBatches(
      config.output, config.num_shards, config.compression, work_dir)
  rejected_results = outputs['rejected'] | 'WriteRejected' >> WriteRejected(
      config.output, work_dir=work_dir)
  stats = outputs['stats'] | 'SumStats' >> beam.CombineGlobally(SumStatsFn())
  return root | 'WriteDatasetInfo' >> WriteDatasetInfo(
      config.output, config.to_dict(), stats, shard_results, rejected_results)
