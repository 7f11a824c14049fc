"""Reading a mixture file (--mixture): its sources, checked before any work.

  sources:
    - {name: gsm8k, input: data/gsm8k/*.jsonl, weight: 2.0}
    - {name: alpaca, input: [a.parquet, b.parquet], weight: 0.5,
       prompt_field: instruction}

Each source: `name` (letters, digits, `_`, `.`, `-`; it prefixes the
source's example ids, "<name>:<id>"), `input` (a glob or a list of globs),
`weight` (a number >= 0, default 1) and optionally its own `prompt_field`,
`output_field` and `id_field` (default: the run's). What a weight and the
validation split do: transforms/mixture.py and docs/mixtures.md.
"""

import math
import re
from typing import Tuple

import yaml

from sftbeam.transforms.mixture import Source
from sftbeam.transforms.parse import FieldNames

# A name is part of ids ("<name>:<id>~2"), step labels and stats keys
# (source/<name>/...): no ':', '~', '/', space or other path characters.
_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,99}')
_KEYS = ('name', 'input', 'weight', 'prompt_field', 'output_field',
         'id_field')
# The source of a run's plain --input.
INPUT_SOURCE = 'input'


class MixtureError(ValueError):
  """A mixture file that cannot be used; one line."""


def load_mixture(path: str, fields: FieldNames) -> Tuple[Source, ...]:
  """The sources of the mixture file at `path`; `fields`: the run's record
  fields, a source's default. Raises MixtureError."""
  where = f'--mixture {path}'
  try:
    with open(path, encoding='utf-8') as handle:
      document = yaml.safe_load(handle)
  except OSError as error:
    raise MixtureError(f'{where}: cannot read it ({error.strerror})') from None
  except (yaml.YAMLError, UnicodeDecodeError) as error:
    problem = ' '.join(str(error).split())[:200]
    raise MixtureError(f'{where} is not valid YAML: {problem}') from None
  if not isinstance(document, dict) or set(document) != {'sources'}:
    raise MixtureError(f'{where} must hold a mapping with one key, '
                       '"sources": a list of sources (docs/mixtures.md)')
  entries = document['sources']
  if not isinstance(entries, list) or not entries:
    raise MixtureError(f'{where}: "sources" must be a non-empty list')
  sources = tuple(_source(entry, index, fields, where)
                  for index, entry in enumerate(entries, 1))
  names = [source.name for source in sources]
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise MixtureError(f'{where}: two sources are named "{repeated[0]}": '
                       'names must differ (they prefix the example ids)')
  return sources


def _source(entry, index: int, fields: FieldNames, where: str) -> Source:
  """Source number `index` of the file, checked."""
  where = f'{where}: source {index}'
  if not isinstance(entry, dict):
    raise MixtureError(f'{where} must be a mapping with name and input')
  unknown = sorted(set(map(str, entry)) - set(_KEYS))
  if unknown:
    raise MixtureError(f'{where}: unknown key "{unknown[0]}"; a source has '
                       f'{", ".join(_KEYS)}')
  name = entry.get('name')
  if not isinstance(name, str) or not _NAME.fullmatch(name):
    raise MixtureError(
        f'{where}: name must be 1 to 100 letters, digits, "_", "." or "-", '
        f'starting with a letter or digit (no ":", "~" or "/"); got '
        f'{_shown(name)}' + (' (YAML reads yes, no, on, off as booleans: '
                             'quote the name)' if isinstance(name, bool)
                             else ''))
  where = f'{where} ({name})'
  patterns = entry.get('input')
  if isinstance(patterns, str):
    patterns = [patterns]
  if not (isinstance(patterns, list) and patterns and
          all(isinstance(pattern, str) and pattern for pattern in patterns)):
    raise MixtureError(f'{where}: input must be a glob or a non-empty list '
                       'of globs')
  weight = entry.get('weight', 1)
  if (isinstance(weight, bool) or not isinstance(weight, (int, float)) or
      not math.isfinite(weight) or weight < 0):
    raise MixtureError(f'{where}: weight must be a number >= 0; got '
                       f'{_shown(weight)}')
  own_fields = FieldNames(*(entry.get(f'{field}_field', default)
                            for field, default in zip(FieldNames._fields,
                                                      fields)))
  if not all(isinstance(field, str) and field for field in own_fields):
    raise MixtureError(f'{where}: prompt_field, output_field and id_field '
                       'must be non-empty strings')
  return Source(name, tuple(patterns), float(weight), own_fields,
                id_prefix=f'{name}:')


def _shown(value) -> str:
  """A value in an error message, cut short."""
  text = repr(value)
  return text if len(text) <= 80 else text[:80] + '...'


def run_sources(config) -> Tuple[Source, ...]:
  """The sources a batch run reads: its mixture's, or its --input as one
  source named "input" whose ids are left as they are."""
  fields = FieldNames(config.prompt_field, config.output_field,
                      config.id_field)
  if config.mixture:
    return load_mixture(config.mixture, fields)
  return (Source(INPUT_SOURCE, tuple(config.input), 1.0, fields),)


def input_patterns(config) -> list:
  """Every input glob of a batch run."""
  return [pattern for source in run_sources(config)
          for pattern in source.input]


def source_section(source: Source) -> dict:
  """A source as dataset_info.json's `sources` lists it."""
  return {'name': source.name, 'input': list(source.input),
          'weight': source.weight, 'fields': source.fields._asdict()}
