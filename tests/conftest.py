"""Shared test fixtures: the real embedded tokenizer, paths, a CLI runner."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from compressed_inputs import RECORDS_PER_FILE
from sftbeam.transforms import tokenizer_source
from sftbeam.transforms.tokenizer_cache import CACHE_DIR_ENV
from sftbeam.transforms.tokenizer_source import EMBEDDED, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# scripts/ holds the Pub/Sub emulator launcher the streaming tests share
# with benchmarks/.
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
SAMPLE = os.path.join(ROOT, 'examples', 'sample.jsonl')
SFTBEAM = os.path.join(os.path.dirname(sys.executable), 'sftbeam')
# The fast set's guard: no pipeline, no TensorFlow unless marked slow.
pytest_plugins = ['fast_set']
# The tokenizer facts the suite's processes keep (transforms/
# tokenizer_cache.py) go to a directory of its own, not the user's cache,
# removed when the suite ends.
os.environ[CACHE_DIR_ENV] = tempfile.mkdtemp(prefix='sftbeam-test-cache-')
atexit.register(shutil.rmtree, os.environ[CACHE_DIR_ENV], ignore_errors=True)


def shared_data(name: str) -> str:
  """Path of a file in ../shared/data, skipping the test when it is absent."""
  path = os.path.join(SHARED_DATA, name)
  if not os.path.exists(path):
    pytest.skip(f'{path} not present')
  return path


@pytest.fixture(scope='module')
def gsm8k_head() -> bytes:
  """The first RECORDS_PER_FILE lines of gsm8k_test."""
  with open(shared_data('gsm8k_test.jsonl'), 'rb') as handle:
    return b''.join(handle.readline() for _ in range(RECORDS_PER_FILE))


@pytest.fixture
def tokenizer_loads(monkeypatch) -> list:
  """The names tokenizer_source.load_tokenizer (transformers) is called
  with from now on in this process."""
  names = []
  real = tokenizer_source.load_tokenizer

  def counted(name):
    names.append(name)
    return real(name)
  monkeypatch.setattr(tokenizer_source, 'load_tokenizer', counted)
  return names


@pytest.fixture(scope='session')
def qwen():
  """The real embedded Qwen tokenizer (special-token strings in text map to
  their special ids, as in the spec's `tokenizer(text)`)."""
  return load_tokenizer(EMBEDDED)


# A new network namespace starts with loopback down: bring it up (runners
# with worker processes talk gRPC over it), then exec the command.
_LOOPBACK_UP = """
import fcntl, os, socket, struct, sys
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
ifreq = struct.Struct('16sH22x')  # interface name, flags
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
  _, flags = ifreq.unpack(fcntl.ioctl(probe, SIOCGIFFLAGS, ifreq.pack(b'lo', 0)))
  fcntl.ioctl(probe, SIOCSIFFLAGS, ifreq.pack(b'lo', flags | IFF_UP))
os.execv(sys.argv[1], sys.argv[1:])
"""


def offline(command: list) -> list:
  """`command` run in a fresh network namespace holding only loopback."""
  return ['unshare', '-n', '--', sys.executable, '-c', _LOOPBACK_UP, *command]


def run_sftbeam(*args, network=True, timeout=600, check=False):
  """Runs the installed `sftbeam` CLI; gives the CompletedProcess.

  With network=False it runs in a fresh network namespace holding only
  loopback (`unshare -n`), so any attempt to reach the network fails.
  """
  command = [SFTBEAM, *args]
  if not network:
    command = offline(command)
  result = subprocess.run(command, capture_output=True, text=True,
                          timeout=timeout, check=False)
  if check and result.returncode != 0:
    raise AssertionError(f'sftbeam failed ({result.returncode}):\n'
                         f'{result.stdout}\n{result.stderr}')
  return result


def beam_test_pipeline():
  """A TestPipeline on the FnApiRunner (plain DirectRunner tries Prism,
  which downloads a binary)."""
  from apache_beam.testing.test_pipeline import TestPipeline
  return TestPipeline(runner='FnApiRunner')


def dofn_outputs(dofn, element):
  """(main outputs, {tag: tagged outputs}) of one direct process() call."""
  import apache_beam as beam
  main, tagged = [], {}
  for value in dofn.process(element):
    if isinstance(value, beam.pvalue.TaggedOutput):
      tagged.setdefault(value.tag, []).append(value.value)
    else:
      main.append(value)
  return main, tagged
