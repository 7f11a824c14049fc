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
anything runs).
"""

import argparse
import logging
import os
import sys
import time

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from sftbeam.pipeline import config as config_lib
from sftbeam.pipeline import (inspect, progress, remote, report, runners,
                              streaming)
from sftbeam.pipeline.graph import build_batch_pipeline
from sftbeam.pipeline.options import ConfigError
from sftbeam.pipeline.output_dir import ReplaceFailed, prepare_output_dir
from sftbeam.pipeline.readers import load_dataset_info
from sftbeam.transforms import chat, pack
from sftbeam.transforms.lines_to_batches import chat_template_text
from sftbeam.transforms.paths import is_remote
from sftbeam.transforms.read import CorruptInputError, corrupt_input_message
from sftbeam.transforms.stats import rejected_by_reason
from sftbeam.transforms.tokenizer_backend import BackendUnavailable
from sftbeam.transforms.tokenizer_source import (TokenizerNotFound,
                                                 shared_tokenizer)

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
  inspect.add_parser(commands)
  report.add_parser(commands)
  return parser


def check_inputs_exist(patterns):
  """Local patterns must match files, not directories; remote ones are
  matched at run time. A pattern ending in `/` names a directory (Beam
  would read it as DIR/*): refused, local or remote."""
  for pattern in patterns:
    if pattern.endswith('/'):
      raise _input_is_a_directory(pattern, pattern.rstrip('/'))
    if is_remote(pattern):
      continue
    matched = FileSystems.match([pattern])[0].metadata_list
    if not matched:
      raise ConfigError(f'--input {pattern} matches no file')
    for metadata in matched:
      if os.path.isdir(metadata.path):
        raise _input_is_a_directory(pattern, metadata.path)


def _input_is_a_directory(pattern: str, directory: str) -> ConfigError:
  return ConfigError(f'--input {pattern}: {directory} is a directory; pass '
                     f'its files, e.g. --input "{directory}/*.jsonl"')


def check_tokenizer(config):
  """Loads a local or embedded tokenizer now, to fail before the run.

  In this process: a local run's steps then find it loaded.
  """
  if is_remote(config.tokenizer):
    return  # read on the workers; nothing touches GCS at construction
  try:
    tokenizer = shared_tokenizer(config.tokenizer,
                                 config.tokenizer_backend).tokenizer
  except TokenizerNotFound as error:
    raise ConfigError(f'{error} (pass --tokenizer with a HuggingFace hub '
                      'name or a tokenizer directory)') from None
  except BackendUnavailable as error:
    raise ConfigError(f'--tokenizer_backend fastokens: {error} (use '
                      '--tokenizer_backend auto or hf)') from None
  if config.append_eos and tokenizer.eos_token_id is None:
    raise ConfigError(f'append_eos: the tokenizer {config.tokenizer!r} has '
                      'no eos_token_id')
  if config.pad_id is not None and config.pad_id >= len(tokenizer):
    raise ConfigError(f'pad_id {config.pad_id} is not a token id of tokenizer '
                      f'{config.tokenizer!r} (its ids are 0 to '
                      f'{len(tokenizer) - 1})')


def check_chat_input(config):
  """A chat_template file must be readable, compile, and render a plain
  conversation; so must the tokenizer's own template when every record is
  a conversation (input_format messages), which needs one."""
  template = None
  if config.chat_template:
    try:
      template = chat_template_text(config.chat_template)
    except (OSError, UnicodeDecodeError) as error:
      raise ConfigError(f'--chat_template {config.chat_template}: cannot '
                        f'read it ({error})') from None
  if is_remote(config.tokenizer) or not (
      template or config.input_format == 'messages'):
    return
  tokenizer = shared_tokenizer(config.tokenizer,
                               config.tokenizer_backend).tokenizer
  if not template and not chat.has_chat_template(tokenizer):
    raise ConfigError(f'--input_format messages: the tokenizer '
                      f'{config.tokenizer} has no chat template; pass '
                      '--chat_template FILE.jinja')
  try:
    chat.renderer_for(tokenizer, template, config.chat_template_kwargs)
  except ValueError as error:
    where = (f'--chat_template {config.chat_template}' if template else
             f'the chat template of {config.tokenizer}')
    raise ConfigError(f'{where}: {one_line(error)}') from None


def input_size(patterns):
  """Bytes of every input file, or None when that does not tell how much
  is left to read (remote or compressed input)."""
  total = 0
  for pattern in patterns:
    if is_remote(pattern):
      return None
    for metadata in FileSystems.match([pattern])[0].metadata_list:
      if CompressionTypes.detect_compression_type(
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


def run_pipeline(config, options, work_dir) -> float:
  """Runs the batch job to completion; gives its wall time in seconds.

  Raises RunFailed when an input file is cut short or corrupt.
  """
  started = time.time()
  describe = progress_describer(input_size(config.input))
  try:
    with progress.printed(describe,
                          enabled=runners.runs_in_this_process(options)):
      with runners.new_pipeline(options) as root:
        build_batch_pipeline(root, config, work_dir)
  except Exception as error:  # pylint: disable=broad-except
    message = corrupt_input_message(error)
    if message is None:
      raise
    raise RunFailed(message) from None
  return time.time() - started


def _counted(count: int, noun: str) -> str:
  """"1 batch", "2 batches"."""
  plural = noun + ('es' if noun.endswith(('s', 'ch')) else 's')
  return f'{count} {noun if count == 1 else plural}'


def _efficiency_rows(counts: dict) -> list:
  """Summary rows of how much of what was stored is real tokens."""
  efficiency = counts['padding_efficiency']
  packing = counts.get('packing')
  if packing:
    return [('packed rows', f'{packing["packed_rows"]}, '
             f'{pack.records_per_row_text(packing)}'),
            ('packing efficiency', f'{efficiency:.3f} (real / stored tokens)')]
  return [('padding efficiency',
           'n/a' if efficiency is None else f'{efficiency:.3f} (real / stored '
           'tokens)')]


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
      ('  chat records', f'{counts["chat_records"]} ({counts["assistant_turns"]}'
       f' assistant turns learned, {counts["tool_calls_learned"]} tool calls,'
       f' {counts["reasoning_turns_learned"]} with reasoning; '
       f'{counts["examples_written"]} rows)'),
      ('  truncated (written)', counts['records_truncated']),
      ('  with special-token text', f'{counts["records_with_special_token_text"]} '
       '(' + ('mapped to special ids' if info['config'][
           'special_tokens_in_text'] == 'special' else 'kept as text') + ')'),
      ('blank lines skipped', counts['blank_lines']),
      ('batches written', counts['batches_written']),
  ]
  rows += [(f'  bucket <= {boundary}',
            f'{_counted(bucket["batches"], "batch")}, '
            f'{_counted(bucket["records"], "record")}')
           for boundary, bucket in sorted(counts['buckets'].items(),
                                          key=lambda item: int(item[0]))]
  rows += _efficiency_rows(counts)
  records_per_second = counts['records_in'] / max(wall_seconds, 1e-9)
  rows += [
      ('reconciled', 'yes: in = written + rejected' if counts['reconciled']
       else 'NO: in != written + rejected'),
      ('tokenizer backend', f'{info["tokenizer"]["backend"]} '
       f'({info["tokenizer"]["backend_reason"]})'),
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
    check_chat_input(config)
    return streaming.run(config, beam_args)
  options = runners.pipeline_options(beam_args)
  remote.check_dataflow_job(config, options)
  check_inputs_exist(config.input)
  check_tokenizer(config)
  check_chat_input(config)
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
  tokenizers).
  """
  os.environ.setdefault('TRANSFORMERS_NO_ADVISORY_WARNINGS', '1')
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
    if args.command != 'run':  # inspect, stats: no Beam options
      if beam_args:
        raise ConfigError(f'unrecognized arguments: {" ".join(beam_args)}')
      return args.handler(args)
    return run_command(args, beam_args)
  except ConfigError as error:
    print(f'sftbeam: error: {one_line(error)}', file=sys.stderr)
    return 2
  except (RunFailed, ReplaceFailed) as error:
    print(f'sftbeam: error: {one_line(error)}', file=sys.stderr)
    return 1


def one_line(error) -> str:
  """The error's message on one line of at most MAX_ERROR_CHARS."""
  line = ' '.join(str(error).split())
  if len(line) <= MAX_ERROR_CHARS:
    return line
  return (f'{line[:MAX_ERROR_CHARS]}...[{len(line) - MAX_ERROR_CHARS} more '
          'chars]')


def console_main() -> int:
  """The `sftbeam` command: main() in a process of its own.

  transformers imports PyTorch whenever it is installed, seconds of
  start-up, though tokenizers never use it; neither does the command (the
  torch reader runs in the user's training process). Hidden here, not in
  main(), which tests call in a process that uses PyTorch.
  """
  sys.modules.setdefault('torch', None)
  return main()


if __name__ == '__main__':
  sys.exit(console_main())
