"""Live progress counts for a run in this process.

Beam counters are read only when a run ends; a long local run should show
progress while it goes. DoFns add to these counts too, and the CLI prints
them every few seconds. They stay zero when the DoFns run elsewhere (other
processes, Dataflow), where the runner shows its own progress.
"""

import collections
import threading

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
