"""Batch mode: files in, a complete output directory out.

  ReadInput (JSON lines and Parquet) -> LinesToBatches (parse, tokenize,
  batch, pad) ->
  WriteBatches, WriteRejected, SumStats -> WriteDatasetInfo (and
  CountStats: Beam counters; the steps feed the live progress line)

`run` checks the run (pipeline/checks.py), claims --output
(pipeline/output_dir.py), runs the job in the claim's work directory, and
moves the finished run into place, or keeps the earlier one when this one
fails. `LinesToBatches` (transforms/lines_to_batches.py) is the whole
computation from raw lines to encoded batches; the streaming job
(pipeline/streaming.py) uses it too.
"""

import sys
import time

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from sftbeam.pipeline import progress, remote, runners
from sftbeam.pipeline.checks import check_run
from sftbeam.pipeline.output_dir import prepare_output_dir
from sftbeam.pipeline.readers import load_dataset_info
from sftbeam.pipeline.summary import summary_lines
from sftbeam.transforms.dataset_info import WriteDatasetInfo
from sftbeam.pipeline.mixture import (input_patterns, run_sources,
                                      source_section)
from sftbeam.transforms import filenames
from sftbeam.transforms.lines_to_batches import (LinesToBatches, field_names,
                                                 to_examples,
                                                 tokenize_settings)
from sftbeam.transforms.mixture import SplitAndCopy
from sftbeam.transforms.parse import record_columns
from sftbeam.transforms.paths import is_remote
from sftbeam.transforms.read import corrupt_input_message
from sftbeam.transforms.read_input import ReadInput
from sftbeam.transforms.sources import (ParseAndTokenizeSources,
                                       sources_columns)
from sftbeam.transforms.stats import (SumStatsFn, rejected_by_reason,
                                      sent_to_validation)
from sftbeam.transforms.tokenizer_source import shared_tokenizer
from sftbeam.transforms.write import WriteBatches, WriteRejected


class RunFailed(Exception):
  """The run failed for a reason sftbeam names in one line (exit 1)."""


def build_batch_pipeline(root, config, run_dir=None):
  """Adds the whole batch job under `root`; gives the info PCollection (a
  split run: train's).

  `run_dir`: the directory the job writes its whole output in (shards,
  rejected files, dataset_info.json; temp files below it): an OutputClaim's
  work directory, moved into --output once the job has succeeded. None:
  --output itself (dry runs, which write nothing).
  """
  if config.mixture or config.validation_fraction:
    return _build_mixture_pipeline(root, config, run_dir or config.output)
  batching = runners.batching(config, root.options)
  outputs = (
      root
      | 'ReadInput' >> ReadInput(
          config.input, config.read_chunk_lines, config.max_line_bytes,
          record_columns(field_names(config)), batching,
          runners.worker_processes(root.options))
      | 'LinesToBatches' >> LinesToBatches(
          config, batching, run_ahead=runners.has_core_to_spare(root.options)))
  return write_dataset(root, config, run_dir or config.output,
                       outputs['batches'], outputs['rejected'],
                       outputs['stats'])


def write_dataset(root, config, output_dir, batches, rejected, stats,
                  sections=None):
  """Writes one dataset in `output_dir`: the encoded `batches` as shards,
  the `rejected` records, and, from the `stats`, dataset_info.json (with
  `sections`) last; counts the stats (CountStats). Applies its steps where
  it is called; gives the info PCollection."""
  shard_entries = batches | 'WriteBatches' >> WriteBatches(
      output_dir, config.num_shards, config.compression, config.output_format,
      config.layout)
  rejected_results = rejected | 'WriteRejected' >> WriteRejected(output_dir)
  _ = stats | 'CountStats' >> beam.ParDo(progress.CountStats())
  return root | 'WriteDatasetInfo' >> WriteDatasetInfo(
      output_dir, config.to_dict(),
      stats | 'SumStats' >> beam.CombineGlobally(SumStatsFn()),
      shard_entries, rejected_results, sections)


def _build_mixture_pipeline(root, config, run_dir):
  """The job of a mixture, or of a validation split: every source's files
  read as one, each chunk parsed with its source's fields and tokenized
  (ParseAndTokenizeSources), then split and copied (SplitAndCopy), each
  split batched and written as a dataset of its own (OUT/train and
  OUT/validation; without a split, OUT itself)."""
  batching = runners.batching(config, root.options)
  sources = run_sources(config)
  read = (
      root
      | 'ReadInput' >> ReadInput(
          input_patterns(config), config.read_chunk_lines,
          config.max_line_bytes, sources_columns(sources), batching,
          runners.worker_processes(root.options))
      | 'ParseAndTokenizeSources' >> beam.ParDo(ParseAndTokenizeSources(
          sources, tokenize_settings(config), config.max_line_bytes,
          config.input_format)).with_outputs(
              ParseAndTokenizeSources.REJECTED,
              ParseAndTokenizeSources.STATS, main='chunks'))
  split = read.chunks | 'SplitAndCopy' >> SplitAndCopy(
      {source.name: source for source in sources},
      config.validation_fraction, config.seed)
  sent_away = split['validation_stats'] | 'SentToValidation' >> beam.Map(
      sent_to_validation)
  train_stats = [read.stats, split['train_stats'], sent_away]
  splits = [(filenames.TRAIN, read.rejected, train_stats)]
  if config.validation_fraction:
    splits.append((filenames.VALIDATION,
                   root | 'NothingRejected' >> beam.Create([]),
                   [split['validation_stats']]))
  infos = [
      root | f'Write[{name}]' >> WriteSplit(
          config, batching, split[name], rejected_records, stats,
          FileSystems.join(run_dir, name) if config.validation_fraction
          else run_dir, {'split': name if config.validation_fraction
                         else None,
                         'sources': [source_section(source)
                                     for source in sources]})
      for name, rejected_records, stats in splits]
  return infos[0]


class WriteSplit(beam.PTransform):
  """Pipeline root -> the info of one dataset written in `output_dir`: the
  TokenChunks `chunks` batched and written, `rejected` records written,
  dataset_info.json from the `stats` PCollections and its batches' stats
  (its `sections` added)."""

  def __init__(self, config, batching, chunks, rejected, stats, output_dir,
               sections):
    super().__init__()
    self._config = config
    self._batching = batching
    self._chunks = chunks
    self._rejected = rejected
    self._stats = stats
    self._output_dir = output_dir
    self._sections = sections

  def expand(self, pbegin):
    examples = to_examples(self._chunks, self._config, self._batching)
    stats = self._stats + [examples.stats] | 'AllStats' >> beam.Flatten()
    return write_dataset(pbegin, self._config, self._output_dir,
                         examples.batches, self._rejected, stats,
                         self._sections)


def run(config, beam_args) -> int:
  """Runs the batch job to its end: prints its summary; gives the exit
  code (0, or 1 when it wrote too little). Raises ConfigError before
  anything runs, RunFailed when it fails."""
  options = runners.pipeline_options(beam_args)
  check_run(config, options)
  if remote.is_dry_run(options):
    print(remote.dry_run(config, options, build_batch_pipeline))
    return 0
  with prepare_output_dir(config.output, config.overwrite,
                          input_patterns(config)) as claim:
    wall_seconds = _run_job(config, options, claim.work_dir)
    infos = {name: load_dataset_info(FileSystems.join(claim.work_dir, name))
             for name in _split_names(config)}
    info = (infos.get(filenames.TRAIN) or
            load_dataset_info(claim.work_dir))
    problem = run_problem(info)
    if problem and claim.replaces_a_complete_run:
      # A failed run does not replace a complete one.
      claim.abandon()
      problem += (f'; the earlier run in {config.output} is kept and this '
                  'one discarded (pass another --output to keep it)')
    else:
      claim.complete()
      if problem:
        where = FileSystems.join(config.output, *(
            [filenames.TRAIN] if infos else []))
        problem += (f'; every rejected line is in {where}/'
                    'rejected-*.jsonl (outputs kept)')
  if infos:
    for name, split_info in infos.items():
      print(f'{name}:')
      print('\n'.join('  ' + line for line in summary_lines(
          split_info, wall_seconds if name == filenames.TRAIN else None)))
  else:
    print('\n'.join(summary_lines(info, wall_seconds)))
  print(f'output: {config.output}')
  if problem:
    print(f'sftbeam: error: {problem}', file=sys.stderr)
    return 1
  return 0


def _split_names(config) -> tuple:
  """The datasets a run writes in directories of their own: train and
  validation with a validation split, else none (OUT is the dataset)."""
  return filenames.SPLIT_DIRS[::-1] if config.validation_fraction else ()


def _run_job(config, options, work_dir) -> float:
  """Runs the job to completion; gives its wall time in seconds.

  Raises RunFailed when an input file is cut short or corrupt.
  """
  started = time.time()
  patterns = input_patterns(config)
  describe = progress_describer(input_size(patterns))
  options = runners.with_workers(
      options, runners.local_workers(config, input_size(patterns, True)))
  if runners.runs_in_this_process(options) and not is_remote(config.tokenizer):
    # The steps encode here: fastokens loads while the graph is built.
    shared_tokenizer(config.tokenizer,
                     config.tokenizer_backend).prepare_encoder()
  try:
    with progress.printed(describe,
                          enabled=runners.runs_in_this_process(options)):
      with runners.new_pipeline(options) as root:
        build_batch_pipeline(root, config, work_dir)
  except Exception as error:  # pylint: disable=broad-except
    if caused_by_interrupt(error):
      raise KeyboardInterrupt from None
    message = corrupt_input_message(error)
    if message is None:
      raise
    raise RunFailed(message) from None
  return time.time() - started


def caused_by_interrupt(error: BaseException) -> bool:
  """Whether a Ctrl-C is behind `error`: Beam re-raises a KeyboardInterrupt
  inside a step as a RuntimeError."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, KeyboardInterrupt):
      return True
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return False


def input_size(patterns, compressed: bool = False):
  """Bytes of every input file, or None when that does not tell how much
  is left to read (remote input; compressed input unless `compressed`,
  which counts a compressed file's own bytes)."""
  total = 0
  for pattern in patterns:
    if is_remote(pattern):
      return None
    for metadata in FileSystems.match([pattern])[0].metadata_list:
      if not compressed and CompressionTypes.detect_compression_type(
          metadata.path) != CompressionTypes.UNCOMPRESSED:
        return None
      total += metadata.size_in_bytes
  return total


def progress_describer(total_bytes):
  """The progress line of a batch run reading `total_bytes` (or None)."""
  def describe(tally: dict, elapsed: float) -> str:
    lines, rows = tally.get('lines', 0), tally.get('rows', 0)
    rejected = sum(rejected_by_reason(tally).values())
    read = f'{lines:,} lines' + (f' and {rows:,} rows' if rows else '')
    line = (f'[{elapsed:5.0f}s] read {read}, wrote '
            f'{tally.get("batches_written", 0):,} batches '
            f'({tally.get("records_written", 0):,} records), rejected '
            f'{rejected:,}; {(lines + rows) / max(elapsed, 1e-9):,.0f} '
            f'{"records" if rows else "lines"}/s')
    eta = progress.eta_seconds(tally.get('input_bytes', 0), total_bytes,
                               elapsed)
    if eta is not None:
      done = min(1.0, tally.get('input_bytes', 0) / total_bytes)
      line += f'; {done:.0%}, about {eta:.0f} s left'
    return line
  return describe


_FIELDS_HINT = (
    'the records lack the fields --prompt_field and --output_field name (now '
    '"{prompt_field}" and "{output_field}"): pass the names of yours; a '
    'conversation needs a "messages" list of {{role, content}} (docs/chat.md)')
_MESSAGES_HINT = (
    'a conversation needs "messages": [{{"role": "user", "content": "..."}}, '
    '{{"role": "assistant", "content": "..."}}] (docs/chat.md)')
_JSON_LINES_HINT = 'the input must be JSON Lines: one JSON object per line'
# What most often causes each rejection reason, said to a run that rejected
# too much about its commonest reason; filled in from the run's config.
_HINTS = {
    'missing_field': _FIELDS_HINT,
    'field_not_string': _FIELDS_HINT,
    'invalid_messages': _MESSAGES_HINT,
    'no_assistant_turn': _MESSAGES_HINT,
    'invalid_json': _JSON_LINES_HINT,
    'not_an_object': _JSON_LINES_HINT,
    'invalid_utf8': 'the input must be UTF-8 JSON Lines',
    'too_long': 'records are longer than max_seq_len {max_seq_len}: raise '
                '--max_seq_len (and --boundaries or --pack_length) or pass '
                '--truncation output_right',
}


def run_problem(info: dict):
  """Why a finished run fails (exit 1), or None: its input held no record,
  or more of it was rejected than max_rejected_fraction. Names the
  commonest rejection reasons, with the hint that fits the first."""
  counts, config = info['counts'], info['config']
  if not counts['records_in']:
    return 'nothing written: the input holds no record (no line, or blank ones)'
  fraction = counts['records_rejected'] / counts['records_in']
  if fraction <= config['max_rejected_fraction']:
    return None
  reasons = sorted(counts['rejected_by_reason'].items(),
                   key=lambda item: -item[1])
  what = (f'nothing written: all {counts["records_in"]} records were rejected'
          if not counts['records_written'] else
          f'{fraction:.1%} of the records were rejected, more than '
          f'--max_rejected_fraction {config["max_rejected_fraction"]}')
  top = ', '.join(f'{reason} {count}' for reason, count in reasons[:3])
  hint = _HINTS.get(reasons[0][0], 'see docs/bad_input.md').format(**config)
  return f'{what} ({top}); {hint}'
