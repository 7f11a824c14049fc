"""The `sftbeam` command line.

  sftbeam run --input PATTERN --output DIR [--config configs/X.yaml]
              [sftbeam options] [Beam pipeline options]
  sftbeam run --streaming --input_subscription projects/P/subscriptions/S
              --output DIR [--window_seconds N] [...]   (until stopped)
  sftbeam inspect DIR --id ID | DIR --batch N --row I | --prompt P --output O
  sftbeam stats DIR [--plot FILE.png]

Exit codes: 0 done; 1 the run failed or rejected more than
--max_rejected_fraction of its input; 2 a config error (one line, before
anything runs).
"""

import argparse
import os
import sys
import time

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from sftbeam.pipeline import config as config_lib
from sftbeam.pipeline import inspect, remote, report
from sftbeam.pipeline import streaming
from sftbeam.pipeline.graph import build_batch_pipeline
from sftbeam.pipeline.options import ConfigError
from sftbeam.pipeline.output_dir import prepare_output_dir, remove_empty_temp_dirs
from sftbeam.pipeline.readers import load_dataset_info
from sftbeam.transforms import progress
from sftbeam.transforms.paths import is_remote
from sftbeam.transforms.tokenizer_source import TokenizerNotFound, load_tokenizer

# The DirectRunner first tries Prism, which downloads a binary; naming its
# batch engine directly keeps the default run offline.
DEFAULT_RUNNER = 'FnApiRunner'


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
  inspect.add_parser(commands)
  report.add_parser(commands)
  return parser


def check_inputs_exist(patterns):
  """Local patterns must match files; remote ones are matched at run time."""
  for pattern in patterns:
    if is_remote(pattern):
      continue
    if not FileSystems.match([pattern])[0].metadata_list:
      raise ConfigError(f'--input {pattern} matches no file')


def check_tokenizer(config):
  """Loads a local or embedded tokenizer now, to fail before the run."""
  if is_remote(config.tokenizer):
    return  # read on the workers; nothing touches GCS at construction
  try:
    load_tokenizer(config.tokenizer, config.special_tokens_in_text)
  except TokenizerNotFound as error:
    raise ConfigError(f'{error} (pass --tokenizer with a HuggingFace hub '
                      'name or a tokenizer directory)') from None


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


def run_pipeline(config, options) -> float:
  """Runs the batch job to completion; gives its wall time in seconds."""
  started = time.time()
  with progress.printed_every(
      _describe_progress, enabled=remote.runs_in_this_process(options)):
    with remote.new_pipeline(options) as root:
      build_batch_pipeline(root, config)
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
  prepare_output_dir(config.output, config.overwrite)
  wall_seconds = run_pipeline(config, options)
  remove_empty_temp_dirs(config.output)
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


def main(argv=None) -> int:
  _quiet_libraries()
  try:
    args, beam_args = _parser().parse_known_args(argv)
    if args.command != 'run':  # inspect, stats: no Beam options
      if beam_args:
        raise ConfigError(f'unrecognized arguments: {" ".join(beam_args)}')
      return args.handler(args)
    return run_command(args, beam_args)
  except ConfigError as error:
    print(f'sftbeam: error: {error}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
