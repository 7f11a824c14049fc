"""The live count of a run, and printing it.

The steps of a run emit stats dicts (transforms/stats.py), each added to
its process's live tally as it is emitted; `CountStats`, attached to the
stats stream by the graph, turns each into Beam counters (Dataflow's job
page shows them; Beam's own counters are read only when a run ends). The
CLI prints the tally: on a terminal as one line rewritten in place, with
an ETA when the input's size is known; otherwise as a plain line every
PRINT_SECONDS. The tally stays empty when the steps run in other processes
(Dataflow, multi-process runners), where the runner shows its own progress.
"""

import contextlib
import sys
import threading
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from sftbeam.transforms import stats

# Plain progress lines (output not a terminal) come this often.
PRINT_SECONDS = 10
# A terminal's line is rewritten this often.
TERMINAL_SECONDS = 0.5

def add(counts: dict):
  stats.tallied(counts)


def snapshot() -> dict:
  return stats.live_tally()


def reset():
  stats.reset_live_tally()


class CountStats(beam.DoFn):
  """Stats dict -> Beam counters `sftbeam/<name>`."""

  def process(self, counts: dict):
    for name, count in counts.items():
      Metrics.counter('sftbeam', name).inc(count)


def eta_seconds(done: float, total: float, elapsed: float):
  """Seconds left at the average rate so far, or None when unknown."""
  if not total or done <= 0 or elapsed <= 0:
    return None
  return max(0.0, (total - done) * elapsed / done)


@contextlib.contextmanager
def printed(describe, enabled: bool = True, stream=None):
  """Prints `describe(tally, elapsed_seconds)` while the block runs.

  Starts from an empty tally. On a terminal the line is rewritten in place
  twice a second (and ended when the block ends); elsewhere a plain line
  is printed every PRINT_SECONDS. With `enabled` false (the steps run in
  other processes, where the tally stays empty) it prints nothing.
  """
  stream = stream or sys.stdout
  live = stream.isatty()
  reset()
  started = time.time()
  stop = threading.Event()

  def report():
    while not stop.wait(TERMINAL_SECONDS if live else PRINT_SECONDS):
      line = describe(snapshot(), time.time() - started)
      if live:
        stream.write('\r\x1b[2K' + line)
        stream.flush()
      else:
        print(line, file=stream, flush=True)

  reporter = threading.Thread(target=report, daemon=True)
  if enabled:
    reporter.start()
  try:
    yield
  finally:
    stop.set()
    if enabled:
      reporter.join()
      if live:
        stream.write('\r\x1b[2K')
        stream.flush()
