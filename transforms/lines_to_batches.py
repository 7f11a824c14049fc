"""The whole computation from raw lines (and Parquet rows) to encoded
batches.

  LineChunks, RowChunks -> ParseChunks -> TokenizeRecords -> BatchByBucket
    -> PadBatches (packed layout: PackIntoRows -> EncodePackedBatches)

Batch runs (sftbeam.pipeline.batch) and streaming runs
(sftbeam.pipeline.streaming) both use `LinesToBatches`; only reading and
writing differ.
"""

from typing import Optional

import apache_beam as beam

from sftbeam.transforms.packed import (EncodePackedBatches, PackIntoRows,
                                       PackShape)
from sftbeam.transforms.padded import BatchByBucket, BatchShape, PadBatches
from sftbeam.transforms.parse import FieldNames, ParseChunks
from sftbeam.transforms.stats import tallied_rejection_stats
from sftbeam.transforms.tokenize import TokenizeRecords, TokenizeSettings


def field_names(config) -> FieldNames:
  """The record fields the run reads (--prompt_field, ...)."""
  return FieldNames(config.prompt_field, config.output_field, config.id_field)


def tokenize_settings(config) -> TokenizeSettings:
  return TokenizeSettings(
      tokenizer=config.tokenizer,
      max_seq_len=config.max_seq_len,
      truncation=config.truncation,
      add_special_tokens=config.add_special_tokens,
      append_eos=config.append_eos,
      special_tokens_in_text=config.special_tokens_in_text,
      backend=config.tokenizer_backend,
      train_on=config.train_on,
      chat_rows=config.chat_rows,
      chat_template=chat_template_text(config.chat_template),
      chat_template_kwargs=config.chat_template_kwargs)


def chat_template_text(path: str) -> Optional[str]:
  """The Jinja text of a chat_template file (None: the tokenizer's own).

  Read when the job is built, and shipped with the step that uses it, so
  workers need no copy of the file.
  """
  if not path:
    return None
  with open(path, encoding='utf-8') as handle:
    return handle.read()


def batch_shape(config) -> BatchShape:
  return BatchShape(config.boundaries, config.batch_size, config.batch_tokens)


def pack_shape(config) -> PackShape:
  return PackShape(config.pack_length, config.pack_window,
                   batch_shape(config).rows(config.pack_length))


class LinesToBatches(beam.PTransform):
  """LineChunks and RowChunks -> {'batches', 'rejected', 'stats'}
  PCollections.

  `batches` are the encoded batches (Example bytes, or Parquet rows tables
  with output_format parquet: transforms/batch.py), `rejected` Rejected
  records, `stats` the stats dicts of every step (transforms/stats.py).
  `config` is the run's resolved options (sftbeam.pipeline.options);
  `batching` is "bundle" or "global" (transforms/batch.py);
  `run_ahead`: tokenize each chunk on a thread while the later steps work
  on the one before (a bounded run with a core to spare).
  """

  def __init__(self, config, batching: str,
               max_buffering_seconds: Optional[float] = None,
               run_ahead: bool = False):
    super().__init__()
    self._config = config
    self._batching = batching
    self._max_buffering_seconds = max_buffering_seconds
    self._run_ahead = run_ahead

  def expand(self, chunks):
    tokenized = parse_and_tokenize(chunks, self._config,
                                   field_names(self._config), self._run_ahead)
    examples = to_examples(tokenized['chunks'], self._config, self._batching,
                           self._max_buffering_seconds)
    stats = ((tokenized['stats'], examples.stats)
             | 'AllStats' >> beam.Flatten())
    return {'batches': examples.batches, 'rejected': tokenized['rejected'],
            'stats': stats}


def parse_and_tokenize(chunks, config, fields: FieldNames,
                       run_ahead: bool = False) -> dict:
  """LineChunks and RowChunks -> {'chunks': TokenChunks, 'rejected':
  Rejected records, 'stats'}: records of these `fields` parsed and
  tokenized (`run_ahead`: see LinesToBatches). Applies its steps where it
  is called."""
  parsed = chunks | 'ParseChunks' >> beam.ParDo(
      ParseChunks(fields, config.max_line_bytes,
                  config.input_format)).with_outputs(
                      ParseChunks.REJECTED, ParseChunks.STATS,
                      main='records')
  tokenized = parsed.records | 'TokenizeRecords' >> beam.ParDo(
      TokenizeRecords(tokenize_settings(config), run_ahead)).with_outputs(
          TokenizeRecords.REJECTED, TokenizeRecords.STATS, main='chunks')
  rejected = ((parsed.rejected, tokenized.rejected)
              | 'AllRejected' >> beam.Flatten())
  # Counted per step, before the Flatten: the live tally moves with them.
  stats = ((parsed.stats, tokenized.stats,
            parsed.rejected | 'ParseRejectionStats' >> beam.Map(
                tallied_rejection_stats),
            tokenized.rejected | 'TokenizeRejectionStats' >> beam.Map(
                tallied_rejection_stats))
           | 'TokenizeStats' >> beam.Flatten())
  return {'chunks': tokenized.chunks, 'rejected': rejected, 'stats': stats}


def to_examples(chunks, config, batching: str,
                max_buffering_seconds: Optional[float] = None):
  """TokenChunks -> encoded batches ('batches') and 'stats' (a tagged
  output). Applies its steps where it is called."""
  if config.layout == 'packed':
    return (
        chunks
        | 'PackIntoRows' >> PackIntoRows(pack_shape(config),
                                         max_buffering_seconds)
        | 'EncodePackedBatches' >> beam.ParDo(
            EncodePackedBatches(config.pad_id, config.tokenizer,
                                config.tokenizer_backend,
                                config.output_format)).with_outputs(
                                    EncodePackedBatches.STATS,
                                    main='batches'))
  return (
      chunks
      | 'BatchByBucket' >> BatchByBucket(batch_shape(config), batching,
                                         max_buffering_seconds)
      | 'PadBatches' >> beam.ParDo(
          PadBatches(config.pad_to, config.pad_id, config.tokenizer,
                     config.tokenizer_backend,
                     config.output_format)).with_outputs(
                         PadBatches.STATS, main='batches'))
