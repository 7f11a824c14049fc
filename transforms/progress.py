"""Live progress counts for a run in this process.

Beam counters are read only when a run ends; a long local run should show
progress while it goes. DoFns add to these counts too, and the CLI prints
them every few seconds. They stay zero when the DoFns run elsewhere (other
processes, Dataflow), where the runner shows its own progress.
"""

import collections
import contextlib
import threading
import time

# A long local run shows its progress at least this often.
PRINT_SECONDS = 10

_lock = threading.Lock()
_counts = collections.Counter()


def add(name: str, amount: int = 1):
  with _lock:
    _counts[name] += amount


def snapshot() -> dict:
  with _lock:
    return dict(_counts)


def reset():
  with _lock:
    _counts.clear()


@contextlib.contextmanager
def printed_every(describe, enabled: bool = True,
                  seconds: float = PRINT_SECONDS):
  """Prints `describe(counts, elapsed_seconds)` every `seconds` in the block.

  Starts from zero counts. With `enabled` false (the DoFns run in other
  processes, where these counts stay zero) it prints nothing.
  """
  reset()
  started = time.time()
  stop = threading.Event()

  def report():
    while not stop.wait(seconds):
      print(describe(snapshot(), time.time() - started), flush=True)

  if enabled:
    threading.Thread(target=report, daemon=True).start()
  try:
    yield
  finally:
    stop.set()
