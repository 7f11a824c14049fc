"""What this machine charges for the work every contender does: a core's
worth of CPU, and a new page of memory.

  .venv/bin/python benchmarks/machine_costs.py
  .venv/bin/python benchmarks/machine_costs.py --mb 700 --pause 4

Two measurements, each the fastest of --repeat tries:
  cores       one process doing CPU-bound work alone, then two at once:
              the throughput two cores give (a pure Python loop, and a
              numpy pass over memory, which shares the memory bus).
  memory      touching --mb MiB of new memory (numpy.ones) right after the
              process freed as much, and again after --pause seconds idle:
              a virtual machine whose balloon driver reports free pages to
              its host gets them taken back after about 2 s, and each one
              touched again is a fault in the host.
The page cache takes its pages from the same free memory: a run writing
--mb MiB pays the same faults when the kernel hands it pages the host took
back (700 MiB written took 0.21 to 1.7 s here, depending on what the
machine had freed before), which this script does not try to reproduce.

docs/performance.md ("What this machine charges") has the numbers and
what they mean for the other benchmarks.
"""

import argparse
import multiprocessing
import os
import time

import numpy as np


def _python_loop(_=None) -> float:
  started = time.perf_counter()
  total = 0
  for value in range(20_000_000):
    total += value & 7
  return time.perf_counter() - started


def _memory_pass(_=None) -> float:
  values = np.ones(50_000_000, np.int64)
  started = time.perf_counter()
  for _ in range(10):
    values += 1
  return time.perf_counter() - started


def core_throughput(work, repeat: int) -> tuple:
  """(seconds alone, seconds each of two at once, throughput of two)."""
  with multiprocessing.Pool(2) as pool:
    alone = min(pool.apply(work) for _ in range(repeat))
    together = min(max(pool.map(work, [0, 1])) for _ in range(repeat))
  return alone, together, 2 * alone / together


def _touch(size: int) -> float:
  started = time.perf_counter()
  np.ones(size, np.uint8)
  return time.perf_counter() - started


def memory_costs(size: int, pause: float, repeat: int) -> list:
  """(case, seconds) of touching `size` bytes of new memory, the fastest
  of `repeat` tries each."""
  def fastest(measure):
    return min(measure() for _ in range(repeat))

  def touch_after(wait):
    np.ones(size, np.uint8)  # touched and freed
    time.sleep(wait)
    return _touch(size)

  return [('touching memory the process just freed', fastest(
              lambda: touch_after(0))),
          (f'touching memory freed {pause:g} s before', fastest(
              lambda: touch_after(pause)))]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--mb', type=int, default=700,
                      help='MiB touched (default 700: about the peak RSS of '
                      'a one-worker run)')
  parser.add_argument('--pause', type=float, default=4.0)
  parser.add_argument('--repeat', type=int, default=2)
  args = parser.parse_args()
  print(f'{os.cpu_count()} CPUs')
  for name, work in (('python loop', _python_loop),
                     ('numpy memory pass', _memory_pass)):
    alone, together, throughput = core_throughput(work, args.repeat)
    print(f'cores, {name}: {alone:.2f} s alone, {together:.2f} s each of '
          f'two at once: two cores give x{throughput:.2f}')
  for case, seconds in memory_costs(args.mb << 20, args.pause, args.repeat):
    print(f'{args.mb} MiB, {case}: {seconds:.2f} s '
          f'({seconds / args.mb * 1000:.2f} ms a MiB)')


if __name__ == '__main__':
  main()
