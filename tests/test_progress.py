"""The live progress lines a long local run prints."""

import time

from sftbeam.transforms import progress


def _describe(counts, elapsed):
  return f'lines={counts.get("lines_read", 0)} after {elapsed:.2f}s'


def test_printed_every_reports_counts_while_the_block_runs(capsys):
  with progress.printed_every(_describe, seconds=0.02):
    progress.add('lines_read', 5)
    time.sleep(0.3)
  lines = capsys.readouterr().out.splitlines()
  assert lines and all(line.startswith('lines=') for line in lines)
  assert lines[-1].startswith('lines=5 ')
  time.sleep(0.1)  # the reporter has stopped with the block
  assert capsys.readouterr().out == ''


def test_printed_every_disabled_prints_nothing_and_starts_from_zero(capsys):
  progress.add('lines_read', 3)
  with progress.printed_every(_describe, enabled=False, seconds=0.02):
    time.sleep(0.1)
    assert progress.snapshot() == {}
  assert capsys.readouterr().out == ''
