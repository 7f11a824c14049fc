"""How the batch graph picks its batching strategy from the runner, and
what the config hands to the tokenize step."""

import os
import types

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from conftest import ROOT
from sftbeam.pipeline.config import load_yaml
from sftbeam.pipeline.graph import batches_globally, tokenize_settings
from sftbeam.pipeline.options import defaults, make_config


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


@pytest.mark.parametrize('config_file, threads', [
    ('local.yaml', 0),  # one tokenizing thread per core: one process
    ('dataflow.yaml', 1),  # Dataflow runs a process per vCPU
])
def test_tokenizer_threads_reach_the_tokenize_step(config_file, threads):
  values, _ = load_yaml(os.path.join(ROOT, 'configs', config_file))
  config = make_config(dict(defaults(), **values, input=['in.jsonl'],
                            output='out'))
  assert tokenize_settings(config).threads == threads
