"""Every sftbeam option: its name, type, default, help and validation.

This table is the one place an option is defined. The YAML configs, the
CLI flags and the checks all read it.
"""

import dataclasses
import re
import reprlib
import types
from typing import Any, Callable, Optional, Tuple

from sftbeam.transforms.pad import PAD_TO_MODES
from sftbeam.transforms.tokenize import TRUNCATION_MODES
from sftbeam.transforms.tokenizer_source import EMBEDDED

# Every 16 tokens up to 512, then every 64 up to 4096: on the shared GSM8K +
# Alpaca data with batch 32 this stores 0.95 real tokens per stored token
# (powers of two: 0.70). See benchmarks/.
DEFAULT_BOUNDARIES = tuple(range(16, 513, 16)) + tuple(range(576, 4097, 64))
# The readers give token ids as int32 (transforms.schema.parse_batch).
MAX_TOKEN_ID = 2**31 - 1


# A value shown in an error message is cut to about this many characters.
MAX_SHOWN_CHARS = 80


class ConfigError(ValueError):
  """A bad option value; the CLI prints it as one line and exits 2."""


_LIMITED_REPR = reprlib.Repr()
_LIMITED_REPR.maxlevel = 3
_LIMITED_REPR.maxstring = _LIMITED_REPR.maxother = _LIMITED_REPR.maxlong = (
    MAX_SHOWN_CHARS)


def shown(value) -> str:
  """repr(value) for an error message: at most MAX_SHOWN_CHARS (and a mark
  saying how much was cut), at a cost bounded whatever the value's size."""
  text = _LIMITED_REPR.repr(value)
  if len(text) <= MAX_SHOWN_CHARS:
    return text
  return f'{text[:MAX_SHOWN_CHARS]}...[cut]'


def _is_int(value):
  return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value):
  return _is_int(value) and value > 0


def _is_pubsub_path(value: str, kind: str) -> bool:
  return re.fullmatch(f'projects/[^/]+/{kind}/[^/]+', value) is not None


@dataclasses.dataclass(frozen=True)
class Option:
  name: str
  kind: str  # str, int, float, bool, optional_bool, optional_int, list, ints
  default: Any
  help: str
  choices: Tuple[str, ...] = ()
  check: Optional[Callable[[Any], bool]] = None
  requirement: str = ''  # what `check` demands, for the error message


OPTIONS = (
    Option('input', 'list', [], 'input file patterns (globs; local or gs://)'),
    Option('output', 'str', '', 'output directory (local or gs://)'),
    Option('tokenizer', 'str', EMBEDDED,
           'HuggingFace hub name, local directory, gs:// directory, or '
           '"embedded" (the bundled Qwen tokenizer)'),
    Option('prompt_field', 'str', 'prompt', 'JSON field of the prompt'),
    Option('output_field', 'str', 'output', 'JSON field of the output'),
    Option('id_field', 'str', 'id',
           'JSON field of the record id (absent: a content hash)'),
    Option('add_special_tokens', 'optional_bool', None,
           'add the tokenizer specials to prompts (null: tokenizer default)'),
    Option('append_eos', 'bool', False, 'append the eos token to outputs'),
    Option('special_tokens_in_text', 'str', 'text',
           'how "<|im_end|>" and the like inside data are tokenized: "text" '
           '(as plain text, safe) or "special" (as the special token)',
           choices=('text', 'special')),
    Option('boundaries', 'ints', list(DEFAULT_BOUNDARIES),
           'bucket boundaries on L = prompt + output - 1 tokens',
           check=lambda b: bool(b) and all(map(_positive_int, b)) and
           list(b) == sorted(set(b)),
           requirement='a non-empty, strictly increasing list of positive '
           'integers'),
    Option('max_seq_len', 'optional_int', None,
           'longest L kept (null: the largest boundary)',
           check=lambda v: v is None or _positive_int(v),
           requirement='a positive integer'),
    Option('truncation', 'str', 'none', 'what to do with records over '
           'max_seq_len', choices=TRUNCATION_MODES),
    Option('batch_size', 'int', 32, 'rows per batch', check=_positive_int,
           requirement='a positive integer'),
    Option('pad_to', 'str', 'bucket', 'pad batches to the bucket boundary '
           '(static shapes) or to the longest row', choices=PAD_TO_MODES),
    Option('pad_id', 'optional_int', None,
           'padding id (null: tokenizer pad id, else eos id); must be a '
           'token id of the tokenizer',
           check=lambda v: v is None or 0 <= v <= MAX_TOKEN_ID,
           requirement=f'a token id, from 0 to {MAX_TOKEN_ID}'),
    Option('num_shards', 'int', 4, 'TFRecord shards to write',
           check=_positive_int, requirement='a positive integer'),
    Option('compression', 'str', 'none', 'shard compression',
           choices=('none', 'gzip')),
    Option('tokenizer_threads', 'int', 0,
           'threads calling the tokenizer in each worker process (0: one '
           'per core the process may use; 1 where the runner starts a '
           'process per core, as Dataflow does)',
           check=lambda v: _is_int(v) and v >= 0,
           requirement='a non-negative integer'),
    Option('read_chunk_lines', 'int', 4096,
           'lines per chunk (tokenized 512 records a call, overlapping '
           'the work downstream)',
           check=_positive_int, requirement='a positive integer'),
    Option('max_line_bytes', 'int', 8 << 20,
           'longer input lines are rejected unread (line_too_long)',
           check=_positive_int, requirement='a positive integer'),
    Option('max_rejected_fraction', 'float', 1.0,
           'fail the run (exit 1) when more of the input is rejected',
           check=lambda v: 0.0 <= v <= 1.0, requirement='between 0 and 1'),
    Option('global_batching', 'optional_bool', None,
           'true: reshuffle chunks and group each bucket across workers '
           '(parallel on Dataflow; a local runner holds all data between '
           'such stages in memory); false: batch within each bundle, no '
           'shuffle, flat memory; null: false on local runners, else true'),
    Option('overwrite', 'bool', False,
           'replace the outputs of an earlier run in --output'),
    Option('streaming', 'bool', False,
           'read records from Pub/Sub until cancelled, writing windowed '
           'shards (see README: streaming mode)'),
    Option('input_subscription', 'str', '',
           'streaming: the Pub/Sub subscription to read, '
           'projects/P/subscriptions/S',
           check=lambda v: not v or _is_pubsub_path(v, 'subscriptions'),
           requirement='projects/P/subscriptions/S'),
    Option('input_topic', 'str', '',
           'streaming: the Pub/Sub topic to read, projects/P/topics/T (a '
           'temporary subscription made at start: earlier messages are not '
           'seen)', check=lambda v: not v or _is_pubsub_path(v, 'topics'),
           requirement='projects/P/topics/T'),
    Option('window_seconds', 'int', 60,
           'streaming: shards are written per window of this many seconds',
           check=_positive_int, requirement='a positive integer'),
    Option('max_buffering_seconds', 'float', 10.0,
           'streaming: a partial batch is flushed after this long',
           check=lambda v: v > 0, requirement='a positive number'),
    Option('dead_letter_topic', 'str', '',
           'streaming: also publish rejected records to this Pub/Sub topic',
           check=lambda v: not v or _is_pubsub_path(v, 'topics'),
           requirement='projects/P/topics/T'),
)

OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


class Config(types.SimpleNamespace):
  """Resolved option values, by attribute (`config.batch_size`)."""

  def to_dict(self) -> dict:
    return dict(vars(self))


def defaults() -> dict:
  return {option.name: option.default for option in OPTIONS}


def _type_ok(option: Option, value) -> bool:
  kind = option.kind
  if kind == 'str':
    return isinstance(value, str)
  if kind in ('int', 'optional_int'):
    return _is_int(value) or (kind == 'optional_int' and value is None)
  if kind == 'float':
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if kind in ('bool', 'optional_bool'):
    return isinstance(value, bool) or (kind == 'optional_bool' and
                                       value is None)
  if kind == 'list':
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
  if kind == 'ints':
    return isinstance(value, (list, tuple)) and all(map(_is_int, value))
  raise AssertionError(kind)


_KIND_WORDS = {
    'str': 'a string', 'int': 'an integer', 'optional_int': 'an integer or '
    'null', 'float': 'a number', 'bool': 'true or false', 'optional_bool':
    'true, false or null', 'list': 'a list of strings', 'ints': 'a list of '
    'integers'}


def check_value(name: str, value, source: str):
  """Raises ConfigError unless `value` is a valid value of option `name`."""
  option = OPTIONS_BY_NAME.get(name)
  if option is None:
    raise ConfigError(f'{source}: unknown option "{name}"; known options: '
                      f'{", ".join(OPTIONS_BY_NAME)}')
  if not _type_ok(option, value):
    raise ConfigError(f'{source}: {name} must be {_KIND_WORDS[option.kind]}, '
                      f'got {shown(value)}')
  if option.choices and value not in option.choices:
    raise ConfigError(f'{source}: {name} must be one of '
                      f'{", ".join(option.choices)}; got {shown(value)}')
  if option.check and not option.check(value):
    raise ConfigError(f'{source}: {name} must be {option.requirement}; '
                      f'got {shown(value)}')


def _check_streaming_source(values: dict):
  """A streaming run reads exactly one Pub/Sub source and no files."""
  sources = [name for name in ('input_subscription', 'input_topic')
             if values[name]]
  if len(sources) != 1:
    raise ConfigError('streaming reads one Pub/Sub source: pass '
                      '--input_subscription projects/P/subscriptions/S or '
                      '--input_topic projects/P/topics/T')
  if values['input']:
    raise ConfigError('--input is for batch runs; streaming reads '
                      f'--{sources[0]}')


def make_config(values: dict) -> Config:
  """Checks the values of every option together and fills in derived ones."""
  if not values['output']:
    raise ConfigError('no output directory: pass --output DIR')
  if values['streaming']:
    _check_streaming_source(values)
  elif not values['input']:
    raise ConfigError('no input: pass --input PATTERN')
  values = dict(values, boundaries=list(values['boundaries']))
  if values['max_seq_len'] is None:
    values['max_seq_len'] = values['boundaries'][-1]
  if values['max_seq_len'] > values['boundaries'][-1]:
    raise ConfigError(
        f'max_seq_len {values["max_seq_len"]} is above the largest bucket '
        f'boundary {values["boundaries"][-1]}: add a boundary or lower it')
  return Config(**values)
