"""How the batch graph picks its batching strategy from the runner."""

import types

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.graph import batches_globally


@pytest.mark.parametrize('runner, expected', [
    ('FnApiRunner', False),
    ('fnapirunner', False),  # Beam reads runner names case-insensitively
    ('apache_beam.runners.portability.fn_api_runner.FnApiRunner', False),
    ('DirectRunner', False),
    (None, False),  # unset: Beam's DirectRunner
    ('DataflowRunner', True),
    ('PortableRunner', True),
])
def test_global_batching_follows_the_runner(runner, expected):
  flags = [f'--runner={runner}'] if runner else []
  config = types.SimpleNamespace(global_batching=None)
  assert batches_globally(config, PipelineOptions(flags)) is expected


@pytest.mark.parametrize('setting', [True, False])
def test_global_batching_option_wins(setting):
  config = types.SimpleNamespace(global_batching=setting)
  options = PipelineOptions(['--runner=DataflowRunner'])
  assert batches_globally(config, options) is setting
