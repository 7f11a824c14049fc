"""sftbeam batches as a PyTorch IterableDataset (`readers.torch_dataset`)
that torchdata's StatefulDataLoader saves and resumes exactly.

This is the only module that imports torch; nothing imports it but
`readers.torch_dataset`, so the CLI and the workers never load torch.

  dataset = torch_dataset('out/', shuffle=True, seed=0, rank=rank,
                          world_size=world_size)
  loader = StatefulDataLoader(dataset, batch_size=None, num_workers=2)
  loader.load_state_dict(saved)        # when resuming, in any process
  for batch in loader: ...             # each pass: the next epoch
  saved = loader.state_dict()

Items are whole batches (hence `batch_size=None`). Each DataLoader worker of
each rank reads its own contiguous part of the epoch's batch sequence
(`read_order`), so over all ranks and workers every batch comes exactly
once per epoch, in an order fixed by (seed, epoch) for a given world size
and worker count. Ranks get equal numbers of batches, or one more or less.

Epochs: each pass over the loader (or the dataset) reads the next epoch,
0, 1, ..., unless the caller fixes it (`epoch=`, `set_epoch`). The W
processes that read a pass (the loader's workers, or the main process)
agree on its epoch through a `PassClock` in shared memory.

Resuming: `state_dict()` is the position of this process's part (epoch and
batches given); the StatefulDataLoader asks each worker for it with every
batch and keeps it with its own. `load_state_dict()` makes the next pass
continue from there, without decoding anything before it. As in an
uninterrupted run, a state saved in a pass after its last batch resumes
with the rest of that pass (nothing), one saved after the pass ended with
the next epoch.
"""

import multiprocessing

import numpy as np
import torch

from sftbeam.pipeline import read_order, readers


def to_tensors(batch: dict) -> dict:
  """A numpy batch dict (readers.numpy_batch) with its arrays as tensors of
  the same dtypes; `example_ids` stays a list of str, `max_seqlen` an int."""
  return {name: torch.from_numpy(value) if isinstance(value, np.ndarray)
          else value for name, value in batch.items()}


def _decode(record: bytes) -> dict:
  return to_tensors(readers.numpy_batch(record))


# The PassClock's numbers, in one shared array.
_FIXED, _EPOCH, _WORKERS, _ARRIVED = range(4)


class PassClock:
  """The epoch of each pass over one dataset, agreed between the dataset
  and the DataLoader workers that read the pass together.

  Every process reading a pass calls `begin` once, when its iterator is
  made, and all of them do before the loader asks any for a batch (torch's
  DataLoader and the StatefulDataLoader wait until every worker has
  started). So arrivals count passes: the first arrival of a pass decides
  its epoch, the next `workers - 1` join it. The numbers are shared memory
  made by a 'spawn' context, which reaches workers started by fork,
  forkserver or spawn alike.
  """

  def __init__(self, epoch: int = None):
    self._shared = multiprocessing.get_context('spawn').Array('q', 4)
    self._shared[_EPOCH] = -1
    self.fix(epoch)

  def fix(self, epoch: int = None):
    """Every pass from now reads `epoch`; None: each the next one."""
    with self._shared.get_lock():
      self._shared[_FIXED] = -1 if epoch is None else epoch

  def begin(self, workers: int, resumed_epoch: int = None) -> int:
    """The epoch of the pass that this process, one of `workers`, begins;
    a pass that resumes a saved state reads the state's epoch."""
    values = self._shared
    with values.get_lock():
      if not values[_ARRIVED] < values[_WORKERS] == workers:
        if resumed_epoch is not None:
          values[_EPOCH] = resumed_epoch
        elif values[_FIXED] >= 0:
          values[_EPOCH] = values[_FIXED]
        else:
          values[_EPOCH] += 1
        values[_WORKERS], values[_ARRIVED] = workers, 0
      elif resumed_epoch not in (None, values[_EPOCH]):
        raise read_order.IncompatibleState(
            'the DataLoader workers resume states of different epochs '
            f'({resumed_epoch} and {values[_EPOCH]}): not one saved state')
      values[_ARRIVED] += 1
      return values[_EPOCH]

  def latest(self):
    """The epoch of the latest pass, or None before the first."""
    epoch = self._shared[_EPOCH]
    return None if epoch < 0 else epoch


def _this_worker():
  """(worker id, number of workers) of this DataLoader worker, or (0, 1)."""
  worker = torch.utils.data.get_worker_info()
  return (worker.id, worker.num_workers) if worker else (0, 1)


class SftBatches(torch.utils.data.IterableDataset):
  """The batches of an sftbeam output directory, split across DataLoader
  workers and distributed ranks, resumable (see the module docstring)."""

  def __init__(self, output_dir: str, *, shuffle: bool = False, seed: int = 0,
               epoch: int = None, rank: int = 0, world_size: int = 1):
    super().__init__()
    if not 0 <= rank < world_size:
      raise ValueError(f'rank {rank} is not in 0..{world_size - 1}')
    self.rank = rank
    self.world_size = world_size
    self._order = read_order.Order(shuffle, seed)
    # Refuse a bad directory here, in the main process, not in a worker.
    self._shards = readers.verified_shards(output_dir)
    self._run = read_order.run_fingerprint(self._shards)
    self._clock = PassClock(epoch)
    self._to_resume = None  # a loaded state, for the next pass
    self._batches = None    # this process's part of the current pass
    self._workers = 1

  def set_epoch(self, epoch: int):
    """Every later pass reads `epoch` (workers already started too)."""
    self._clock.fix(epoch)

  @property
  def epoch(self):
    """The epoch of the latest pass (None before the first)."""
    return self._clock.latest()

  def __len__(self) -> int:
    """Batches this rank gets in an epoch (its workers' parts together)."""
    total = sum(shard.records for shard in self._shards)
    return (total * (self.rank + 1) // self.world_size -
            total * self.rank // self.world_size)

  def __iter__(self):
    slot, self._workers = _this_worker()
    state, self._to_resume = self._to_resume, None
    if state is None:
      epoch = self._clock.begin(self._workers)
      self._batches = self._part(self.rank * self._workers + slot, epoch)
    else:
      self._batches = self._resumed_part(state)
    # A plain generator: the loader saves the position through the
    # dataset's state_dict(), once.
    return (batch for batch in self._batches)

  def state_dict(self) -> dict:
    """The position of this process's part of the current pass."""
    if self._batches is None:
      raise ValueError('no pass over this dataset has begun: save '
                       'state_dict() of the StatefulDataLoader that reads it')
    return self._batches.state_dict(world_size=self.world_size,
                                    rank=self.rank, num_workers=self._workers)

  def load_state_dict(self, state: dict):
    """The next pass continues from `state` (checked when it begins)."""
    self._to_resume = state

  def _part(self, part: int, epoch: int) -> read_order.Batches:
    order = self._order._replace(part=part,
                                 parts=self.world_size * self._workers)
    return read_order.Batches(self._shards, order, epoch,
                              readers.shard_records, _decode)

  def _resumed_part(self, state: dict) -> read_order.Batches:
    """This process's part of a resumed pass, at the saved position;
    refuses a state of another run, world size, rank or worker count."""
    read_order.check_state(state, {
        'run': self._run, 'world_size': self.world_size, 'rank': self.rank,
        'num_workers': self._workers})
    own_parts = range(self.rank * self._workers,
                      (self.rank + 1) * self._workers)
    if state.get('part') not in own_parts:
      raise read_order.IncompatibleState(
          f"the reader state is of part {state.get('part')!r}, not one of "
          f'rank {self.rank}\'s parts {own_parts.start}..{own_parts.stop - 1}')
    batches = self._part(state['part'], state['epoch'])
    batches.load_state_dict(state)
    self._clock.begin(self._workers, batches.epoch)
    return batches

  def __getstate__(self):
    # A spawned worker gets the dataset pickled: without the main
    # process's own reading position, which holds an open generator.
    state = self.__dict__.copy()
    state['_batches'] = None
    return state
