"""Every fenced python and bash block of README.md and docs/*.md runs, or
says why not (`<!-- not run: REASON -->` on the line before its fence;
tests/doc_blocks.py has the conventions).

Bash blocks run as a new user's shell would run them, in order, each with
`bash -e -o pipefail`, offline, without `.venv/bin` on PATH, in a copy of
the repository (its files, `.venv` linked, `../shared` reachable) per doc;
`data/` holds examples/sample.jsonl where the docs say `data/*.jsonl`. A
shown command (an output block whose first line is `$ COMMAND`) then runs
in that copy and must print every line shown, in order (`...` elides).

Python blocks of a doc run in one interpreter (tests/doc_session.py), with
their declared stand-ins (tests/doc_stand_ins.py), in a directory holding
small runs under the names the docs read: `out/sample` and `out/run1`
(padded), `out/packed`, `out/parquet` (padded, Parquet shards). Small (16
records, rows of at most 32 tokens, 4 rows a batch), because a stand-in
model's logits span Qwen's 151,936 ids per token.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import doc_blocks
from conftest import ROOT, SAMPLE, SFTBEAM, offline

pytestmark = pytest.mark.slow

VENV = os.path.join(ROOT, '.venv')

def blocks_to_run(doc: str, language: str) -> list:
  """The blocks of `doc` in `language` that are not marked `not run`."""
  return [block for block in doc_blocks.blocks(doc)
          if block.language == language and not block.not_run]


def docs_with(language: str) -> list:
  """The docs with blocks in `language` to run, as pytest parameters."""
  return [pytest.param(doc, id=doc) for doc in doc_blocks.documents()
          if blocks_to_run(doc, language)]


def venv_is_current() -> bool:
  """Whether scripts/bootstrap.sh would install nothing (its stamp)."""
  wanted = hashlib.sha256()
  for name in ('setup.py', 'requirements-lock.txt'):
    with open(os.path.join(ROOT, name), 'rb') as handle:
      wanted.update(handle.read())
  stamp = os.path.join(VENV, '.sftbeam-installed')
  with open(stamp, encoding='utf-8') as handle:
    return handle.read().strip() == wanted.hexdigest()


def repository_copy(parent: str) -> str:
  """parent/repo: the repository's files (tracked or new, not ignored), with
  `.venv` linked and `data/` holding the bundled sample; parent/shared is
  the shared data the docs reach as ../shared."""
  listing = subprocess.run(
      ['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
      cwd=ROOT, capture_output=True, text=True, check=True).stdout
  repo = os.path.join(parent, 'repo')
  for name in filter(None, listing.split('\0')):
    if os.path.isfile(os.path.join(ROOT, name)):
      os.makedirs(os.path.dirname(os.path.join(repo, name)), exist_ok=True)
      shutil.copy2(os.path.join(ROOT, name), os.path.join(repo, name))
  os.symlink(VENV, os.path.join(repo, '.venv'))
  os.symlink(os.path.join(os.path.dirname(ROOT), 'shared'),
             os.path.join(parent, 'shared'))
  os.makedirs(os.path.join(repo, 'data'))
  shutil.copy2(SAMPLE, os.path.join(repo, 'data', 'sample.jsonl'))
  return repo


def new_users_environment() -> dict:
  """This environment without an active virtualenv: no `.venv/bin` on
  PATH, so a doc that says `python` or `sftbeam` where it needs
  `.venv/bin/...` fails."""
  environment = {name: value for name, value in os.environ.items()
                 if name not in ('VIRTUAL_ENV', 'PYTHONPATH')}
  venv_bin = os.path.realpath(os.path.join(VENV, 'bin'))
  environment['PATH'] = os.pathsep.join(
      entry for entry in os.environ['PATH'].split(os.pathsep)
      if os.path.realpath(entry) != venv_bin)
  return environment


def run_in_shell(code: str, workspace: str) -> subprocess.CompletedProcess:
  """`code` run by bash in `workspace`, offline, as a new user's shell."""
  return subprocess.run(
      offline([shutil.which('bash'), '-e', '-o', 'pipefail', '-c', code]),
      cwd=workspace, env=new_users_environment(), capture_output=True,
      text=True, timeout=900, check=False)


def failure(block, result) -> str:
  """What a failed block says: where, its exit code, the end of stderr."""
  return (f'{block.doc}:{block.line}: exit {result.returncode}\n'
          + '\n'.join(result.stderr.splitlines()[-15:]))


@pytest.fixture(scope='module')
def ran_bash_blocks(tmp_path_factory):
  """doc -> (its repository copy, the failures of its bash blocks); a
  doc's blocks run on the first call for it."""
  if not venv_is_current():
    pytest.fail('.venv is not current: run bash scripts/bootstrap.sh')
  done = {}

  def ran(doc):
    if doc not in done:
      workspace = repository_copy(str(tmp_path_factory.mktemp('clone')))
      results = [(block, run_in_shell(block.code, workspace))
                 for block in blocks_to_run(doc, 'bash')]
      done[doc] = workspace, [failure(block, result)
                              for block, result in results
                              if result.returncode != 0]
    return done[doc]
  return ran


@pytest.mark.parametrize('doc', docs_with('bash'))
def test_the_bash_blocks_run(doc, ran_bash_blocks):
  _, failures = ran_bash_blocks(doc)
  assert not failures, '\n\n'.join(failures)


def shown_commands(doc: str) -> list:
  """(block, command, shown lines) of `doc`'s output blocks that start
  with `$ COMMAND`; shown lines leave out `...` lines."""
  return [(block, block.code.splitlines()[0][2:],
           [line.rstrip() for line in block.code.splitlines()[1:]
            if line.strip() not in ('...', '')])
          for block in doc_blocks.blocks(doc)
          if block.language == '' and block.code.startswith('$ ')]


@pytest.mark.parametrize('doc', [doc for doc in doc_blocks.documents()
                                 if shown_commands(doc)])
def test_shown_commands_print_what_they_show(doc, ran_bash_blocks):
  workspace, failures = ran_bash_blocks(doc)
  assert not failures, '\n\n'.join(failures)
  for block, command, shown in shown_commands(doc):
    result = run_in_shell(command, workspace)
    assert result.returncode == 0, failure(block, result)
    printed = [line.rstrip() for line in result.stdout.splitlines()]
    missing = [line for line in shown if line not in printed]
    assert not missing, (f'{doc}:{block.line}: {command} does not print',
                         missing)
    where = [printed.index(line) for line in shown]
    assert where == sorted(where), f'{doc}:{block.line}: another order'


def test_the_dataset_info_excerpt_in_reading_md_is_its_run(ran_bash_blocks):
  """docs/reading.md's dataset_info.json excerpt: the first shard of the
  run its first block makes (names, counts, size, the sha256's start)."""
  doc = 'docs/reading.md'
  workspace, failures = ran_bash_blocks(doc)
  assert not failures, '\n\n'.join(failures)
  excerpt, = [block.code for block in doc_blocks.blocks(doc)
              if block.language == 'json']
  shown = re.search(
      r'"name": "(?P<name>[^"]+)", "records": (?P<records>\d+),\s+'
      r'"bytes": (?P<bytes>\d+), "sha256": "(?P<sha>\w+)\.\.\."', excerpt)
  with open(os.path.join(workspace, 'out', 'run1', 'dataset_info.json'),
            encoding='utf-8') as handle:
    first = json.load(handle)['shards'][0]
  assert (shown['name'], int(shown['records']), int(shown['bytes'])) == (
      first['name'], first['records'], first['bytes'])
  assert first['sha256'].startswith(shown['sha'])


@pytest.fixture(scope='module')
def small_runs(tmp_path_factory):
  """A directory holding out/sample and out/run1 (one padded run),
  out/packed and out/parquet (padded, Parquet shards), of
  examples/sample.jsonl's first 16 lines, rows of at most 32 tokens (longer
  outputs cut), 4 rows a batch."""
  directory = str(tmp_path_factory.mktemp('readers'))
  head = os.path.join(directory, 'head.jsonl')
  with open(SAMPLE, encoding='utf-8') as source, open(
      head, 'w', encoding='utf-8') as target:
    target.writelines(line for _, line in zip(range(16), source))
  common = ['run', '--config', os.path.join(ROOT, 'configs', 'local.yaml'),
            '--input', head, '--batch_size', '4', '--max_seq_len', '32',
            '--truncation', 'output_right']
  runs = [subprocess.Popen(
      offline([SFTBEAM, *common, '--output',
               os.path.join(directory, 'out', name), *layout]),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for name, layout in [('sample', []), ('packed', [
              '--layout', 'packed', '--pack_length', '32']), ('parquet', [
                  '--output_format', 'parquet', '--compression', 'zstd'])]]
  for run in runs:
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr
  os.symlink('sample', os.path.join(directory, 'out', 'run1'))
  return directory


@pytest.mark.parametrize('doc', docs_with('python'))
def test_the_python_blocks_run(doc, small_runs):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tests', 'doc_session.py'), doc],
      cwd=small_runs, capture_output=True, text=True, timeout=900,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
