"""Readers resume exactly after preemption (docs/reading.md): a state saved
at any batch and loaded in a new process gives the batches an
uninterrupted run gives, pass by pass, with 0 and 2 DataLoader workers,
across epochs, twice in a row, per rank; a state that would give other
batches is refused. On the CLI's output for examples/sample.jsonl (36
batches in 4 shards); each run is a process of its own (resume_child.py).
"""

import collections
import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from conftest import ROOT, SAMPLE, run_sftbeam
from sftbeam.pipeline import read_order, readers
from sftbeam.readers import IncompatibleState, iter_numpy_batches, torch_dataset

# Runs the pipeline: `pytest -m "not slow"` skips it. torchdata 0.11 calls
# a torch function that torch 2.13 deprecates; a test asks for 3 workers.
pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:'set_vital' is deprecated"),
              pytest.mark.filterwarnings('ignore:This DataLoader will create')]

CHILD = os.path.join(ROOT, 'tests', 'resume_child.py')
BATCHES = 36  # in the run of examples/sample.jsonl with configs/local.yaml


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  output_dir = tmp_path_factory.mktemp('resume') / 'out'
  run_sftbeam('run', '--config', os.path.join(ROOT, 'configs/local.yaml'),
              '--input', SAMPLE, '--output', str(output_dir), network=False,
              check=True)
  return str(output_dir)


def child(output_dir, runs, **job) -> list:
  """What resume_child.py reads in a new process: a result per run (its
  docstring)."""
  job = {'output_dir': output_dir, 'reader': 'torch', 'shuffle': True,
         'seed': 7, 'world_size': 1, 'rank': 0, 'num_workers': 0,
         'runs': runs, **job}
  result = subprocess.run([sys.executable, CHILD, json.dumps(job)],
                          capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout)


def uninterrupted(output_dir, passes=3, **job) -> dict:
  return child(output_dir, [{'resume': None, 'passes': passes}], **job)[0]


def states_by_point(result) -> dict:
  """{(pass, batches read in it): the state saved there}."""
  return {(index, given): state for index, given, state in result['states']}


def after(passes, index, given):
  """What an uninterrupted run reads after batch `given` of pass `index`:
  the rest of that pass, then the later passes."""
  return [passes[index][given:], *passes[index + 1:]]


def numpy_epoch(output_dir, epoch):
  return [','.join(batch['example_ids']) for batch in
          iter_numpy_batches(output_dir, shuffle=True, seed=7, epoch=epoch)]


def numpy_order_by_parts(output_dir, epoch, workers):
  """An epoch as a DataLoader with `workers` workers gives it: each worker's
  part in the readers' order, taken in turn (a part that ends drops out)."""
  shards = readers.verified_shards(output_dir)
  parts = [iter(read_order.Batches(shards, read_order.Order(True, 7, 256,
                                                            part, workers),
                                   epoch, readers.shard_records,
                                   readers.numpy_batch))
           for part in range(workers)]
  batches = itertools.chain.from_iterable(
      itertools.zip_longest(*parts, fillvalue=None))
  return [','.join(batch['example_ids']) for batch in batches if batch]


# The first batch, mid epoch, the epoch's last batch, mid next epoch.
POINTS = [(0, 1), (0, 17), (0, BATCHES), (1, 20)]


@pytest.mark.parametrize('reader, workers', [('numpy', 0), ('torch', 0),
                                             ('torch', 2)])
def test_resumes_in_a_new_process_at_any_batch_and_twice_in_a_row(
    finished, reader, workers):
  job = {'reader': reader, 'num_workers': workers}
  reference = uninterrupted(finished, **job)
  passes = reference['passes']
  # Each pass is the next epoch, in its own order: with one part, the numpy
  # reader's; with workers, their parts in turn.
  for epoch, batches in enumerate(passes):
    assert sorted(batches) == sorted(numpy_epoch(finished, epoch))
    assert batches == numpy_order_by_parts(finished, epoch, max(workers, 1))
  assert passes[0] != passes[1] and passes[1] != passes[2]
  saved = states_by_point(reference)
  runs = [{'resume': saved[point], 'passes': 3 - point[0]}
          for point in POINTS]
  # Saved after the first pass ended (numpy: the same state as after its
  # last batch): the next pass is the next epoch.
  runs.append({'resume': reference['pass_end_states'][0], 'passes': 2})
  # The first of two resumes in a row.
  runs.append({'resume': saved[0, 10], 'passes': 2, 'stop_after': 40})
  resumed = child(finished, runs, **job)
  for point, result in zip(POINTS, resumed):
    assert result['passes'] == after(passes, *point), point
  if reader == 'torch':
    assert resumed[-2]['passes'] == passes[1:]
  else:
    assert resumed[-2]['passes'][0] == []
    assert all(isinstance(value, (int, str)) for value in saved[0, 1].values())
  first = resumed[-1]
  assert first['passes'] == [passes[0][10:], passes[1][:14]]
  second = child(finished, [{'resume': first['states'][-1][2], 'passes': 2}],
                 **job)[0]
  assert second['passes'] == after(passes, 1, 14)


def test_ranks_resume_their_own_parts(finished):
  """Ranks 0 and 1 of 2, 2 workers each: every batch once per epoch over
  the ranks, and each rank resumes its own batches."""
  per_rank = []
  for rank in (0, 1):
    job = {'num_workers': 2, 'world_size': 2, 'rank': rank}
    reference = uninterrupted(finished, passes=2, **job)
    passes = reference['passes']
    per_rank.append(passes)
    saved = states_by_point(reference)
    points = [(0, 5), (0, BATCHES // 2), (1, 9)]
    resumed = child(finished, [{'resume': saved[point], 'passes': 2 - point[0]}
                               for point in points], **job)
    for point, result in zip(points, resumed):
      assert result['passes'] == after(passes, *point), (rank, point)
  for epoch in range(2):
    together = per_rank[0][epoch] + per_rank[1][epoch]
    assert collections.Counter(together) == collections.Counter(
        numpy_epoch(finished, epoch))


def test_persistent_workers_resume_too(finished):
  """They keep their dataset copies from pass to pass."""
  job = {'num_workers': 2, 'loader': {'persistent_workers': True}}
  reference = uninterrupted(finished, passes=2, **job)
  passes = reference['passes']
  assert passes == [numpy_order_by_parts(finished, epoch, 2)
                    for epoch in range(2)]
  (resumed,) = child(finished, [{'resume': states_by_point(reference)[1, 10],
                                 'passes': 1}], **job)
  assert resumed['passes'] == after(passes, 1, 10)


def test_spawned_workers_read_each_pass_as_the_next_epoch(finished):
  """A spawned worker gets the dataset pickled, its epoch clock with it
  (and not the main process's open pass: here a first batch peeked at,
  which was a pass of epoch 0)."""
  dataset = torch_dataset(finished, shuffle=True, seed=7)
  peeked = next(iter(dataset))
  assert ','.join(peeked['example_ids']) == numpy_epoch(finished, 0)[0]
  loader = StatefulDataLoader(dataset, batch_size=None, num_workers=1,
                              multiprocessing_context='spawn')
  for epoch in (1, 2):
    assert [','.join(batch['example_ids']) for batch in loader] == (
        numpy_epoch(finished, epoch))


# ------------------------------------------------------------ refused

def loader_state(output_dir, workers, batches=3, **settings):
  """A StatefulDataLoader's state after `batches` batches, in this process."""
  settings = {'shuffle': True, 'seed': 7, **settings}
  loader = StatefulDataLoader(torch_dataset(output_dir, **settings),
                              batch_size=None, num_workers=workers)
  for read, _ in enumerate(loader, 1):
    if read == batches:
      return loader.state_dict()
  raise AssertionError('too few batches')


def first_batch_after_loading(output_dir, workers, state, **settings):
  settings = {'shuffle': True, 'seed': 7, **settings}
  loader = StatefulDataLoader(torch_dataset(output_dir, **settings),
                              batch_size=None, num_workers=workers)
  loader.load_state_dict(state)
  return next(iter(loader))


@pytest.fixture
def other_run(finished, tmp_path):
  """The same run without its last shard: another run, valid."""
  other = str(shutil.copytree(finished, tmp_path / 'other'))
  path = os.path.join(other, 'dataset_info.json')
  with open(path, encoding='utf-8') as handle:
    info = json.load(handle)
  info['shards'] = info['shards'][:-1]
  with open(path, 'w', encoding='utf-8') as handle:
    json.dump(info, handle)
  return other


@pytest.mark.parametrize('workers', [0, 2])
@pytest.mark.parametrize('settings, message', [
    ({'seed': 8}, 'shuffle seed 7, this reader has 8'),
    ({'shuffle': False}, "order 'shuffled', this reader has 'listed'"),
    ({'world_size': 2}, 'world size 1, this reader has 2'),
    ({'world_size': 2, 'rank': 1}, 'world size 1, this reader has 2'),
])
def test_a_state_of_other_settings_is_refused(finished, workers, settings,
                                              message):
  state = loader_state(finished, workers)
  with pytest.raises(IncompatibleState, match=message):
    first_batch_after_loading(finished, workers, state, **settings)


@pytest.mark.parametrize('workers', [0, 2])
def test_a_state_of_another_run_is_refused(finished, other_run, tmp_path,
                                           workers):
  state = loader_state(finished, workers)
  with pytest.raises(IncompatibleState, match='saved with run'):
    first_batch_after_loading(other_run, workers, state)
  # A copy of the same run elsewhere gives the same batches: accepted.
  copy = str(shutil.copytree(finished, tmp_path / 'copy'))
  expected = first_batch_after_loading(finished, workers, state)
  assert (first_batch_after_loading(copy, workers, state)['example_ids'] ==
          expected['example_ids'])


def test_a_state_of_another_worker_count_or_reader_is_refused(finished):
  with pytest.raises(IncompatibleState,
                     match='number of DataLoader workers 2, this reader has 3'):
    first_batch_after_loading(finished, 3, loader_state(finished, 2))
  numpy_batches = iter_numpy_batches(finished, shuffle=True, seed=7)
  next(numpy_batches)
  dataset = torch_dataset(finished, shuffle=True, seed=7)
  dataset.load_state_dict(numpy_batches.state_dict())
  with pytest.raises(IncompatibleState, match='saved by another kind of'):
    iter(dataset)
