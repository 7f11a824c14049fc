"""Which runner runs a job, and what that means for the graph.

The default runners are the DirectRunner's engines, named directly: plain
`DirectRunner` first tries Prism, which downloads a binary, so a default
run never touches the network.
  batch      FnApiRunner
  streaming  BundleBasedDirectRunner
A local runner holds all data between shuffled stages in memory, so local
batch runs batch within bundles (no shuffle; see transforms/batch.py);
distributed runners batch globally.
"""

import apache_beam as beam
from apache_beam.options.pipeline_options import (DirectOptions,
                                                  PipelineOptions,
                                                  StandardOptions)
from apache_beam.runners import create_runner
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from sftbeam.pipeline.options import ConfigError

DEFAULT_BATCH_RUNNER = 'FnApiRunner'
DEFAULT_STREAMING_RUNNER = 'BundleBasedDirectRunner'


def pipeline_options(beam_args, streaming: bool = False) -> PipelineOptions:
  """Beam's options from the flags, with sftbeam's default runner."""
  options = PipelineOptions(beam_args)
  standard = options.view_as(StandardOptions)
  if streaming:
    standard.streaming = True
  if not standard.runner:
    standard.runner = (DEFAULT_STREAMING_RUNNER if streaming else
                       DEFAULT_BATCH_RUNNER)
  return options


def runner_of(options):
  """The runner the options name, resolved as Beam resolves it (names are
  case-insensitive, may be full paths; unset means the DirectRunner)."""
  name = options.view_as(StandardOptions).runner or 'DirectRunner'
  try:
    return create_runner(name)
  except ValueError as error:
    raise ConfigError(f'--runner {name}: {error}') from None


def is_local(options) -> bool:
  return type(runner_of(options)).__name__ in StandardOptions.LOCAL_RUNNERS


def runs_in_this_process(options) -> bool:
  """Whether the steps run here, where the live tally sees their stats."""
  runner = runner_of(options)
  if isinstance(runner, BundleBasedDirectRunner):
    return True
  return (isinstance(runner, FnApiRunner) and
          options.view_as(DirectOptions).direct_running_mode !=
          'multi_processing')


def batching(config, options) -> str:
  """The `batching` option, its null resolved by the runner."""
  if config.batching is not None:
    return config.batching
  return 'bundle' if is_local(options) else 'global'


def new_pipeline(options) -> beam.Pipeline:
  """A Beam pipeline; Beam's option validation errors become ConfigErrors."""
  try:
    return beam.Pipeline(options=options)
  except ValueError as error:  # "Pipeline has validations errors: ..."
    raise ConfigError(' '.join(str(error).split())) from None
