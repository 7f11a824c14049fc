"""Scaling out, verified offline.

- The Dataflow job for gs:// input and output is built with --dry_run=True,
  by the CLI, in a network namespace with only loopback: its steps, SDK
  container, staged sdist and options are checked, and nothing may try to
  reach GCS while it is built.
- A multi-process FnApiRunner run writes the same rows as a single-process
  run.
- A gs:// tokenizer directory is copied through Beam's FileSystems: a
  stand-in filesystem with its own scheme serves a local directory.
- Beam flags are parsed as Beam parses them (`--project P` or `--project=P`).
"""

import collections
import contextlib
import glob
import json
import os
import shutil
import sys
import tarfile
import tempfile

import apache_beam
import pytest
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.options.pipeline_options import (GoogleCloudOptions,
                                                  PipelineOptions)

from conftest import ROOT, SAMPLE, run_sftbeam
from output_rows import record_counts, rejected_lines, rows_by_id
from sftbeam.pipeline import cli
from sftbeam.pipeline.config import beam_options_to_args, check_beam_args
from sftbeam.pipeline.options import ConfigError
from sftbeam.transforms import tokenizer_source
from sftbeam.transforms.tokenizer_cache import facts_of
from sftbeam.transforms.tokenizer_source import (EMBEDDED, TokenizerNotFound,
                                         embedded_tokenizer_dir,
                                         load_tokenizer)

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

GCS_FLAGS = ('--input', 'gs://my-bucket/data/*.jsonl',
             '--output', 'gs://my-bucket/sft/run1',
             '--project', 'my-project', '--region', 'europe-west4',
             '--temp_location', 'gs://my-bucket/tmp',
             '--staging_location', 'gs://my-bucket/staging')


@pytest.fixture(scope='module')
def job():
  """The README's Dataflow command with --dry_run=True, without network.

  Gives (CompletedProcess, the printed job description).
  """
  with contextlib.chdir(ROOT):  # configs/dataflow.yaml has ./setup.py
    result = run_sftbeam('run', '--config', 'configs/dataflow.yaml',
                         *GCS_FLAGS, '--tokenizer', 'gs://my-bucket/tok/q',
                         '--dry_run=True', network=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  description = json.loads(result.stdout[result.stdout.index('{'):])
  yield result, description
  # Beam builds the sdist into a temp directory it leaves behind.
  for environment in description['environments']:
    for path in environment['staged_files'].values():
      if path.startswith(tempfile.gettempdir() + os.sep):
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_dry_run_reads_nothing_remote(job):
  result, _ = job
  assert result.stdout.startswith('dry run: built the Dataflow job')
  # Listing gs:// (output check, input match, tokenizer copy) would look
  # for credentials first, and fail or hang without network.
  assert 'credentials' not in result.stderr.lower()


def test_job_has_the_pipeline_steps(job):
  steps = job[1]['steps']
  for step in ('ReadInput', 'ReadInput/MatchFiles', 'LinesToBatches',
               'LinesToBatches/ParseChunks', 'LinesToBatches/TokenizeRecords',
               'LinesToBatches/BatchByBucket', 'LinesToBatches/PadBatches',
               'WriteBatches', 'WriteRejected', 'SumStats',
               'WriteDatasetInfo'):
    assert step in steps
  assert steps.index('ReadInput') < steps.index('WriteDatasetInfo')


def test_sdk_container_matches_installed_beam(job):
  environments = job[1]['environments']
  assert len(environments) == 1
  python = f'{sys.version_info.major}.{sys.version_info.minor}'
  assert environments[0]['sdk_container_image'] == (
      f'gcr.io/cloud-dataflow/v1beta3/beam_python{python}_sdk:'
      f'{apache_beam.__version__}')


def test_setup_file_is_staged_as_an_sdist_of_every_package(job):
  sdist = job[1]['environments'][0]['staged_files']['workflow.tar.gz']
  with tarfile.open(sdist) as archive:
    members = {name.split('/', 1)[1] for name in archive.getnames()
               if '/' in name}
  sources = {os.path.relpath(path, ROOT) for package in ('sftbeam',
                                                         'pipeline',
                                                         'transforms')
             for path in glob.glob(os.path.join(ROOT, package, '*.py'))}
  assert 'setup.py' in members
  assert sources and sources <= members, sources - members


def test_pipeline_options_carry_the_config(job):
  options = job[1]['pipeline_options']
  assert options['runner'] == 'DataflowRunner'
  assert options['project'] == 'my-project'
  assert options['region'] == 'europe-west4'  # the flag beats the YAML
  assert options['machine_type'] == 'n2-standard-4'  # from the YAML
  assert options['max_num_workers'] == 10
  assert options['setup_file'] == './setup.py'
  assert options['temp_location'].startswith('gs://my-bucket/tmp/')
  assert options['staging_location'].startswith('gs://my-bucket/staging/')


@pytest.mark.parametrize('flags, message', [
    ((), 'is a placeholder: pass --'),
    (GCS_FLAGS[:2] + ('--output', '/tmp/out') + GCS_FLAGS[4:],
     '--output /tmp/out is a local path'),
    (GCS_FLAGS + ('--tokenizer', ROOT), 'is a local directory'),
    (GCS_FLAGS + ('--runner', 'FnApiRunner'), 'needs --runner DataflowRunner'),
    (GCS_FLAGS + ('--setup_file', 'no/setup.py'), 'not found'),
])
def test_dataflow_mistakes_are_config_errors(capsys, flags, message):
  with contextlib.chdir(ROOT):
    code = cli.main(['run', '--config', 'configs/dataflow.yaml',
                     '--input', 'gs://my-bucket/in.jsonl', '--output',
                     'gs://my-bucket/out', *flags, '--dry_run=True'])
  assert code == 2
  assert message in capsys.readouterr().err


# docs/dataflow.md's command with its own placeholders.
PLACEHOLDER_FLAGS = ('--input', 'gs://BUCKET/data/*.jsonl',
                     '--output', 'gs://BUCKET/sft/run1',
                     '--project', 'PROJECT', '--region', 'us-central1',
                     '--temp_location', 'gs://BUCKET/sftbeam/tmp',
                     '--staging_location', 'gs://BUCKET/sftbeam/staging')


@pytest.mark.parametrize('fixed, message', [
    ((), '--input: input must be local or gs:// patterns'),
    (GCS_FLAGS[:4], '--project PROJECT: project id "PROJECT" is not a Google '
     'Cloud project id'),
    (GCS_FLAGS[:6], '--temp_location gs://BUCKET/sftbeam/tmp: bucket name '
     '"BUCKET" is not a Cloud Storage bucket name'),
])
def test_the_docs_dry_run_with_placeholders_is_refused_at_once(fixed,
                                                               message):
  """Offline: one line and exit 2 within the timeout, where Beam retried
  credentials and DNS for minutes. `fixed`: real values for the first
  placeholders, so that each one after them is found in turn."""
  with contextlib.chdir(ROOT):
    result = run_sftbeam('run', '--config', 'configs/dataflow.yaml',
                         *PLACEHOLDER_FLAGS, *fixed, '--dry_run=True',
                         network=False, timeout=60)
  assert result.returncode == 2 and not result.stdout
  [line] = result.stderr.splitlines()
  assert line.startswith('sftbeam: error: ') and message in line


def test_beam_flags_take_their_value_either_way():
  args = ['--project', 'my-project', '--region=europe-west4',
          '--no_use_public_ips', '--max_num_workers', '3']
  check_beam_args(args)
  options = PipelineOptions(args).view_as(GoogleCloudOptions)
  assert (options.project, options.region) == ('my-project', 'europe-west4')


@pytest.mark.parametrize('args, message', [
    (['--max_num_workers=many'], "invalid int value: 'many'"),
    (['--runner', 'DataflowRunner', 'stray'], "unexpected argument 'stray'"),
    (['--projct=my-project'], 'unknown flag --projct'),
    (['--project'], 'expected one argument'),
])
def test_malformed_beam_flags_are_config_errors(args, message):
  with pytest.raises(ConfigError, match=message):
    check_beam_args(args)


def test_yaml_switches_become_bare_flags():
  assert beam_options_to_args({
      'no_use_public_ips': True, 'save_main_session': False,
      'max_num_workers': 3, 'dry_run': True}) == [
          '--no_use_public_ips', '--max_num_workers=3', '--dry_run=True']


def test_misspelled_yaml_switch_set_false_is_refused():
  """Not dropped as if it were a switch left off."""
  with pytest.raises(ConfigError, match='unknown flag --no_use_public_ip:'):
    check_beam_args(beam_options_to_args({'no_use_public_ip': False}))


def test_multi_process_run_writes_the_same_rows(tmp_path):
  outputs = {}
  for mode, flags in (('single', ()),
                      ('multi', ('--direct_num_workers', '2',
                                 '--direct_running_mode',
                                 'multi_processing'))):
    outputs[mode] = str(tmp_path / mode)
    run_sftbeam('run', '--config', os.path.join(ROOT, 'configs', 'local.yaml'),
                '--input', SAMPLE, '--output', outputs[mode], *flags,
                network=False, check=True)
  single = rows_by_id(outputs['single'])
  assert len(single) > 200
  assert rows_by_id(outputs['multi']) == single
  assert rejected_lines(outputs['multi']) == rejected_lines(outputs['single'])
  assert record_counts(outputs['multi']) == record_counts(outputs['single'])


class StandInFileSystem(LocalFileSystem):
  """`standin:///PATH` serves the local PATH: a remote scheme for tests.

  Counts the files it opens, to see how often a tokenizer is copied.
  """
  opened = collections.Counter()

  @classmethod
  def scheme(cls):
    return 'standin'

  @staticmethod
  def _local(path):
    return path[len('standin://'):]

  def exists(self, path):
    return super().exists(self._local(path))

  def open(self, path, *args, **kwargs):  # pylint: disable=arguments-differ
    self.opened[path] += 1
    return super().open(self._local(path), *args, **kwargs)


@pytest.fixture
def remote_tokenizer(tmp_path):
  """A copy of the embedded tokenizer at a `standin://` address."""
  local = tmp_path / 'tokenizer'
  shutil.copytree(embedded_tokenizer_dir(), local)
  return 'standin://' + str(local)


def test_remote_tokenizer_is_copied_and_loaded(remote_tokenizer, qwen):
  local_dir = tokenizer_source.local_tokenizer_dir(remote_tokenizer)
  assert not local_dir.startswith('standin:')
  assert 'tokenizer.json' in os.listdir(local_dir)
  texts = ['Natalia sold clips.', 'Ünïcode — <|im_end|> 中文']
  tokenizer = load_tokenizer(remote_tokenizer)
  assert tokenizer(texts)['input_ids'] == qwen(texts)['input_ids']


def test_remote_tokenizer_without_files_is_not_found(tmp_path):
  with pytest.raises(TokenizerNotFound, match='no tokenizer files'):
    tokenizer_source.local_tokenizer_dir(f'standin://{tmp_path}')


def test_pipeline_copies_a_remote_tokenizer_once(remote_tokenizer, tmp_path,
                                                 capsys):
  output = tmp_path / 'out'
  assert cli.main(['run', '--input', SAMPLE, '--output', str(output),
                   '--tokenizer', remote_tokenizer]) == 0
  capsys.readouterr()
  opened = {path: count for path, count in StandInFileSystem.opened.items()
            if path.startswith(remote_tokenizer)}
  assert opened and set(opened.values()) == {1}, opened
  info = json.loads((output / 'dataset_info.json').read_text())
  embedded = tokenizer_source.tokenizer_identity(
      EMBEDDED, facts_of(load_tokenizer(EMBEDDED)))
  assert info['tokenizer']['name'] == remote_tokenizer
  assert info['tokenizer']['tokenizer_json_sha256'] == (
      embedded['tokenizer_json_sha256'])
  assert info['counts']['records_written'] > 200

