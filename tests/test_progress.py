"""The live progress a long local run prints, from its stats stream."""

import io
import time

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from conftest import beam_test_pipeline
from sftbeam.pipeline.batch import progress_describer
from sftbeam.pipeline import progress
from sftbeam.pipeline.progress import CountStats


def _describe(tally, elapsed):
  return f'lines={tally.get("lines", 0)} after {elapsed:.2f}s'


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_plain_lines_while_the_block_runs(capsys, monkeypatch):
  monkeypatch.setattr(progress, 'PRINT_SECONDS', 0.02)
  with progress.printed(_describe):
    progress.add({'lines': 5})
    time.sleep(0.3)
  lines = capsys.readouterr().out.splitlines()
  assert lines and all(line.startswith('lines=') for line in lines)
  assert lines[-1].startswith('lines=5 ')
  time.sleep(0.1)  # the reporter has stopped with the block
  assert capsys.readouterr().out == ''


def test_a_terminal_gets_one_line_rewritten_in_place(monkeypatch):
  monkeypatch.setattr(progress, 'TERMINAL_SECONDS', 0.02)
  terminal = _Terminal()
  with progress.printed(_describe, stream=terminal):
    progress.add({'lines': 7})
    time.sleep(0.2)
  written = terminal.getvalue()
  assert '\n' not in written
  assert '\r\x1b[2Klines=7 ' in written
  assert written.endswith('\r\x1b[2K')  # the line is cleared at the end


def test_disabled_prints_nothing_and_starts_from_zero(capsys):
  progress.add({'lines': 3})
  with progress.printed(_describe, enabled=False):
    time.sleep(0.1)
    assert progress.snapshot() == {}
  assert capsys.readouterr().out == ''


@pytest.mark.slow
def test_count_stats_feeds_the_tally_in_a_pipeline():
  progress.reset()
  with beam_test_pipeline() as root:
    stats = root | beam.Create([{'lines': 2}, {'lines': 3, 'rejected/x': 1}])
    assert_that(stats | beam.ParDo(CountStats()), equal_to([]))
  assert progress.snapshot() == {'lines': 5, 'rejected/x': 1}


def test_the_progress_line_has_an_eta_when_the_input_size_is_known():
  tally = {'lines': 1000, 'input_bytes': 250, 'batches_written': 3,
           'records_written': 90, 'rejected/invalid_json': 2}
  line = progress_describer(1000)(tally, 10.0)
  assert 'read 1,000 lines' in line and 'rejected 2' in line
  assert line.endswith('25%, about 30 s left')
  assert 'left' not in progress_describer(None)(tally, 10.0)
