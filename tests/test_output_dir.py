"""pipeline/output_dir.py: claiming --output, checked before anything is
written or deleted."""

import os
import pathlib

import pytest
from apache_beam.transforms.window import IntervalWindow

from output_dirs import standin_earlier_run, tree
from sftbeam.pipeline import output_dir as output_dir_lib
from sftbeam.pipeline.options import ConfigError
from sftbeam.transforms import filenames


def test_a_file_added_meanwhile_under_a_new_runs_name_stops_the_swap(tmp_path):
  """A file that appears, while the run runs, under a name the run would
  move in is neither replaced nor left beside the new run: the run fails
  (exit 1, ReplaceFailed) and the directory is as before."""
  output_dir = tmp_path / 'out'
  standin_earlier_run(output_dir)
  before = tree(output_dir)
  with pytest.raises(output_dir_lib.ReplaceFailed,
                     match='got a file batches-00000-of-00002.tfrecord'):
    with output_dir_lib.prepare_output_dir(str(output_dir), True) as claim:
      for name in (filenames.INFO, 'batches-00000-of-00002.tfrecord'):
        pathlib.Path(claim.work_dir, name).write_bytes(b'new run')
      (output_dir / 'batches-00000-of-00002.tfrecord').write_bytes(b'theirs')
      claim.complete()
  after = tree(output_dir)
  assert after.pop('batches-00000-of-00002.tfrecord') == b'theirs'
  assert after == before


def test_gs_output_holding_what_an_input_pattern_matches_is_refused(
    monkeypatch):
  """Remote patterns are matched only by the workers: they are checked
  against the objects now under the gs:// --output (listed as for the
  emptiness check; here a fake listing)."""
  monkeypatch.setattr(output_dir_lib, '_entries',
                      lambda _: ['data.jsonl', 'batches-00000-of-00001.tfrecord'])
  with pytest.raises(ConfigError, match='holds the input file gs://b/out/data'):
    output_dir_lib.check_output_apart('gs://b/out', ['gs://b/**.jsonl'])
  output_dir_lib.check_output_apart('gs://b/out', ['gs://b/*.jsonl',
                                                   'gs://b/data/*.jsonl',
                                                   '/local/*.jsonl'])


def test_batch_overwrite_refuses_a_streaming_runs_window_files(tmp_path):
  """A streaming run records its fixed files only, not its window files:
  a batch run's --overwrite refuses them, as a streaming run's does, rather
  than leave them beside its own shards."""
  output_dir = tmp_path / 'out'
  output_dir.mkdir()
  claim = output_dir_lib.prepare_streaming_output_dir(str(output_dir),
                                                      False)
  window = IntervalWindow(1764000000, 1764000060)
  shard = filenames.window_file_name(filenames.SHARD_PREFIX,
                                     filenames.SHARD_SUFFIX, window, None)
  (output_dir / shard).write_bytes(b'x')
  (output_dir / filenames.window_file_name(
      filenames.WINDOW_STATS_PREFIX, filenames.WINDOW_STATS_SUFFIX, window,
      None)).write_bytes(b'{}')
  claim.release()
  before = tree(output_dir)
  with pytest.raises(ConfigError,
                     match=f'holds {shard} and 1 more, which no sftbeam run '
                     'recorded'):
    output_dir_lib.prepare_output_dir(str(output_dir), True)
  assert tree(output_dir) == before


def test_a_directory_made_by_a_run_started_at_the_same_moment_is_claimed(
    tmp_path, monkeypatch):
  """Two runs both see --output missing; the one whose makedirs loses the
  race claims the directory the other made (the lock decides between
  them), and does not count it as its own to remove."""
  output_dir = tmp_path / 'out'

  def made_meanwhile(path, *args, **kwargs):
    os.mkdir(path)  # the other run, between the check and this call
    raise FileExistsError(path)

  monkeypatch.setattr(output_dir_lib.os, 'makedirs', made_meanwhile)
  with pytest.raises(RuntimeError):
    with output_dir_lib.prepare_output_dir(str(output_dir), False):
      raise RuntimeError('the run failed')
  assert output_dir.is_dir()  # the other run's: not removed by this one
