"""Every sftbeam option: its name, type, default, help and validation.

This table is the one place an option is defined. The YAML configs, the
CLI flags and the checks all read it.
"""

import dataclasses
import difflib
import reprlib
from typing import Any, Callable, Optional, Tuple

from sftbeam.pipeline import gcp_names, mixture
from sftbeam.transforms import schema
from sftbeam.transforms.batch import BATCHING_STRATEGIES
from sftbeam.transforms.pack import DEFAULT_PACK_WINDOW
from sftbeam.transforms.parse import FieldNames
from sftbeam.transforms.padded import PAD_TO_MODES
from sftbeam.transforms.chat_records import (INPUT_FORMATS,
                                             RESERVED_TEMPLATE_KWARGS)
from sftbeam.transforms.chat_rows import CHAT_ROWS, TRAIN_ON
from sftbeam.transforms.paths import GLOB_CHARACTERS, is_remote
from sftbeam.transforms.spec_arithmetic import (SPECIAL_TOKEN_MODES,
                                                TRUNCATION_MODES)
from sftbeam.transforms.tokenizer_backend import BACKENDS
from sftbeam.transforms.tokenizer_source import EMBEDDED
from sftbeam.transforms.write import OUTPUT_FORMATS, SHARD_COMPRESSIONS

# Every 16 tokens up to 512, then every 64 up to 4096: docs/performance.md
# compares their padding efficiency with other schemes' (powers of two, a
# batch's own longest row) on the shared GSM8K + Alpaca data.
DEFAULT_BOUNDARIES = tuple(range(16, 513, 16)) + tuple(range(576, 4097, 64))
# The readers give token ids as int32 (example_codec.parse_batch).
MAX_TOKEN_ID = 2**31 - 1
# A value shown in an error message is cut to about this many characters.
MAX_SHOWN_CHARS = 80
# Longest string option value (a path, a field name, a Pub/Sub name): Linux's
# PATH_MAX. Values travel into every rejection message and worker.
MAX_OPTION_CHARS = 4096
# Most positions in a row (a bucket boundary, pack_length): a batch's arrays
# are allocated whole, B x this many int64s per feature.
MAX_ROW_TOKENS = 1 << 20
DEFAULT_BATCH_SIZE = 32


class ConfigError(ValueError):
  """A bad option value; the CLI prints it as one line and exits 2."""


_LIMITED_REPR = reprlib.Repr()
_LIMITED_REPR.maxlevel = 3
_LIMITED_REPR.maxstring = _LIMITED_REPR.maxother = _LIMITED_REPR.maxlong = (
    MAX_SHOWN_CHARS)


# An error is one line of at most this many characters (a cut is marked):
# messages quote values, and some come from libraries.
MAX_ERROR_CHARS = 600


def one_line(error) -> str:
  """An error's message on one line of at most MAX_ERROR_CHARS."""
  line = ' '.join(str(error).split())
  if len(line) <= MAX_ERROR_CHARS:
    return line
  return (f'{line[:MAX_ERROR_CHARS]}...[{len(line) - MAX_ERROR_CHARS} more '
          'chars]')


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


def _row_length(value):
  return _positive_int(value) and value <= MAX_ROW_TOKENS


def _valid_buckets(paths) -> bool:
  """Whether every gs:// path of `paths` names a valid bucket."""
  return all(gcp_names.bucket_problem(path) is None for path in paths)


def _pubsub_check(kind: str) -> dict:
  """The check and requirement of an optional Pub/Sub `kind` path."""
  return {'check': lambda value: not value or gcp_names.pubsub_problem(
              value, kind) is None,
          'requirement': f'projects/P/{kind}/NAME, P a project id '
                         f'({gcp_names.PROJECT_RULES}), NAME '
                         f'{gcp_names.PUBSUB_NAME_RULES}'}


_BUCKET_NOTE = f'(a gs:// bucket name is {gcp_names.BUCKET_RULES})'


@dataclasses.dataclass(frozen=True)
class Option:
  name: str
  # str, optional_str, int, optional_int, float, bool, optional_bool,
  # list (of str), ints, object (a JSON object; a flag gives its JSON)
  kind: str
  default: Any
  help: str
  choices: Tuple[str, ...] = ()
  check: Optional[Callable[[Any], bool]] = None
  requirement: str = ''  # what `check` demands, for the error message


OPTIONS = (
    Option('input', 'list', [],
           'input file patterns (globs; local or gs://): JSON lines, '
           'compressed or not, and .parquet files',
           check=_valid_buckets,
           requirement=f'local or gs:// patterns {_BUCKET_NOTE}'),
    Option('output', 'str', '', 'output directory (local or gs://)',
           # Beam lists and deletes objects by glob, with no escape.
           check=lambda v: not (is_remote(v) and GLOB_CHARACTERS.search(v))
           and _valid_buckets([v]),
           requirement='a local directory, or a remote one without [ * ? in '
           'its path (Beam reads them as glob characters there) '
           f'{_BUCKET_NOTE}'),
    Option('mixture', 'str', '',
           'a mixture file (YAML, instead of --input): its "sources", each '
           'with a name, input globs, a weight and optionally its own field '
           'names (docs/mixtures.md)'),
    Option('validation_fraction', 'float', 0.0,
           'per source, this fraction of the records that are not rejected '
           '(round(F * n), chosen by hash) goes to OUT/validation, the rest '
           'to OUT/train; 0: no split, the output layout unchanged '
           '(docs/mixtures.md)',
           check=lambda v: 0.0 <= v < 1.0, requirement='at least 0 and below 1'),
    Option('seed', 'int', 0,
           'chooses which records get a mixture\'s extra copy and which go to '
           'validation (a hash of seed, source name and record id)',
           check=lambda v: v >= 0, requirement='a non-negative integer'),
    Option('tokenizer', 'str', EMBEDDED,
           'HuggingFace hub name, local directory, gs:// directory, or '
           '"embedded" (the bundled Qwen tokenizer)',
           check=lambda v: _valid_buckets([v]),
           requirement='a hub name, or a local or gs:// directory '
           f'{_BUCKET_NOTE}'),
    Option('prompt_field', 'str', 'prompt',
           'JSON field (Parquet column) of the prompt'),
    Option('output_field', 'str', 'output',
           'JSON field (Parquet column) of the output'),
    Option('id_field', 'str', 'id',
           'JSON field (Parquet column) of the record id (absent: a content '
           'hash)'),
    Option('input_format', 'str', 'auto',
           'prompt_output: records are {prompt, output}; messages: records '
           'are conversations ({messages} or TRL\'s {prompt, completion} '
           'lists, docs/chat.md); auto: decided per record by its fields',
           choices=INPUT_FORMATS),
    Option('chat_template', 'str', '',
           'a Jinja chat template file for chat records (empty: the '
           'tokenizer\'s own)'),
    Option('chat_template_kwargs', 'object', {},
           'chat records: variables for the chat template, as a JSON object '
           '(e.g. {"enable_thinking": false}); a record\'s own '
           '"chat_template_kwargs" override them key by key',
           check=lambda v: not RESERVED_TEMPLATE_KWARGS.intersection(v),
           requirement='an object without the keys of the template call '
           f'itself ({", ".join(sorted(RESERVED_TEMPLATE_KWARGS))})'),
    Option('train_on', 'str', 'assistant',
           'chat records: learn every assistant message (but those with '
           'weight 0 or train false), or only the last one', choices=TRAIN_ON),
    Option('chat_rows', 'str', 'whole',
           'chat records: whole (one row per conversation) or per_turn (one '
           'row per learned assistant message, its history as the model '
           'sees it at that turn; docs/chat.md says when to use which)',
           choices=CHAT_ROWS),
    Option('add_special_tokens', 'optional_bool', None,
           'add the tokenizer specials to prompts (null: tokenizer default)'),
    Option('append_eos', 'bool', False, 'append the eos token to outputs'),
    Option('special_tokens_in_text', 'str', 'special',
           'how "<|im_end|>" and the like inside prompts and outputs are '
           'tokenized: "special" (as the special token, as the spec\'s '
           'tokenizer(text) does) or "text" (as plain text: protects against '
           'control tokens injected by untrusted data)',
           choices=SPECIAL_TOKEN_MODES),
    Option('tokenizer_backend', 'str', 'auto',
           'what encodes texts: "fastokens" (fast), "hf" (HuggingFace '
           'tokenizers), or "auto" (fastokens when it gives hf\'s ids on a '
           'probe set and the first records, else hf)', choices=BACKENDS),
    Option('boundaries', 'ints', list(DEFAULT_BOUNDARIES),
           'bucket boundaries on L = prompt + output - 1 tokens, each at '
           f'most {MAX_ROW_TOKENS}',
           check=lambda b: bool(b) and all(map(_row_length, b)) and
           list(b) == sorted(set(b)),
           requirement='a non-empty, strictly increasing list of positive '
           f'integers up to {MAX_ROW_TOKENS}'),
    Option('max_seq_len', 'optional_int', None,
           'longest L kept (null: the largest boundary; for layout packed, '
           'pack_length)',
           check=lambda v: v is None or _positive_int(v),
           requirement='a positive integer'),
    Option('truncation', 'str', 'none', 'what to do with records over '
           'max_seq_len', choices=TRUNCATION_MODES),
    Option('batch_size', 'optional_int', None,
           'rows per batch (null: 32, unless batch_tokens is set)',
           check=lambda v: v is None or _positive_int(v),
           requirement='a positive integer'),
    Option('batch_tokens', 'optional_int', None,
           'token budget per batch: each batch of a bucket gets '
           'max(1, batch_tokens // boundary) rows (instead of batch_size)',
           check=lambda v: v is None or _positive_int(v),
           requirement='a positive integer'),
    Option('layout', 'str', 'padded',
           'padded: one record per row, rows of a length bucket padded '
           'alike; packed: whole records end to end in rows of pack_length, '
           'with segment ids and positions (docs/packing.md)',
           choices=tuple(schema.LAYOUTS)),
    Option('pack_length', 'int', 2048,
           'packed layout: positions per row (and the max_seq_len), at most '
           f'{MAX_ROW_TOKENS}', check=_row_length,
           requirement=f'a positive integer up to {MAX_ROW_TOKENS}'),
    Option('pack_window', 'int', DEFAULT_PACK_WINDOW,
           'packed layout: records packed together by best fit decreasing '
           '(memory is bounded by it; larger packs tighter)',
           check=_positive_int, requirement='a positive integer'),
    Option('pad_to', 'str', 'bucket', 'pad batches to the bucket boundary '
           '(static shapes) or to the longest row', choices=PAD_TO_MODES),
    Option('pad_id', 'optional_int', None,
           'padding id (null: tokenizer pad id, else eos id); must be a '
           'token id of the tokenizer',
           check=lambda v: v is None or 0 <= v <= MAX_TOKEN_ID,
           requirement=f'a token id, from 0 to {MAX_TOKEN_ID}'),
    Option('num_shards', 'int', 4,
           'shard files: a batch run writes exactly this many; a streaming '
           'run at most this many per window firing',
           check=_positive_int, requirement='a positive integer'),
    Option('output_format', 'str', 'tfrecord',
           'shard files: tfrecord (one tf.train.Example per batch) or parquet '
           '(one row per example, or per packed row; pyarrow, datasets, '
           'polars and DuckDB read them; batch runs only). docs/output.md '
           'says which to choose', choices=OUTPUT_FORMATS),
    Option('compression', 'str', 'none',
           'shard compression: tfrecord none or gzip (the whole file); '
           'parquet none, snappy, gzip or zstd (inside the file)',
           choices=tuple(dict.fromkeys(
               name for names in SHARD_COMPRESSIONS.values()
               for name in names))),
    Option('read_chunk_lines', 'int', 4096,
           'lines (or Parquet rows) per chunk: the records every step '
           'handles at once',
           check=_positive_int, requirement='a positive integer'),
    Option('max_line_bytes', 'int', 8 << 20,
           'longer input lines are rejected unread (line_too_long; JSON '
           'lines only)',
           check=_positive_int, requirement='a positive integer'),
    Option('max_rejected_fraction', 'float', 0.5,
           'fail the run (exit 1, outputs kept) when more of its records are '
           'rejected: by default a run that rejects most of its input (a '
           'wrong field name or format) fails, saying why; 1.0 never fails '
           'for rejections. A run whose input holds no record fails too',
           check=lambda v: 0.0 <= v <= 1.0, requirement='between 0 and 1'),
    Option('batching', 'optional_str', None,
           'how batches form: "global" reshuffles chunks and groups each '
           'bucket across workers (parallel on Dataflow; a local runner holds '
           'all data between such stages in memory); "bundle" batches within '
           'each bundle, no shuffle, flat memory; null: "bundle" on local '
           'runners, else "global". Batch runs only: a streaming run '
           'batches globally, a partial batch leaving after '
           'max_buffering_seconds. The packed layout packs within each '
           'bundle: "global" is refused with it', choices=BATCHING_STRATEGIES),
    Option('workers', 'optional_int', None,
           'processes a local batch run works in, each reading, tokenizing, '
           'batching and writing its own share of the input (byte ranges of '
           'JSON-lines files, Parquet row groups); null: the machine\'s '
           'cores, but 1 for input under 160 MiB, where starting workers '
           'costs more than they save. 1 runs every step in this process '
           '(with a live progress line). Batches form within each worker, so '
           'runs on different worker counts give every record the same row '
           'but may group rows into batches differently. Other runners '
           'ignore it', check=lambda v: v is None or _positive_int(v),
           requirement='a positive integer'),
    Option('overwrite', 'bool', False,
           'replace the outputs of an earlier run in --output'),
    Option('streaming', 'bool', False,
           'read records from Pub/Sub until cancelled, writing windowed '
           'shards (docs/streaming.md)'),
    Option('input_subscription', 'str', '',
           'streaming: the Pub/Sub subscription to read, '
           'projects/P/subscriptions/S',
           **_pubsub_check('subscriptions')),
    Option('input_topic', 'str', '',
           'streaming: the Pub/Sub topic to read, projects/P/topics/T (a '
           'temporary subscription made at start: earlier messages are not '
           'seen)', **_pubsub_check('topics')),
    Option('window_seconds', 'int', 60,
           'streaming: shards are written per window of this many seconds',
           check=_positive_int, requirement='a positive integer'),
    Option('max_buffering_seconds', 'float', 10.0,
           'streaming: a partial batch is flushed after this long',
           check=lambda v: v > 0, requirement='a positive number'),
    Option('dead_letter_topic', 'str', '',
           'streaming: also publish rejected records to this Pub/Sub topic',
           **_pubsub_check('topics')),
)

OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


def _to_dict(config) -> dict:
  """The values by option name (dataset_info.json's `config`)."""
  return {option.name: getattr(config, option.name) for option in OPTIONS}


# Resolved option values, by attribute (`config.batch_size`): a frozen
# dataclass with a field per option, so an unknown or misspelled name fails
# where a config is built or read (tests/test_options.py checks every
# `config.NAME` in the code), and no step can change a value.
Config = dataclasses.make_dataclass(
    'Config', [(option.name, Any) for option in OPTIONS], frozen=True,
    namespace={'to_dict': _to_dict,
               '__doc__': 'Resolved option values, by attribute.'})


def defaults() -> dict:
  return {option.name: option.default for option in OPTIONS}


def _type_ok(option: Option, value) -> bool:
  kind = option.kind
  if kind in ('str', 'optional_str'):
    return isinstance(value, str) or (kind == 'optional_str' and
                                      value is None)
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
  if kind == 'object':
    return isinstance(value, dict) and all(isinstance(key, str)
                                           for key in value)
  raise AssertionError(kind)


_KIND_WORDS = {
    'str': 'a string', 'optional_str': 'a string or null',
    'int': 'an integer', 'optional_int': 'an integer or null',
    'float': 'a number', 'bool': 'true or false',
    'optional_bool': 'true, false or null', 'list': 'a list of strings',
    'ints': 'a list of integers', 'object': 'a JSON object'}


def nearest_name(name: str, known) -> Optional[str]:
  """The name in `known` that `name` most likely misspells (a hyphen for an
  underscore, a letter off), or None when none is close."""
  spelled = name.replace('-', '_')
  if spelled in known:
    return spelled
  close = difflib.get_close_matches(spelled, known, n=1, cutoff=0.75)
  return close[0] if close else None


def check_value(name: str, value, source: str):
  """Raises ConfigError unless `value` is a valid value of option `name`."""
  option = OPTIONS_BY_NAME.get(name)
  if option is None:
    nearest = nearest_name(str(name), OPTIONS_BY_NAME)
    raise ConfigError(f'{source}: unknown option "{name}"' + (
        f' (did you mean {nearest}?)' if nearest else '') +
                      f'; known options: {", ".join(OPTIONS_BY_NAME)}')
  if not _type_ok(option, value):
    raise ConfigError(f'{source}: {name} must be {_KIND_WORDS[option.kind]}, '
                      f'got {shown(value)}')
  if option.choices and value is not None and value not in option.choices:
    raise ConfigError(f'{source}: {name} must be one of '
                      f'{", ".join(option.choices)}; got {shown(value)}')
  texts = value if option.kind == 'list' else [value]
  too_long = [text for text in texts
              if isinstance(text, str) and len(text) > MAX_OPTION_CHARS]
  if too_long:
    raise ConfigError(f'{source}: {name} must be at most {MAX_OPTION_CHARS} '
                      f'characters; got {len(too_long[0])}: '
                      f'{shown(too_long[0])}')
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


def _check_streaming_split(values: dict):
  """A stream has no end, so no per-source count to choose validation
  records from, nor a whole mixture to weigh."""
  for name in ('mixture', 'validation_fraction'):
    if values[name]:
      raise ConfigError(f'--{name} is for batch runs: a streaming run never '
                        'sees all of its records, so cannot split or weigh '
                        'them (docs/mixtures.md)')


def _check_mixture(values: dict):
  """--mixture replaces --input, and its file must be a valid mixture."""
  if values['input']:
    raise ConfigError('--mixture and --input both set: a mixture file names '
                      'its sources\' inputs; pass one of them')
  try:
    mixture.load_mixture(values['mixture'], FieldNames(
        values['prompt_field'], values['output_field'], values['id_field']))
  except mixture.MixtureError as error:
    raise ConfigError(str(error)) from None


def _packed(values: dict) -> dict:
  """The packed layout's values: a record must fit one row."""
  if values['max_seq_len'] is None:
    values['max_seq_len'] = values['pack_length']
  if values['max_seq_len'] > values['pack_length']:
    raise ConfigError(
        f'max_seq_len {values["max_seq_len"]} is above pack_length '
        f'{values["pack_length"]}: a packed record must fit one row')
  return values


def _check_batching(values: dict):
  """`batching: global` fills a padded bucket's batches across workers;
  the packed layout has no buckets and packs within each bundle, so a
  batch run refuses it rather than ignore it."""
  if (values['layout'] == 'packed' and values['batching'] == 'global' and
      not values['streaming']):
    raise ConfigError('batching global applies to the padded layout only (a '
                      'bucket\'s batches fill across workers); the packed '
                      'layout packs within each bundle: leave batching unset '
                      'or set it to bundle')


def _check_output_format(values: dict):
  """The compression must be one the shard format has; a streaming run
  writes TFRecord window shards only."""
  output_format, compression = values['output_format'], values['compression']
  if compression not in SHARD_COMPRESSIONS[output_format]:
    raise ConfigError(
        f'compression {compression} does not apply to output_format '
        f'{output_format}, which takes '
        f'{", ".join(SHARD_COMPRESSIONS[output_format])}')
  if values['streaming'] and output_format != 'tfrecord':
    raise ConfigError(f'output_format {output_format}: a streaming run '
                      'writes TFRecord shards only (each window firing adds '
                      'files); use a batch run for Parquet')


def make_config(values: dict) -> Config:
  """Checks the values of every option together and fills in derived ones."""
  if not values['output']:
    raise ConfigError('no output directory: pass --output DIR')
  if values['streaming']:
    _check_streaming_source(values)
    _check_streaming_split(values)
  elif values['mixture']:
    _check_mixture(values)
  elif not values['input']:
    raise ConfigError('no input: pass --input PATTERN (or --mixture FILE)')
  values = dict(values, boundaries=list(values['boundaries']))
  if values['batch_tokens'] is not None and values['batch_size'] is not None:
    raise ConfigError('batch_size and batch_tokens both set: choose one (a '
                      'fixed row count, or a token budget per batch)')
  if values['batch_tokens'] is None and values['batch_size'] is None:
    values['batch_size'] = DEFAULT_BATCH_SIZE
  if values['chat_rows'] == 'per_turn' and values['truncation'] == (
      'output_right'):
    raise ConfigError('chat_rows per_turn with truncation output_right: a '
                      'per_turn row ends at its own turn, so there are no '
                      'trailing turns to drop; use truncation prompt_left')
  if values['chat_rows'] == 'per_turn' and values['validation_fraction']:
    raise ConfigError('chat_rows per_turn with validation_fraction: the '
                      'split is per record, a per_turn record is several '
                      'examples; use chat_rows whole to split')
  _check_batching(values)
  _check_output_format(values)
  if values['layout'] == 'packed':
    return Config(**_packed(values))
  if values['max_seq_len'] is None:
    values['max_seq_len'] = values['boundaries'][-1]
  if values['max_seq_len'] > values['boundaries'][-1]:
    raise ConfigError(
        f'max_seq_len {values["max_seq_len"]} is above the largest bucket '
        f'boundary {values["boundaries"][-1]}: add a boundary or lower it')
  return Config(**values)
