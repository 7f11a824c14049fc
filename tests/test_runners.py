"""pipeline/runners.py: the default runners, and the batching strategy each
runs with."""

import types

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from sftbeam.pipeline import runners


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
