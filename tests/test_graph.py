"""How the batch graph picks its batching strategy from the runner, and
what the config hands to the steps."""

import os
import types

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from conftest import ROOT
from sftbeam.pipeline import runners
from sftbeam.pipeline.config import load_yaml
from sftbeam.pipeline.options import defaults, make_config
from sftbeam.transforms.lines_to_batches import batch_shape, tokenize_settings


@pytest.mark.parametrize('runner, expected', [
    ('FnApiRunner', 'bundle'),
    ('fnapirunner', 'bundle'),  # Beam reads runner names case-insensitively
    ('apache_beam.runners.portability.fn_api_runner.FnApiRunner', 'bundle'),
    ('DirectRunner', 'bundle'),
    (None, 'bundle'),  # unset: Beam's DirectRunner
    ('DataflowRunner', 'global'),
    ('PortableRunner', 'global'),
])
def test_batching_follows_the_runner(runner, expected):
  flags = [f'--runner={runner}'] if runner else []
  config = types.SimpleNamespace(batching=None)
  assert runners.batching(config, PipelineOptions(flags)) == expected


@pytest.mark.parametrize('setting', ['bundle', 'global'])
def test_batching_option_wins(setting):
  config = types.SimpleNamespace(batching=setting)
  options = PipelineOptions(['--runner=DataflowRunner'])
  assert runners.batching(config, options) == setting


@pytest.mark.parametrize('streaming, runner', [
    (False, 'FnApiRunner'), (True, 'BundleBasedDirectRunner')])
def test_default_runners_never_download_anything(streaming, runner):
  options = runners.pipeline_options([], streaming=streaming)
  assert options.get_all_options()['runner'] == runner


@pytest.mark.parametrize('config_file', ['local.yaml', 'dataflow.yaml'])
def test_configs_reach_the_steps(config_file):
  values, _ = load_yaml(os.path.join(ROOT, 'configs', config_file))
  config = make_config(dict(defaults(), **values, input=['in.jsonl'],
                            output='out'))
  settings = tokenize_settings(config)
  assert settings.special_tokens_in_text == 'special'
  assert settings.backend == 'auto'
  assert batch_shape(config).rows(512) == 32  # the default batch size
  budget = make_config(dict(defaults(), **values, input=['in.jsonl'],
                            output='out', batch_tokens=4096))
  assert batch_shape(budget).rows(512) == 8
