"""The option table (pipeline/options.py): every name the code reads off a
config is an option, and a config holds exactly the options."""

import ast
import dataclasses
import os

import pytest

from conftest import ROOT
from sftbeam.pipeline.options import (OPTIONS, Config, ConfigError,
                                      check_value, defaults, make_config)

SOURCES = ('pipeline', 'transforms', 'sftbeam')


def _config_attributes():
  """(file, line, name) of every `config.NAME` read in the code."""
  for folder in SOURCES:
    for name in sorted(os.listdir(os.path.join(ROOT, folder))):
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      with open(os.path.join(ROOT, path), encoding='utf-8') as handle:
        tree = ast.parse(handle.read())
      for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and
            isinstance(node.value, ast.Name) and node.value.id == 'config'):
          yield path, node.lineno, node.attr


def test_every_name_read_off_a_config_is_an_option():
  known = {option.name for option in OPTIONS} | {'to_dict'}
  read = list(_config_attributes())
  assert len(read) > 50  # the scan finds the code's reads
  assert [(path, line, name) for path, line, name in read
          if name not in known] == []


def test_a_config_holds_exactly_the_options():
  config = make_config(dict(defaults(), input=['in.jsonl'], output='out'))
  assert [field.name for field in dataclasses.fields(Config)] == [
      option.name for option in OPTIONS]
  assert set(config.to_dict()) == {option.name for option in OPTIONS}
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.batch_size = 3
  with pytest.raises(TypeError):
    Config(**dict(config.to_dict(), batchsize=3))


def test_an_unknown_name_is_a_config_error():
  with pytest.raises(ConfigError, match='unknown option "batchsize"'):
    check_value('batchsize', 3, '--batchsize')
