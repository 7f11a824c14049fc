"""sftbeam batches as a PyTorch IterableDataset (`readers.torch_dataset`).

This is the only module that imports torch; nothing imports it but
`readers.torch_dataset`, so the CLI and the workers never load torch.

  dataset = torch_dataset('out/', shuffle=True, seed=0, rank=rank,
                          world_size=world_size)
  loader = DataLoader(dataset, batch_size=None, num_workers=2)
  for epoch in range(epochs):
    dataset.set_epoch(epoch)
    for batch in loader: ...

Items are whole batches (hence `batch_size=None`). Each DataLoader worker of
each rank reads its own contiguous slice of the epoch's batch sequence
(`read_order`), so over all ranks and workers every batch comes
exactly once per epoch, in an order fixed by (seed, epoch) for a given
world size and worker count. Ranks get equal numbers of batches, or one
more or less.
"""

import numpy as np
import torch

from sftbeam.pipeline import read_order, readers


def to_tensors(batch: dict) -> dict:
  """A numpy batch dict (readers.numpy_batch) with its arrays as tensors of
  the same dtypes; `example_ids` stays a list of str, `max_seqlen` an int."""
  return {name: torch.from_numpy(value) if isinstance(value, np.ndarray)
          else value for name, value in batch.items()}


class SftBatches(torch.utils.data.IterableDataset):
  """The batches of an sftbeam output directory, split across DataLoader
  workers and distributed ranks (see the module docstring)."""

  def __init__(self, output_dir: str, *, shuffle: bool = False, seed: int = 0,
               epoch: int = 0, rank: int = 0, world_size: int = 1):
    super().__init__()
    if not 0 <= rank < world_size:
      raise ValueError(f'rank {rank} is not in 0..{world_size - 1}')
    self.output_dir = output_dir
    self.shuffle = shuffle
    self.seed = seed
    self.epoch = epoch
    self.rank = rank
    self.world_size = world_size
    # Refuse a bad directory here, in the main process, not in a worker.
    self._total = sum(shard.records
                      for shard in readers.verified_shards(output_dir))

  def set_epoch(self, epoch: int):
    """The next iteration's epoch (workers started afterwards see it; keep
    the DataLoader's default `persistent_workers=False`)."""
    self.epoch = epoch

  def __len__(self) -> int:
    """Batches this rank gets in an epoch (its workers' slices together)."""
    return (self._total * (self.rank + 1) // self.world_size -
            self._total * self.rank // self.world_size)

  def __iter__(self):
    worker = torch.utils.data.get_worker_info()
    worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
    order = read_order.Order(self.shuffle, self.seed,
                             part=self.rank * workers + worker_id,
                             parts=self.world_size * workers)
    batches = read_order.Batches(readers.verified_shards(self.output_dir),
                                 order, self.epoch, readers.shard_records,
                                 readers.numpy_batch)
    for batch in batches:
      yield to_tensors(batch)
