"""Resolving a run's config: option defaults < YAML file < CLI flags.

A YAML config holds option keys (see pipeline/options.py) and an optional
`beam:` mapping of Beam pipeline options (runner, project, ...). Anything
else is an error, as is an unknown flag on the command line.
"""

import argparse
import json

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from sftbeam.pipeline.options import (OPTIONS, OPTIONS_BY_NAME, ConfigError,
                                      check_value, defaults, make_config,
                                      nearest_name, shown)

BEAM_SECTION = 'beam'
# More values than any config needs: YAML aliases can make a small file
# expand to billions ("billion laughs"), which no check should walk.
MAX_CONFIG_VALUES = 100_000


class _TooLarge(Exception):
  pass


def _count_values(value, counted: dict) -> int:
  """Values in `value` with its aliases expanded, up to MAX_CONFIG_VALUES
  (_TooLarge beyond). `counted` memoizes lists and mappings by identity (an
  alias is the same object), so the cost grows with the file, not with the
  expansion; None marks one being counted, so a cycle is too large."""
  if not isinstance(value, (list, dict)):
    return 1
  known = counted.get(id(value), 0)
  if known is None:
    raise _TooLarge  # an alias to a value it is inside of: endless
  if known:
    return known
  counted[id(value)] = None
  children = (list(value) + list(value.values()) if isinstance(value, dict)
              else value)
  total = 1
  for child in children:
    total += _count_values(child, counted)
    if total > MAX_CONFIG_VALUES:
      raise _TooLarge
  counted[id(value)] = total
  return total


def load_yaml(path: str):
  """(option values, Beam options) of a YAML config file."""
  try:
    with open(path, encoding='utf-8') as handle:
      document = yaml.safe_load(handle) or {}
    _count_values(document, {})
  except OSError as error:
    raise ConfigError(f'cannot read config {path}: {error.strerror}') from None
  except yaml.YAMLError as error:
    raise ConfigError(f'{path} is not valid YAML: '
                      f'{str(error).splitlines()[0]}') from None
  except (_TooLarge, RecursionError):
    raise ConfigError(f'{path} holds more than {MAX_CONFIG_VALUES} values '
                      '(counting what its YAML aliases repeat), or nests too '
                      'deeply: write a plain config of option: value') from None
  if not isinstance(document, dict):
    raise ConfigError(f'{path} must hold a mapping of option: value')
  beam_options = document.pop(BEAM_SECTION, None) or {}
  if not isinstance(beam_options, dict):
    raise ConfigError(f'{path}: "{BEAM_SECTION}" must be a mapping')
  for name, value in document.items():
    check_value(name, value, path)
  return document, beam_options


def beam_options_to_args(beam_options: dict) -> list:
  """`{runner: X, save_main_session: true}` -> ['--runner=X', ...].

  A true switch (a flag without a value) becomes the bare flag; a false one
  is left out (write `no_use_public_ips: true` for `--no_use_public_ips`).
  """
  parser = _beam_parser()
  args = []
  for name, value in beam_options.items():
    if isinstance(value, bool) and _is_switch(parser, f'--{name}'):
      args.extend([f'--{name}'] if value else [])
      continue
    if isinstance(value, bool):
      value = str(value)
    if isinstance(value, list):
      args.extend(f'--{name}={item}' for item in value)
    else:
      args.append(f'--{name}={value}')
  return args


def _parse_bool(text: str) -> bool:
  lowered = text.lower()
  if lowered in ('true', '1', 'yes'):
    return True
  if lowered in ('false', '0', 'no'):
    return False
  raise ValueError(text)


def _cli_value(option, text):
  """A flag's text -> the option's typed value (ValueError if malformed)."""
  kind = option.kind
  if kind.startswith('optional_') and text.lower() in ('none', 'null'):
    return None
  if kind in ('int', 'optional_int'):
    return int(text)
  if kind == 'float':
    return float(text)
  if kind in ('bool', 'optional_bool'):
    return _parse_bool(text)
  if kind == 'ints':
    return [int(item) for item in text.split(',') if item.strip()]
  if kind == 'object':
    return json.loads(text)
  return text


def add_option_flags(parser: argparse.ArgumentParser):
  """One --flag per option; a bool flag alone means true."""
  parser.add_argument('--config', help='YAML config file (configs/*.yaml)')
  for option in OPTIONS:
    kwargs = {'default': None, 'help': option.help}
    if option.kind == 'list':
      kwargs['nargs'] = '+'
    elif option.kind in ('bool', 'optional_bool'):
      kwargs.update(nargs='?', const='true')
    parser.add_argument(f'--{option.name}', **kwargs)


def _beam_parser() -> argparse.ArgumentParser:
  """The parser Beam itself reads pipeline options with: every flag of
  every PipelineOptions class (handed out by get_all_options' hook for
  extra arguments). Errors raise instead of exiting."""
  parsers = []
  PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
  parser = parsers[0]
  parser.exit_on_error = False
  return parser


def _is_switch(parser: argparse.ArgumentParser, flag: str) -> bool:
  """Whether `flag` is a Beam flag that takes no value
  (`--no_use_public_ips`). An unknown flag is not: it goes on as
  `--flag=False`, which check_beam_args then refuses."""
  try:
    _, unknown = parser.parse_known_args([flag])
  except argparse.ArgumentError:
    return False
  return not unknown


def check_beam_args(beam_args: list):
  """Rejects arguments that no Beam option knows, instead of ignoring them.

  Parses them as Beam does, so `--project p` and `--project=p` both work and
  a malformed value (`--max_num_workers=many`) is a config error here.
  """
  try:
    _, unknown = _beam_parser().parse_known_args(beam_args)
  except argparse.ArgumentError as error:
    raise ConfigError(str(error)) from None
  for arg in unknown:
    if not arg.startswith('--'):
      raise ConfigError(f'unexpected argument {arg!r}')
    flag = arg.split('=', 1)[0]
    nearest = nearest_name(flag[2:], list(OPTIONS_BY_NAME) + list(
        PipelineOptions([]).get_all_options()))
    raise ConfigError(f'unknown flag {flag}: not an sftbeam option (see '
                      'sftbeam run --help) nor a Beam pipeline option' + (
                          f'; did you mean --{nearest}?' if nearest else ''))


def _flag_values(namespace) -> dict:
  values = {}
  for name, option in OPTIONS_BY_NAME.items():
    text = getattr(namespace, name)
    if text is None:
      continue
    if option.kind == 'list':
      values[name] = list(text)
    else:
      try:
        values[name] = _cli_value(option, text)
      except ValueError:
        raise ConfigError(f'--{name}: cannot read {shown(text)} as '
                          f'{option.kind.replace("_", " ")}') from None
    check_value(name, values[name], f'--{name}')
  return values


def resolve(namespace, beam_args: list):
  """(Config, Beam args) from parsed flags, the YAML file and defaults.

  Beam args from the YAML file come first, so CLI flags override them.
  """
  values = defaults()
  yaml_beam_args = []
  if namespace.config:
    yaml_values, yaml_beam = load_yaml(namespace.config)
    values.update(yaml_values)
    yaml_beam_args = beam_options_to_args(yaml_beam)
  values.update(_flag_values(namespace))
  all_beam_args = yaml_beam_args + list(beam_args)
  check_beam_args(all_beam_args)
  return make_config(values), all_beam_args
