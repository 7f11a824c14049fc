"""The `sftbeam` command line.

  sftbeam run --input PATTERN --output DIR [--config configs/X.yaml]
              [sftbeam options] [Beam pipeline options]
  sftbeam run --streaming --input_subscription projects/P/subscriptions/S
              --output DIR [--window_seconds N] [...]   (until stopped)

Exit codes: 0 done; 1 the run failed or rejected more than
--max_rejected_fraction of its input; 2 a config error (one line, before
anything runs).
"""

import argparse
import logging
import os
import sys
import time

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from sftbeam.pipeline import config as config_lib
from sftbeam.pipeline import remote
from sftbeam.pipeline import streaming
from sftbeam.pipeline.graph import build_batch_pipeline
from sftbeam.pipeline.options import ConfigError
from sftbeam.pipeline.output_dir import prepare_output_dir
from sftbeam.pipeline.readers import load_dataset_info
from sftbeam.transforms import progress
from sftbeam.transforms.paths import is_remote
from sftbeam.transforms.read import CorruptInputError, corrupt_input_message
from sftbeam.transforms.tokenizer_source import TokenizerNotFound, load_tokenizer

# The DirectRunner first tries Prism, which downloads a binary; naming its
# batch engine directly keeps the default run offline.
DEFAULT_RUNNER = 'FnApiRunner'
# An error is one line of at most this many characters (a cut is marked):
# messages quote values, and some come from libraries.
MAX_ERROR_CHARS = 600


class RunFailed(Exception):
  """The run failed for a reason sftbeam names in one line (exit 1)."""


class _OneLineParser(argparse.ArgumentParser):
  """Turns argparse's usage errors into ConfigErrors (one line, exit 2)."""

  def error(self, message):
    raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
  parser = _OneLineParser(prog='sftbeam', description=__doc__.split('\n')[0])
  commands = parser.add_subparsers(dest='command', required=True,
                                   parser_class=_OneLineParser)
  run = commands.add_parser(
      'run', help='prepare SFT batches from JSONL records',
      epilog='Any other --flag is passed to Beam as a pipeline option.')
  config_lib.add_option_flags(run)
  return parser


def check_inputs_exist(patterns):
  """Local patterns must match files, not directories; remote ones are
  matched at run time."""
  for pattern in patterns:
    if is_remote(pattern):
      continue
    matched = FileSystems.match([pattern])[0].metadata_list
    if not matched:
      raise ConfigError(f'--input {pattern} matches no file')
    directories = [m.path for m in matched if os.path.isdir(m.path)]
    if directories:
      raise ConfigError(f'--input {pattern}: {directories[0]} is a directory;'
                        f' pass its files, e.g. --input "{directories[0]}/'
                        '*.jsonl"')


def check_tokenizer(config):
  """Loads a local or embedded tokenizer now, to fail before the run; a
  pad_id must be one of its token ids."""
  if is_remote(config.tokenizer):
    return  # read on the workers; nothing touches GCS at construction
  try:
    tokenizer = load_tokenizer(config.tokenizer, config.special_tokens_in_text)
  except TokenizerNotFound as error:
    raise ConfigError(f'{error} (pass --tokenizer with a HuggingFace hub '
                      'name or a tokenizer directory)') from None
  if config.pad_id is not None and config.pad_id >= len(tokenizer):
    raise ConfigError(f'pad_id {config.pad_id} is not a token id of tokenizer '
                      f'{config.tokenizer!r} (its ids are 0 to '
                      f'{len(tokenizer) - 1})')


def pipeline_options(beam_args) -> PipelineOptions:
  options = PipelineOptions(beam_args)
  if not options.view_as(StandardOptions).runner:
    options.view_as(StandardOptions).runner = DEFAULT_RUNNER
  return options


def _describe_progress(counts: dict, elapsed: float) -> str:
  lines = counts.get('lines_read', 0)
  return (f'[{elapsed:6.0f}s] read {lines} lines, wrote '
          f'{counts.get("batches_written", 0)} batches '
          f'({counts.get("records_written", 0)} records), rejected '
          f'{counts.get("rejected", 0)}; {lines / elapsed:.0f} lines/s')


def run_pipeline(config, options, work_dir) -> float:
  """Runs the batch job to completion; gives its wall time in seconds.

  Raises RunFailed when an input file is cut short or corrupt.
  """
  started = time.time()
  try:
    with progress.printed_every(
        _describe_progress, enabled=remote.runs_in_this_process(options)):
      with remote.new_pipeline(options) as root:
        build_batch_pipeline(root, config, work_dir)
  except Exception as error:  # pylint: disable=broad-except
    message = corrupt_input_message(error)
    if message is None:
      raise
    raise RunFailed(message) from None
  return time.time() - started


def format_summary(info: dict, wall_seconds: float) -> str:
  counts = info['counts']
  rows = [
      ('records in', counts['records_in']),
      ('  written', counts['records_written']),
      ('  rejected', counts['records_rejected']),
  ]
  rows += [(f'    {reason}', count)
           for reason, count in counts['rejected_by_reason'].items()]
  rows += [
      ('  truncated (written)', counts['records_truncated']),
      ('blank lines skipped', counts['blank_lines']),
      ('batches written', counts['batches_written']),
  ]
  rows += [(f'  bucket <= {boundary}',
            f'{bucket["batches"]} batches, {bucket["records"]} records')
           for boundary, bucket in sorted(counts['buckets'].items(),
                                          key=lambda item: int(item[0]))]
  efficiency = counts['padding_efficiency']
  records_per_second = counts['records_in'] / max(wall_seconds, 1e-9)
  rows += [
      ('padding efficiency',
       'n/a' if efficiency is None else f'{efficiency:.3f} (real / stored '
       'tokens)'),
      ('reconciled', 'yes: in = written + rejected' if counts['reconciled']
       else 'NO: in != written + rejected'),
      ('wall time', f'{wall_seconds:.1f} s ({records_per_second:.0f} '
       'records/s)'),
  ]
  width = max(len(name) for name, _ in rows)
  return '\n'.join(f'{name:<{width}}  {value}' for name, value in rows)


def rejected_too_much(info: dict, max_fraction: float):
  counts = info['counts']
  if not counts['records_in']:
    return None
  fraction = counts['records_rejected'] / counts['records_in']
  if fraction > max_fraction:
    return (f'{fraction:.1%} of the input was rejected, more than '
            f'--max_rejected_fraction {max_fraction}; see the rejected-*.jsonl '
            'files (outputs kept for inspection)')
  return None


def run_command(args, beam_args) -> int:
  config, beam_args = config_lib.resolve(args, beam_args)
  if config.streaming:
    check_tokenizer(config)
    return streaming.run(config, beam_args)
  options = pipeline_options(beam_args)
  remote.check_dataflow_job(config, options)
  check_inputs_exist(config.input)
  check_tokenizer(config)
  if remote.is_dry_run(options):
    print(remote.dry_run(config, options))
    return 0
  with prepare_output_dir(config.output, config.overwrite,
                          config.input) as claim:
    wall_seconds = run_pipeline(config, options, claim.work_dir)
    claim.complete()
    info = load_dataset_info(config.output)
  print(format_summary(info, wall_seconds))
  print(f'output: {config.output}')
  problem = rejected_too_much(info, config.max_rejected_fraction)
  if problem:
    print(f'sftbeam: error: {problem}', file=sys.stderr)
    return 1
  return 0


def _quiet_libraries():
  """Silences import-time chatter that is noise on sftbeam's command line.

  transformers advises installing PyTorch (sftbeam needs only its
  tokenizers); TensorFlow prints CPU features and absl notices.
  """
  os.environ.setdefault('TRANSFORMERS_NO_ADVISORY_WARNINGS', '1')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  for name in ('apache_beam.runners.common',  # a step in this process
               'apache_beam.runners.portability.local_job_service'):  # workers
    logging.getLogger(name).addFilter(_skip_corrupt_input_logs)


def _skip_corrupt_input_logs(record) -> bool:
  """Beam logs a failing step's exception, traceback and all, before it
  raises it; sftbeam prints its own input errors as one line instead."""
  return (not isinstance(record.msg, CorruptInputError) and
          CorruptInputError.__name__ not in record.getMessage())


def main(argv=None) -> int:
  _quiet_libraries()
  try:
    args, beam_args = _parser().parse_known_args(argv)
    return run_command(args, beam_args)
  except ConfigError as error:
    print(f'sftbeam: error: {one_line(error)}', file=sys.stderr)
    return 2
  except RunFailed as error:
    print(f'sftbeam: error: {one_line(error)}', file=sys.stderr)
    return 1


def one_line(error) -> str:
  """The error's message on one line of at most MAX_ERROR_CHARS."""
  line = ' '.join(str(error).split())
  if len(line) <= MAX_ERROR_CHARS:
    return line
  return (f'{line[:MAX_ERROR_CHARS]}...[{len(line) - MAX_ERROR_CHARS} more '
          'chars]')


if __name__ == '__main__':
  sys.exit(main())
