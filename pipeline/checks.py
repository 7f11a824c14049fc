"""Checks before a run: what can be found wrong before anything is read
or written, in one order for batch and streaming runs.

  1. a Dataflow job's options (placeholders, temp location, bucket and
     project names)
  2. the input files (batch runs: they exist and are files, each of one
     mixture source only)
  3. the tokenizer (it loads; append_eos and pad_id fit it)
  4. the chat template (it compiles and renders a plain conversation)

Each raises ConfigError: one line, exit 2.
"""

import os

from apache_beam.io.filesystems import FileSystems

from sftbeam.pipeline import remote
from sftbeam.pipeline.mixture import input_patterns, run_sources
from sftbeam.pipeline.options import ConfigError, one_line
from sftbeam.transforms import chat
from sftbeam.transforms.lines_to_batches import chat_template_text
from sftbeam.transforms.paths import is_remote
from sftbeam.transforms.sources import files_by_source
from sftbeam.transforms.tokenizer_backend import BackendUnavailable
from sftbeam.transforms.tokenizer_source import (TokenizerNotFound,
                                                 shared_tokenizer)


def check_run(config, options):
  """Every check, in order (see the module docstring)."""
  remote.check_dataflow_job(config, options)
  if not config.streaming:
    check_inputs_exist(input_patterns(config))
    check_sources_apart(config)
  check_tokenizer(config)
  check_chat_input(config)


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


def check_sources_apart(config):
  """A local file two mixture sources both match is refused (its records
  would be read twice under two names); remote ones when the run reads."""
  if not config.mixture:
    return
  sources = [source._replace(input=tuple(
      pattern for pattern in source.input if not is_remote(pattern)))
             for source in run_sources(config)]
  try:
    files_by_source(sources)
  except ValueError as error:
    raise ConfigError(f'--mixture {config.mixture}: {error}') from None


def _input_is_a_directory(pattern: str, directory: str) -> ConfigError:
  return ConfigError(f'--input {pattern}: {directory} is a directory; pass '
                     f'its files, e.g. --input "{directory}/*.jsonl"')


def check_tokenizer(config):
  """Loads a local or embedded tokenizer now, to fail before the run (its
  facts only, when an earlier process kept them: transforms/
  tokenizer_cache.py).

  In this process: a local run's steps then find it loaded.
  """
  if is_remote(config.tokenizer):
    return  # read on the workers; nothing touches GCS at construction
  try:
    facts = shared_tokenizer(config.tokenizer,
                             config.tokenizer_backend).facts
  except TokenizerNotFound as error:
    raise ConfigError(f'{error} (pass --tokenizer with a HuggingFace hub '
                      'name or a tokenizer directory)') from None
  except BackendUnavailable as error:
    raise ConfigError(f'--tokenizer_backend fastokens: {error} (use '
                      '--tokenizer_backend auto or hf)') from None
  if config.append_eos and facts.eos_token_id is None:
    raise ConfigError(f'append_eos: the tokenizer {config.tokenizer!r} has '
                      'no eos_token_id')
  if config.pad_id is not None and config.pad_id >= facts.vocab_size:
    raise ConfigError(f'pad_id {config.pad_id} is not a token id of tokenizer '
                      f'{config.tokenizer!r} (its ids are 0 to '
                      f'{facts.vocab_size - 1})')


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
