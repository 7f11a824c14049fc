"""Which runner runs a job, and what that means for the graph.

The default runners are the DirectRunner's engines, named directly: plain
`DirectRunner` first tries Prism, which downloads a binary, so a default
run never touches the network.
  batch      FnApiRunner
  streaming  BundleBasedDirectRunner
A local runner holds all data between shuffled stages in memory, so local
batch runs batch within bundles (no shuffle; see transforms/batch.py);
distributed runners batch globally.

A local batch run on several workers (the `workers` option) runs the
FnApiRunner in its multi-process mode; the graph then gives each worker
its own share of the input (transforms/read_input.py), so that records do
not pass through the runner's process.
"""

import os

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
# Below this much input a local run works in one process by default:
# starting a worker (interpreter, imports, tokenizer) costs more than its
# share of the work saves (docs/performance.md).
MULTI_WORKER_MIN_BYTES = 160 << 20


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


def local_workers(config, input_bytes) -> int:
  """The `workers` option, its null resolved: the machine's cores, or 1
  for known input (`input_bytes`, None when unknown) too small to share."""
  if config.workers is not None:
    return config.workers
  if input_bytes is not None and input_bytes < MULTI_WORKER_MIN_BYTES:
    return 1
  return len(os.sched_getaffinity(0))


def with_workers(options, workers: int):
  """`options`, set to run the FnApiRunner on `workers` processes (unless
  the Beam flags chose its running mode themselves)."""
  direct = options.view_as(DirectOptions)
  if (workers > 1 and isinstance(runner_of(options), FnApiRunner) and
      direct.direct_running_mode == 'in_memory'):
    direct.direct_running_mode = 'multi_processing'
    direct.direct_num_workers = workers
  return options


def worker_processes(options) -> int:
  """How many processes the FnApiRunner runs the steps on (1: this one,
  or another runner)."""
  direct = options.view_as(DirectOptions)
  if (isinstance(runner_of(options), FnApiRunner) and
      direct.direct_running_mode == 'multi_processing'):
    return direct.direct_num_workers or len(os.sched_getaffinity(0))
  return 1


def has_core_to_spare(options) -> bool:
  """Whether the FnApiRunner's worker processes leave a core free (then
  a batch run tokenizes on a thread of its own: docs/performance.md)."""
  return (isinstance(runner_of(options), FnApiRunner) and
          worker_processes(options) < len(os.sched_getaffinity(0)))


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
