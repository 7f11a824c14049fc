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


@pytest.mark.parametrize('workers, cores, expected', [
    (1, 2, True), (2, 2, False), (3, 4, True), (1, 1, False)])
def test_tokenizing_runs_ahead_only_with_a_core_to_spare(monkeypatch, workers,
                                                         cores, expected):
  monkeypatch.setattr(runners.os, 'sched_getaffinity',
                      lambda pid: set(range(cores)))
  options = runners.with_workers(runners.pipeline_options([]), workers)
  assert runners.has_core_to_spare(options) == expected
  dataflow = runners.pipeline_options(['--runner=DataflowRunner'])
  assert not runners.has_core_to_spare(dataflow)
