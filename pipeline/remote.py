"""Runs on machines other than this one: Dataflow checks and dry runs.

`sftbeam run ... --runner DataflowRunner --dry_run=True` builds the Dataflow
job (its graph, SDK container, staged files and options) without submitting
it and prints what it built. Nothing on GCS is read or written while a job is
built: inputs are matched when the job runs and a gs:// tokenizer is copied
by the workers. Only the check that a gs:// --output is empty lists the
bucket (with the credentials a submission needs anyway); a dry run skips it.
"""

import json
import os

from apache_beam.options.pipeline_options import (GoogleCloudOptions,
                                                  SetupOptions, TestOptions)
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

from sftbeam.pipeline import gcp_names
from sftbeam.pipeline.mixture import input_patterns
from sftbeam.pipeline.options import ConfigError
from sftbeam.pipeline.runners import new_pipeline, runner_of
from sftbeam.transforms.paths import is_remote
from sftbeam.transforms.tokenizer_source import EMBEDDED


# What configs/dataflow.yaml marks the values the user must fill with.
PLACEHOLDER = 'YOUR_'


def runs_on_dataflow(options) -> bool:
  return isinstance(runner_of(options), DataflowRunner)


def is_dry_run(options) -> bool:
  """True for --dry_run=True, which only DataflowRunner honors."""
  dry_run = options.view_as(TestOptions).dry_run
  if not dry_run:
    return False
  if str(dry_run).lower() in ('false', '0', 'no'):
    # Beam takes any value as true: a dry run the user did not mean.
    raise ConfigError(f'--dry_run={dry_run}: leave the flag out to run')
  if not runs_on_dataflow(options):
    raise ConfigError('--dry_run builds a Dataflow job without submitting it:'
                      ' it needs --runner DataflowRunner (other runners would '
                      'run the job)')
  return True


def check_dataflow_job(config, options):
  """Refuses a Dataflow job that could not run as asked, before building it.

  Placeholders left in configs/dataflow.yaml, no gs:// temp location (Beam
  would create a bucket), or paths the workers cannot reach.
  """
  if not runs_on_dataflow(options):
    return
  for name, value in options.get_all_options(drop_default=True).items():
    if PLACEHOLDER in str(value):
      raise ConfigError(f'--{name} {value} is a placeholder: pass --{name} '
                        'or fill it in the config file')
  cloud = options.view_as(GoogleCloudOptions)
  if cloud.template_location:
    raise ConfigError('--template_location: sftbeam run submits jobs and '
                      'waits for them; it does not create templates')
  if not (cloud.temp_location or '').startswith('gs://'):
    raise ConfigError('DataflowRunner needs --temp_location gs://BUCKET/tmp')
  _check_cloud_names(cloud)
  setup_file = options.view_as(SetupOptions).setup_file
  if setup_file and not os.path.isfile(setup_file):
    raise ConfigError(f'--setup_file {setup_file} not found: run sftbeam from '
                      'the project root')
  for name, path in [('input', pattern) for pattern in input_patterns(config)] + [
      ('output', config.output)]:
    if not is_remote(path):
      raise ConfigError(f'--{name} {path} is a local path, which Dataflow '
                        'workers cannot reach: use gs://BUCKET/...')
  if config.tokenizer != EMBEDDED and os.path.isdir(config.tokenizer):
    raise ConfigError(f'--tokenizer {config.tokenizer} is a local directory, '
                      'which Dataflow workers cannot reach: copy it to '
                      'gs://BUCKET/DIR and pass that')


def _check_cloud_names(cloud: GoogleCloudOptions):
  """Refuses a project id or temp/staging bucket Google Cloud would refuse:
  Beam, given them, retries credentials and DNS for minutes."""
  problems = {
      'project': cloud.project and gcp_names.project_problem(cloud.project),
      'temp_location': gcp_names.bucket_problem(cloud.temp_location or ''),
      'staging_location': gcp_names.bucket_problem(
          cloud.staging_location or ''),
  }
  for name, problem in problems.items():
    if problem:
      raise ConfigError(f'--{name} {getattr(cloud, name)}: {problem}')


def build_dataflow_job(config, options, build) -> DataflowRunner:
  """Builds the job under --dry_run (not submitted); gives the runner.

  `build(root, config)` adds the graph (batch, or streaming's). The runner's
  `proto_pipeline` is the graph Dataflow would receive and `job.options` the
  options it would run with.
  """
  root = new_pipeline(options)
  build(root, config)
  root.run()
  return root.runner


def _steps(proto) -> list:
  """Names of the graph's steps and of their parts, in graph order."""
  transforms = proto.components.transforms
  names = []
  pending = list(reversed(proto.root_transform_ids))
  while pending:
    transform_id = pending.pop()
    name = transforms[transform_id].unique_name
    if name != transform_id:  # Beam's wrapper around the pipeline has no name
      names.append(name)
    if '/' not in name:
      pending.extend(reversed(transforms[transform_id].subtransforms))
  return names


def _environments(proto) -> list:
  """The SDK container and staged files of each environment of the graph."""
  described = []
  for environment in proto.components.environments.values():
    staged = {}
    for artifact in environment.dependencies:
      target = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
          artifact.role_payload).staged_name
      staged[target] = beam_runner_api_pb2.ArtifactFilePayload.FromString(
          artifact.type_payload).path
    described.append({
        'sdk_container_image': beam_runner_api_pb2.DockerPayload.FromString(
            environment.payload).container_image,
        'staged_files': staged,
    })
  return described


def describe_job(runner: DataflowRunner) -> dict:
  """What a dry run built: steps, environments and pipeline options."""
  return {
      'steps': _steps(runner.proto_pipeline),
      'environments': _environments(runner.proto_pipeline),
      'pipeline_options': runner.job.options.get_all_options(
          drop_default=True),
  }


def dry_run(config, options, build) -> str:
  """Builds the Dataflow job of `build(root, config)` without submitting
  it; gives a report."""
  description = describe_job(build_dataflow_job(config, options, build))
  return ('dry run: built the Dataflow job below and did not submit it; '
          'nothing was read from or written to GCS\n' +
          json.dumps(description, indent=2, sort_keys=True, default=str))
