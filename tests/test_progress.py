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
from sftbeam.transforms.parse import FieldNames, ParseLines
from sftbeam.transforms.records import LineChunk
from sftbeam.transforms.stats import tallied_rejection_stats


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


_GOOD = b'{"prompt": "p", "output": "o"}'


def _note_lines_seen(path, records):
  """Writes the tally's `lines` when a later step gets a chunk's records."""
  with open(path, 'a', encoding='utf-8') as handle:
    handle.write(f'{progress.snapshot().get("lines", 0)}\n')
  return records


@pytest.mark.slow
def test_the_tally_moves_while_the_steps_run(tmp_path):
  """Stats reach the tally as a step emits them: a later step of the same
  stage sees each chunk's lines counted already, though the stats stream
  is flattened (the local runner hands a Flatten's elements on only when
  their stage ends) before CountStats makes its counters."""
  progress.reset()
  seen = tmp_path / 'seen'
  chunks = [LineChunk('f', [(2 * i + 1, _GOOD, 30), (2 * i + 2, b'[', 1)])
            for i in range(3)]
  with beam_test_pipeline() as root:
    parsed = (root | beam.Create(chunks) | beam.ParDo(
        ParseLines(FieldNames(), 1000)).with_outputs(
            'rejected', 'stats', main='records'))
    _ = parsed.records | beam.Map(lambda records: _note_lines_seen(
        str(seen), records))
    stats = ((parsed.stats, parsed.rejected | beam.Map(
        tallied_rejection_stats)) | beam.Flatten())
    assert_that(stats | beam.ParDo(CountStats()), equal_to([]))
  assert seen.read_text().split() == ['2', '4', '6']
  assert progress.snapshot()['lines'] == 6
  assert progress.snapshot()['rejected/invalid_json'] == 3


def test_the_progress_line_has_an_eta_when_the_input_size_is_known():
  tally = {'lines': 1000, 'input_bytes': 250, 'batches_written': 3,
           'records_written': 90, 'rejected/invalid_json': 2}
  line = progress_describer(1000)(tally, 10.0)
  assert 'read 1,000 lines' in line and 'rejected 2' in line
  assert line.endswith('25%, about 30 s left')
  assert 'left' not in progress_describer(None)(tally, 10.0)
