"""The garbage collector of a process while it runs sftbeam's steps.

Every chunk of records makes tens of thousands of short-lived container
objects (a dict per JSON line, lists, tuples). CPython's default collector
runs a young collection every 700 net allocations of them, and older ones
every 10 and 100 of those, each walking objects that live on (Beam's, the
tokenizer's, the chunks in flight): about 5% of a one-worker run at 1M
records (docs/performance.md). While a step that makes records is set up
in a process (TokenizeRecords), young collections run every 100,000
allocations instead. The thresholds are restored when the last such step
is torn down, so that a notebook running a pipeline in its own process is
left as it was. Freezing the objects alive at set-up (`gc.freeze`)
measured no further gain and would keep a notebook's objects from ever
being collected.
"""

import gc
import threading

FEWER_COLLECTIONS = (100_000, 50, 100)

_lock = threading.Lock()
_steps = 0  # steps set up in this process that asked for fewer collections
_restored = None  # the thresholds before the first of them


def collect_less():
  """Fewer collections, until as many collect_as_before calls."""
  global _steps, _restored  # pylint: disable=global-statement
  with _lock:
    if _steps == 0:
      _restored = gc.get_threshold()
      gc.set_threshold(*FEWER_COLLECTIONS)
    _steps += 1


def collect_as_before():
  """Undoes one collect_less; the last one restores the thresholds."""
  global _steps  # pylint: disable=global-statement
  with _lock:
    if _steps == 0:
      return
    _steps -= 1
    if _steps == 0:
      gc.set_threshold(*_restored)
