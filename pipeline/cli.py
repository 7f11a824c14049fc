"""The `sftbeam` command line.

  sftbeam run --input PATTERN --output DIR [--config configs/X.yaml]
              [sftbeam options] [Beam pipeline options]
  sftbeam run --streaming --input_subscription projects/P/subscriptions/S
              --output DIR [--window_seconds N] [...]   (until stopped)
  sftbeam inspect DIR --id ID | DIR --batch N --row I | --prompt P --output O
                  | --messages JSON
  sftbeam stats DIR [--plot FILE.png]

Exit codes: 0 done; 1 the run failed or rejected more than
--max_rejected_fraction of its input; 2 a config error (one line, before
anything runs); 130 interrupted (Ctrl-C).
"""

import argparse
import logging
import os
import sys

from sftbeam import console
from sftbeam.pipeline import batch
from sftbeam.pipeline import config as config_lib
from sftbeam.pipeline import inspect_command, stats_command, streaming
from sftbeam.pipeline.options import ConfigError, one_line
from sftbeam.pipeline.output_dir import ReplaceFailed
from sftbeam.transforms.read import CorruptInputError


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
  inspect_command.add_parser(commands)
  stats_command.add_parser(commands)
  return parser


def run_command(args, beam_args) -> int:
  """`sftbeam run`: a batch or a streaming run of the resolved config."""
  config, beam_args = config_lib.resolve(args, beam_args)
  return (streaming if config.streaming else batch).run(config, beam_args)


def _quiet_libraries():
  """Silences import-time chatter that is noise on sftbeam's command line.

  transformers advises installing PyTorch (sftbeam needs only its
  tokenizers).
  """
  os.environ.setdefault('TRANSFORMERS_NO_ADVISORY_WARNINGS', '1')
  for name in ('apache_beam.runners.common',  # a step in this process
               'apache_beam.runners.portability.local_job_service'):  # workers
    logging.getLogger(name).addFilter(_skip_logs_of_one_line_errors)
  # Every local worker process warns that it has no directory for objects
  # registered by user code, which sftbeam never registers.
  logging.getLogger('apache_beam.runners.portability.local_job_service'
                    ).addFilter(lambda record: 'No semi_persistent_directory'
                                not in record.getMessage())


def _skip_logs_of_one_line_errors(record) -> bool:
  """Beam logs a failing step's exception, traceback and all, before it
  raises it; sftbeam prints its own input errors, and Ctrl-C, as one line
  instead."""
  message = record.getMessage()
  return (not isinstance(record.msg, CorruptInputError) and
          CorruptInputError.__name__ not in message and
          not message.startswith(KeyboardInterrupt.__name__))


def main(argv=None) -> int:
  _quiet_libraries()
  try:
    args, beam_args = _parser().parse_known_args(argv)
    if args.command != 'run':  # inspect, stats: no Beam options
      if beam_args:
        raise ConfigError(f'unrecognized arguments: {" ".join(beam_args)}')
      return _printed(args.handler, args)
    return run_command(args, beam_args)
  except ConfigError as error:
    print(f'sftbeam: error: {one_line(error)}', file=sys.stderr)
    return 2
  except (batch.RunFailed, ReplaceFailed) as error:
    print(f'sftbeam: error: {one_line(error)}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    return console.interrupted()


def _printed(handler, args) -> int:
  """Runs a command that prints what it found; gives its exit code.

  A reader that stops early (`| head`) is no error.
  """
  try:
    code = handler(args)
    sys.stdout.flush()
    return code
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


