"""Nothing lost, nothing clobbered (docs/safety.md), end to end.

Input that cannot be read whole fails the run; --overwrite deletes only what
sftbeam recorded writing; one run at a time per output directory; a
tokenizer's own Python code never runs. Through the CLI (installed, or its
main in this process), offline. The unit tests of the parts are beside
their modules: test_read.py, test_output_dir.py, test_run_lock.py,
test_dataset_info.py.
"""

import gzip
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from compressed_inputs import COMPRESSORS, RECORDS_PER_FILE
from conftest import ROOT, SAMPLE, run_sftbeam
from output_dirs import OUTSIDE, standin_earlier_run, tree
from output_rows import run_files
from sftbeam.pipeline import cli
from sftbeam.pipeline import output_dir as output_dir_lib
from sftbeam.pipeline.readers import (IncompleteOutput, iter_numpy_batches,
                                      load_dataset_info)
from sftbeam.transforms import filenames
from sftbeam.transforms.tokenizer_source import (TokenizerNotFound,
                                                 embedded_tokenizer_dir,
                                                 load_tokenizer)


def run(input_path, output_dir, *flags):
  return run_sftbeam('run', '--config', 'configs/local.yaml', '--input',
                     str(input_path), '--output', str(output_dir), *flags,
                     network=False)


def run_main(capsys, input_path, output_dir, *flags):
  """The CLI's main in this process (no interpreter start-up, tokenizer
  already loaded), as a CompletedProcess."""
  code = cli.main(['run', '--input', str(input_path), '--output',
                   str(output_dir), *flags])
  captured = capsys.readouterr()
  return subprocess.CompletedProcess([], code, captured.out, captured.err)


def one_error_line(result, code: int) -> str:
  """The single `sftbeam: error:` line of a run that exited with `code`."""
  assert result.returncode == code, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith('sftbeam: error: ')
  assert len(lines[0]) < 700
  return lines[0]


# ------------------------------------------------ compressed input, whole or not

@pytest.mark.slow
def test_complete_compressed_inputs_are_read_whole(gsm8k_head, tmp_path):
  """Every compression Beam detects by extension, and two gzip members
  joined with cat, give every record."""
  inputs = tmp_path / 'in'
  inputs.mkdir()
  for extension, compress in COMPRESSORS.items():
    (inputs / f'part.jsonl.{extension}').write_bytes(compress(gsm8k_head))
  (inputs / 'joined.jsonl.gz').write_bytes(gzip.compress(gsm8k_head) +
                                           gzip.compress(gsm8k_head))
  result = run(inputs / '*', tmp_path / 'out')
  assert result.returncode == 0, result.stderr[-3000:]
  counts = load_dataset_info(str(tmp_path / 'out'))['counts']
  expected = RECORDS_PER_FILE * (len(COMPRESSORS) + 2)
  assert counts['records_in'] == counts['records_written'] == expected


def write_cut(directory, extension: str, fraction: float, data: bytes):
  """Writes `data` compressed, cut to `fraction` of its bytes; gives its path."""
  compressed = COMPRESSORS[extension](data)
  path = directory / f'cut-{fraction}.jsonl.{extension}'
  path.write_bytes(compressed[:int(len(compressed) * fraction)])
  return path


def assert_refused_untouched(line: str, path, output_dir):
  """The error names the file; the output directory is as it was before:
  absent (the run made it, and removes it, empty)."""
  assert str(path) in line and 'cut short or corrupt' in line
  assert not os.path.exists(output_dir)


@pytest.mark.slow
@pytest.mark.parametrize('extension', ['gz', 'bz2'])
def test_cut_compressed_input_fails_the_run(extension, gsm8k_head, tmp_path):
  """The installed CLI on a file cut in half: exit 1 and one line, where it
  said "reconciled yes" (gzip) and "records in 0" (bzip2), exit 0."""
  path = write_cut(tmp_path, extension, 0.5, gsm8k_head)
  output_dir = tmp_path / 'out'
  assert_refused_untouched(one_error_line(run(path, output_dir), 1), path,
                           output_dir)


CUTS = ([('gz', fraction) for fraction in (0.0, 0.05, 0.999)] +
        [('bz2', fraction) for fraction in (0.05, 0.999)] +
        [(extension, 0.5) for extension in ('deflate', 'xz', 'lzma', 'zst',
                                            'zstd')])


@pytest.mark.slow
@pytest.mark.parametrize('extension, fraction', CUTS,
                         ids=[f'{e}-{f}' for e, f in CUTS])
def test_cut_points_of_every_compression_fail_the_run(
    extension, fraction, gsm8k_head, tmp_path, capsys):
  """The same, through the CLI's main in this process (a run without the
  interpreter's start-up), at more cut points and for every compression
  Beam detects by extension."""
  path = write_cut(tmp_path, extension, fraction, gsm8k_head)
  output_dir = tmp_path / 'out'
  line = one_error_line(run_main(capsys, path, output_dir), 1)
  assert_refused_untouched(line, path, output_dir)


@pytest.mark.slow
@pytest.mark.parametrize('extension', ['gz', 'bz2', 'xz', 'zstd'])
def test_corrupt_compressed_input_fails_the_run(extension, gsm8k_head,
                                                tmp_path, capsys):
  """A flipped byte mid-file (each format's checksum or structure sees it;
  plain .zst frames carry no checksum, so .zstd is written with one)."""
  data = bytearray(COMPRESSORS[extension](gsm8k_head))
  data[len(data) // 2] ^= 0x55
  path = tmp_path / f'corrupt.jsonl.{extension}'
  path.write_bytes(bytes(data))
  line = one_error_line(run_main(capsys, path, tmp_path / 'out'), 1)
  assert str(path) in line
  assert not os.path.exists(tmp_path / 'out' / filenames.INFO)


# ------------------------------------------------------------- --overwrite

USER_FILES = {
    'batches-march.jsonl': b'{"mine": 1}\n',
    'rejected-by-reviewers.jsonl': b'{"mine": 2}\n',
    'dataset_info.json.bak': b'{"backup": true}\n',
    '.templates/prompt.txt': b'my template\n',
    'notes.txt': b'keep me\n',
}


def add_user_files(directory):
  for name, data in USER_FILES.items():
    os.makedirs(os.path.dirname(os.path.join(directory, name)), exist_ok=True)
    with open(os.path.join(directory, name), 'wb') as handle:
      handle.write(data)


def read_manifest(output_dir) -> dict:
  with open(os.path.join(output_dir, filenames.MANIFEST),
            encoding='utf-8') as handle:
    return json.load(handle)


OLD_WORK_DIR = filenames.work_dir_name('20250101T000000Z-0123abcd')


@pytest.fixture(scope='module')
def earlier_run(tmp_path_factory):
  """An output directory written by a complete run on the sample."""
  output_dir = tmp_path_factory.mktemp('earlier') / 'out'
  result = run(SAMPLE, output_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  return output_dir


def copy_of(earlier_run, tmp_path):
  """A copy of the earlier run's directory (its manifest names files
  relative to it, so a copy is recorded as well)."""
  output_dir = tmp_path / 'out'
  shutil.copytree(earlier_run, output_dir)
  return output_dir


@pytest.mark.slow
def test_overwrite_deletes_only_what_sftbeam_recorded(earlier_run, tmp_path):
  output_dir = copy_of(earlier_run, tmp_path)
  first = read_manifest(output_dir)
  add_user_files(output_dir)
  result = run(SAMPLE, output_dir, '--overwrite', '--num_shards', '2')
  assert result.returncode == 0, result.stderr[-3000:]
  after = tree(output_dir)
  for name, data in USER_FILES.items():
    assert after[name] == data  # byte for byte
  info = load_dataset_info(str(output_dir))
  second = read_manifest(output_dir)
  assert second['run_id'] != first['run_id']
  written = sorted([shard['name'] for shard in info['shards']] +
                   info['rejected_files'] + [filenames.INFO])
  assert second['files'] == written
  # The first run's 4 shards are gone, the second's 2 are all there is.
  assert sorted(set(after) - set(USER_FILES) - {'.templates'}) == sorted(
      written + [filenames.MANIFEST])


@pytest.fixture(scope='module')
def later_run(tmp_path_factory):
  """Another complete run, with other files: 2 shards of batches of 8."""
  output_dir = tmp_path_factory.mktemp('later') / 'out'
  result = run(SAMPLE, output_dir, '--num_shards', '2', '--batch_size', '8')
  assert result.returncode == 0, result.stderr[-3000:]
  return output_dir


@pytest.mark.slow
def test_a_failed_overwrite_leaves_the_earlier_run_as_it_was(
    earlier_run, gsm8k_head, tmp_path, capsys):
  """A new run that fails (here a cut input, found mid-run) changes nothing:
  the earlier run, its manifest and the user's files stay byte for byte, and
  read."""
  output_dir = copy_of(earlier_run, tmp_path)
  add_user_files(output_dir)
  before = tree(output_dir)
  cut = write_cut(tmp_path, 'gz', 0.5, gsm8k_head)
  line = one_error_line(run_main(capsys, cut, output_dir, '--overwrite'), 1)
  assert 'cut short or corrupt' in line
  assert tree(output_dir) == before
  assert len(list(iter_numpy_batches(str(output_dir)))) == (
      load_dataset_info(str(output_dir))['counts']['batches_written'])


class Killed(BaseException):
  """A kill: nothing after it runs, and no clean-up (a claim cleans up
  after an Exception only)."""


def kill_at(monkeypatch, step: int):
  """Makes the `step`-th file operation that changes a directory (remove,
  rename, replace, remove a tree) raise Killed instead."""
  count = itertools.count()
  for module, name in [(os, 'remove'), (os, 'rename'), (os, 'replace'),
                       (shutil, 'rmtree')]:
    def operation(*args, real=getattr(module, name), **kwargs):
      if next(count) == step:
        raise Killed()
      return real(*args, **kwargs)
    monkeypatch.setattr(module, name, operation)


def overwrite_with(output_dir, new_run):
  """An --overwrite claim of `output_dir` whose work directory holds what
  the pipeline writes there: the files of `new_run`."""
  claim = output_dir_lib.prepare_output_dir(str(output_dir), True)
  for name in run_files(new_run):
    shutil.copy(new_run / name, claim.work_dir)
  return claim


def readable_run(output_dir, runs: dict):
  """Which of `runs` ({label: run_files}) readers see in `output_dir`, or
  None when they refuse it; fails on a mix of runs."""
  present = run_files(output_dir)
  if filenames.INFO not in present:
    with pytest.raises(IncompleteOutput, match='did not finish'):
      load_dataset_info(str(output_dir))
    return None
  which = [label for label, files in runs.items() if files == present]
  assert which, f'{filenames.INFO} beside a mix of runs: {sorted(present)}'
  assert len(list(iter_numpy_batches(str(output_dir)))) == (
      load_dataset_info(str(output_dir))['counts']['batches_written'])
  return which[0]


@pytest.mark.slow
def test_a_kill_at_any_point_of_overwrite_leaves_one_whole_run(
    earlier_run, later_run, tmp_path, monkeypatch):
  """--overwrite killed at each step of replacing the earlier run: readers
  see the earlier run whole, or the new one, or refuse the directory, never
  a mix; the next --overwrite run leaves exactly its own files."""
  runs = {'earlier': run_files(earlier_run), 'new': run_files(later_run)}
  seen = []
  for step in itertools.count():
    output_dir = tmp_path / f'killed-at-{step}'
    shutil.copytree(earlier_run, output_dir)
    claim = overwrite_with(output_dir, later_run)
    with monkeypatch.context() as patch:
      kill_at(patch, step)
      try:
        claim.complete()
        killed = False
      except Killed:
        killed = True
    claim.release()
    seen.append(readable_run(output_dir, runs))
    if not killed:
      break
    rerun = overwrite_with(output_dir, later_run)
    rerun.complete()
    rerun.release()
    assert readable_run(output_dir, runs) == 'new'
    assert sorted(os.listdir(output_dir)) == sorted(
        list(runs['new']) + [filenames.MANIFEST])
    assert read_manifest(output_dir)['files'] == sorted(runs['new'])
  assert seen[0] == 'earlier' and seen[-1] == 'new' and None in seen, seen
  assert seen == sorted(seen, key=[ 'earlier', None, 'new'].index), seen


@pytest.mark.slow
def test_an_orphaned_work_directory_is_removed_by_the_next_run(
    earlier_run, tmp_path, capsys):
  """A work directory that no manifest names (its run killed between
  recording itself complete and removing it, as earlier versions did) is
  sftbeam's by its name: the next --overwrite run removes it. A directory
  merely starting like one stays."""
  output_dir = copy_of(earlier_run, tmp_path)
  orphan = output_dir / OLD_WORK_DIR / 'temp-batches'
  orphan.mkdir(parents=True)
  (orphan / 'unfinished-batches-00000').write_bytes(b'x')
  (output_dir / '.sftbeam-run-notes').mkdir()
  result = run_main(capsys, SAMPLE, output_dir, '--overwrite')
  assert result.returncode == 0, result.stderr[-3000:]
  assert not (output_dir / OLD_WORK_DIR).exists()
  assert (output_dir / '.sftbeam-run-notes').is_dir()
  assert not [name for name in os.listdir(output_dir)
              if filenames.WORK_DIR.fullmatch(name)]


@pytest.mark.slow
@pytest.mark.parametrize('input_name', ['data.jsonl', '*.jsonl',
                                        'rejected-00000-of-00001.jsonl'])
def test_output_holding_an_input_is_refused(input_name, earlier_run, tmp_path,
                                           capsys):
  """Even a file an earlier run wrote there, used as input: refused before
  anything is touched."""
  output_dir = copy_of(earlier_run, tmp_path)
  shutil.copy(SAMPLE, output_dir / 'data.jsonl')
  before = tree(output_dir)
  line = one_error_line(run_main(capsys, output_dir / input_name, output_dir,
                                 '--overwrite'), 2)
  assert 'holds the input file' in line
  assert tree(output_dir) == before


def test_unrecorded_file_under_a_name_sftbeam_writes_is_refused(tmp_path,
                                                                capsys):
  """A dataset_info.json no manifest names (an older sftbeam's, or a user's):
  --overwrite refuses rather than replace it."""
  output_dir = tmp_path / 'out'
  output_dir.mkdir()
  (output_dir / filenames.INFO).write_bytes(b'{"theirs": true}')
  (output_dir / 'batches-00000-of-00001.tfrecord').write_bytes(b'theirs')
  before = tree(output_dir)
  line = one_error_line(run_main(capsys, SAMPLE, output_dir, '--overwrite'),
                        2)
  assert 'batches-00000-of-00001.tfrecord and 1 more' in line
  assert 'which no sftbeam run recorded writing there' in line
  assert tree(output_dir) == before


@pytest.mark.parametrize('manifest', [
    {'files': ['../victim.txt'], 'work_dir': None, 'name_lists': []},
    {'files': ['{tmp}/victim.txt'], 'work_dir': None, 'name_lists': []},
    {'files': [], 'work_dir': '../victim', 'name_lists': []},
    {'files': [], 'work_dir': filenames.work_dir_name('victim'),
     'name_lists': []},
    {'files': 'notes.txt'},
    # A file of the user's, not of a kind sftbeam writes.
    {'files': ['notes.txt'], 'work_dir': None, 'name_lists': []},
    # Lists of names that manifests of earlier versions kept in the work
    # directory: never read from outside it (this one names notes.txt).
    {'files': [], 'work_dir': OLD_WORK_DIR, 'name_lists': ['{tmp}/names.json']},
    {'files': [], 'work_dir': OLD_WORK_DIR,
     'name_lists': ['../../names.json']},
], ids=['dotdot-file', 'absolute-file', 'dotdot-work-dir', 'other-work-dir',
        'files-not-a-list', 'users-file', 'absolute-name-list',
        'dotdot-name-list'])
def test_manifest_naming_other_paths_is_refused(manifest, tmp_path, capsys):
  """Whatever a manifest says, only sftbeam's own entries of the directory
  go, and nothing outside it is read."""
  (tmp_path / 'victim.txt').write_bytes(b'safe')
  (tmp_path / 'victim').mkdir()
  (tmp_path / 'names.json').write_text('["notes.txt"]')
  output_dir = tmp_path / 'out'
  output_dir.mkdir()
  (output_dir / 'notes.txt').write_bytes(b'safe')
  (output_dir / OLD_WORK_DIR).mkdir()
  (output_dir / filenames.MANIFEST).write_text(
      json.dumps(manifest).replace('{tmp}', str(tmp_path)))
  before = tree(tmp_path)
  line = one_error_line(run_main(capsys, SAMPLE, output_dir, '--overwrite'),
                        2)
  assert 'is not a manifest sftbeam can read' in line
  assert tree(tmp_path) == before


# ------------------------------------------------ links in the output directory

def make_lock(kind: str, path, outside):
  """Puts at `path` a lock file of this kind; `outside` is a directory."""
  if kind == 'symlink':
    os.symlink(outside / 'victim.txt', path)
  elif kind == 'dangling-symlink':
    os.symlink(outside / 'created-by-sftbeam', path)
  elif kind == 'hard-link':
    os.link(outside / 'victim.txt', path)
  elif kind == 'directory':
    os.mkdir(path)
  elif kind == 'fifo':
    os.mkfifo(path)


@pytest.mark.parametrize('kind', ['symlink', 'dangling-symlink', 'hard-link',
                                  'directory', 'fifo'])
def test_a_lock_file_that_is_not_a_plain_file_is_refused(kind, tmp_path,
                                                         capsys):
  """The lock is never written through a link, a hard link, into a
  directory or a FIFO."""
  (tmp_path / 'victim.txt').write_bytes(OUTSIDE)
  output_dir = tmp_path / 'out'
  output_dir.mkdir()
  make_lock(kind, output_dir / filenames.LOCK, tmp_path)
  before = tree(tmp_path)
  line = one_error_line(run_main(capsys, SAMPLE, output_dir), 2)
  assert f'{output_dir / filenames.LOCK} is ' in line
  assert tree(tmp_path) == before


def make_link(case: str, output_dir, outside):
  """Replaces or adds in `output_dir` an entry of this case: a link, or
  another kind of file, where sftbeam writes, reads or deletes."""
  if case == 'manifest-temp-link':
    os.symlink(outside / 'victim.txt',
               output_dir / (filenames.MANIFEST + '.incomplete'))
  elif case == 'manifest-link':
    manifest = outside / 'manifest.json'
    os.rename(output_dir / filenames.MANIFEST, manifest)
    os.symlink(manifest, output_dir / filenames.MANIFEST)
  elif case == 'manifest-directory':
    os.remove(output_dir / filenames.MANIFEST)
    os.mkdir(output_dir / filenames.MANIFEST)
  elif case in ('listed-shard-link', 'listed-info-link'):
    name = ('batches-00000-of-00001.tfrecord' if case == 'listed-shard-link'
            else filenames.INFO)
    os.remove(output_dir / name)
    os.symlink(outside / 'victim.txt', output_dir / name)
  elif case == 'work-dir-link':
    os.symlink(outside / 'victim-dir', output_dir / OLD_WORK_DIR)


LINK_CASES = ['manifest-temp-link', 'manifest-link', 'manifest-directory',
              'listed-shard-link', 'listed-info-link', 'work-dir-link']


@pytest.mark.parametrize('case', LINK_CASES)
def test_links_where_sftbeam_writes_or_deletes_are_refused(case, tmp_path,
                                                          capsys):
  """--overwrite over an earlier run: a link, or a file of another kind,
  under a name sftbeam would write, read or delete is refused, naming it:
  the manifest's temp file, the manifest, a listed file, a link named like
  a work directory."""
  (tmp_path / 'victim.txt').write_bytes(OUTSIDE)
  (tmp_path / 'victim-dir').mkdir()
  (tmp_path / 'victim-dir' / 'data.txt').write_bytes(OUTSIDE)
  output_dir = tmp_path / 'out'
  standin_earlier_run(output_dir)
  make_link(case, output_dir, tmp_path)
  before = tree(tmp_path)
  line = one_error_line(run_main(capsys, SAMPLE, output_dir, '--overwrite'),
                        2)
  assert str(output_dir) in line and (
      'is a symbolic link' in line or 'is a directory' in line)
  assert tree(tmp_path) == before


# ------------------------------------------------------ paths read literally

@pytest.mark.slow
def test_an_output_path_with_glob_characters_is_read_back(tmp_path, capsys):
  """`[1]` in --output: the run, an --overwrite over it, the readers,
  stats and inspect all take the path as it is, not as a glob."""
  output_dir = tmp_path / 'runs' / 'run[1]'
  for flags in [(), ('--overwrite', '--num_shards', '2')]:
    result = run_main(capsys, SAMPLE, output_dir, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
  info = load_dataset_info(str(output_dir))
  assert len(info['shards']) == 2
  assert len(list(iter_numpy_batches(str(output_dir)))) == (
      info['counts']['batches_written'])
  assert cli.main(['stats', str(output_dir)]) == 0
  assert cli.main(['inspect', str(output_dir), '--batch', '0', '--row',
                   '0']) == 0
  assert 'Traceback' not in capsys.readouterr().err


# ------------------------------------------------------- one run at a time

HOLD_LOCK = """
import sys, time
from sftbeam.pipeline import run_lock
lock = run_lock.acquire(sys.argv[1], run_lock.new_owner('holder-run'))
print('locked', flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_locked_output_is_refused_until_its_owner_dies(tmp_path, capsys):
  output_dir = tmp_path / 'out'
  output_dir.mkdir()
  holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(output_dir)],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    line = one_error_line(run_main(capsys, SAMPLE, output_dir), 2)
    assert (f'is in use by run holder-run (pid {holder.pid} on '
            f'{socket.gethostname()}') in line
    assert os.listdir(output_dir) == [filenames.LOCK]
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # Killed, it cannot keep the directory: the kernel dropped its lock.
  result = run_main(capsys, SAMPLE, output_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert filenames.LOCK not in os.listdir(output_dir)


@pytest.mark.slow
def test_two_runs_at_once_one_writes(tmp_path):
  """Started together on one directory: one run writes it whole, the other
  is refused (locked, or no longer empty), whatever the timing."""
  output_dir = tmp_path / 'out'
  command = [os.path.join(os.path.dirname(sys.executable), 'sftbeam'), 'run',
             '--config', 'configs/local.yaml', '--input', SAMPLE, '--output',
             str(output_dir)]
  runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
          for _ in range(2)]
  results = [(process.wait(timeout=600), process.stderr.read())
             for process in runs]
  for process in runs:
    process.stdout.close()
    process.stderr.close()
  assert sorted(code for code, _ in results) == [0, 2], results
  refusal = next(stderr for code, stderr in results if code == 2)
  assert 'is in use by run' in refusal or 'is not empty' in refusal
  info = load_dataset_info(str(output_dir))
  assert info['counts']['reconciled']
  assert not [name for name in os.listdir(output_dir)
              if name.startswith(filenames.work_dir_name(''))]


# ------------------------------------------------------------- tokenizers

def evil_tokenizer_dir(tmp_path):
  """A tokenizer directory whose class is its own Python code, which
  would leave a marker file if it ever ran."""
  directory = tmp_path / 'evil-tokenizer'
  shutil.copytree(embedded_tokenizer_dir(), directory)
  config_path = directory / 'tokenizer_config.json'
  config = json.loads(config_path.read_text(encoding='utf-8'))
  config['tokenizer_class'] = 'EvilTokenizer'
  config['auto_map'] = {'AutoTokenizer': ['evil.EvilTokenizer', None]}
  config_path.write_text(json.dumps(config), encoding='utf-8')
  marker = tmp_path / 'code-ran'
  (directory / 'evil.py').write_text(
      f'open({str(marker)!r}, "w").close()\n'
      'from transformers import PreTrainedTokenizerFast\n'
      'class EvilTokenizer(PreTrainedTokenizerFast):\n  pass\n',
      encoding='utf-8')
  return directory, marker


@pytest.mark.slow
def test_tokenizer_with_its_own_code_is_refused(tmp_path):
  """Refused with one line, exit 2, even with "y" waiting on stdin (where
  transformers would ask); the code never runs, in the CLI or the library."""
  directory, marker = evil_tokenizer_dir(tmp_path)
  command = [os.path.join(os.path.dirname(sys.executable), 'sftbeam'), 'run',
             '--input', SAMPLE, '--output', str(tmp_path / 'out'),
             '--tokenizer', str(directory)]
  result = subprocess.run(command, input='y\ny\n', capture_output=True,
                          text=True, timeout=600, check=False)
  line = one_error_line(result, 2)
  assert 'needs its own Python code' in line
  assert not result.stdout
  with pytest.raises(TokenizerNotFound, match='needs its own Python code'):
    load_tokenizer(str(directory))
  assert not marker.exists()
