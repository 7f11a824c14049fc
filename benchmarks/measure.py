"""Running one contender in a child process and measuring it: wall time,
CPU seconds and the peak RSS of its whole process tree; a contender's row
of the table from them.
"""

import collections
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import NamedTuple

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHMARKS)
# A python contender's child process runs the harness in --worker mode.
HARNESS = os.path.join(BENCHMARKS, 'run_benchmark.py')
POLL_SECONDS = 0.5
MB = 1 << 20

# Every child gets this copy of our environment, taken before anything could
# change it: thread settings stay the user's (by default, unset).
BASE_ENV = dict(os.environ)


def _children_by_parent():
  children = collections.defaultdict(list)
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat', encoding='utf-8') as handle:
        # The command name may hold spaces; the fields after ')' do not.
        parent = int(handle.read().rsplit(')', 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
      continue  # the process ended while we looked
    children[parent].append(int(entry))
  return children


def tree_rss_bytes(root_pid: int) -> int:
  """Summed resident memory of `root_pid` and all its descendants."""
  children = _children_by_parent()
  page = os.sysconf('SC_PAGE_SIZE')
  total, pending = 0, [root_pid]
  while pending:
    pid = pending.pop()
    try:
      with open(f'/proc/{pid}/statm', encoding='utf-8') as handle:
        total += int(handle.read().split()[1]) * page
    except (OSError, IndexError, ValueError):
      pass
    pending += children.get(pid, [])
  return total


class Measured(NamedTuple):
  exit_code: int
  wall_s: float
  peak_rss_bytes: int
  cpu_s: float  # user + system, the whole tree that was waited for
  load_before: float  # the machine's 1-minute load average at the start


def run_measured(command, env, log_prefix) -> Measured:
  """Runs `command` to completion and measures it.

  Its stdout and stderr go to LOG_PREFIX.stdout/.stderr.
  """
  load_before = os.getloadavg()[0]
  with open(log_prefix + '.stdout', 'w', encoding='utf-8') as out, open(
      log_prefix + '.stderr', 'w', encoding='utf-8') as err:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=out, stderr=err, env=env,
                               cwd=ROOT)
    peak = [0]
    done = threading.Event()

    def poll():
      while not done.is_set():
        peak[0] = max(peak[0], tree_rss_bytes(process.pid))
        done.wait(POLL_SECONDS)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    # wait4, not Popen.wait: it also gives the child's own resource usage.
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    poller.join()
  process.returncode = os.waitstatus_to_exitcode(status)
  # ru_maxrss is in KiB on Linux.
  return Measured(process.returncode, wall,
                  max(peak[0], usage.ru_maxrss * 1024),
                  usage.ru_utime + usage.ru_stime, load_before)


@functools.cache
def embedded_dir() -> str:
  """The embedded tokenizer's directory, which every worker loads from."""
  from sftbeam.transforms.tokenizer_source import embedded_tokenizer_dir
  return embedded_tokenizer_dir()


def fresh_dir(path: str) -> str:
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  return path


def log_path_prefix(workdir, name):
  logs = os.path.join(workdir, 'logs')
  os.makedirs(logs, exist_ok=True)
  return os.path.join(logs, name)


def failure(name, code, log_prefix):
  with open(log_prefix + '.stderr', encoding='utf-8') as handle:
    lines = [line for line in handle.read().splitlines() if line.strip()]
  last = lines[-1] if lines else ''
  return {'contender': name,
          'status': f'failed (exit {code}): {last} (see {log_prefix}.stderr)'}


def dir_bytes(path: str) -> int:
  """The bytes of every file below `path`."""
  return sum(os.path.getsize(os.path.join(parent, name))
             for parent, _, names in os.walk(path) for name in names)


def make_row(name, measured, timed_s, counts, output_dir):
  """A table row from the process measurement, the contender's counts and
  what it wrote in `output_dir`."""
  records, real = counts['records'], counts['real_tokens']
  stored = counts.get('stored_tokens')
  return {
      'contender': name, 'status': 'ok', 'records': records,
      'records_written': counts.get('records_written'),
      'real_tokens': real, 'stored_tokens': stored,
      'padding_efficiency': real / stored if stored else None,
      'timed_s': timed_s, 'process_s': measured.wall_s,
      'records_per_s': records / timed_s,
      'records_per_s_process': records / measured.wall_s,
      'tokens_per_s': real / timed_s,
      'peak_rss_mb': measured.peak_rss_bytes / MB,
      'output_mb': dir_bytes(output_dir) / MB,
      'cpu_s_process': measured.cpu_s,
      'load_before': measured.load_before,
      'ratio_to_raw': None,
  }


def run_python_worker(name, input_path, workdir, env=None):
  """Runs `name`'s worker function in a measured child process."""
  log_prefix = log_path_prefix(workdir, name)
  out_dir = fresh_dir(os.path.join(workdir, f'out-{name}'))
  result_path = log_prefix + '.result.json'
  command = [sys.executable, HARNESS, '--worker', name,
             '--input', input_path, '--out', out_dir, '--result', result_path,
             '--tokenizer-dir', embedded_dir()]
  measured = run_measured(command, env or BASE_ENV, log_prefix)
  if measured.exit_code:
    return None, failure(name, measured.exit_code, log_prefix)
  with open(result_path, encoding='utf-8') as handle:
    result = json.load(handle)
  row = None
  if 'timed_s' in result:
    row = make_row(name, measured, result['timed_s'], result, out_dir)
    row['env'] = result['env']
  return result, row
