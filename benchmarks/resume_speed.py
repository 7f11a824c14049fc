"""How long a reader takes to give its first batch when it resumes late in
an epoch, against a fresh start.

  python benchmarks/resume_speed.py OUTPUT_DIR [--at 0.9] [--repeat 5]

Per reader, seconds from making the reader to holding its first batch (the
fastest of --repeat tries; one process, warm page cache; imports not
timed), for:

  fresh            a new reader at the start of epoch 0
  resumed          a new reader given the state saved after --at of the
                   epoch's batches (load_state_dict): it decodes nothing
                   before that batch
  skipped          a new reader that reads and drops those batches first,
                   as a reader without a saved position has to

Readers: iter_numpy_batches; torch_dataset under torchdata's
StatefulDataLoader with 0 and 2 workers (with workers, the time includes
starting them). Everything shuffled with seed 0.
"""

import argparse
import itertools
import time
import warnings

from sftbeam.pipeline import readers


def numpy_reader(output_dir, _workers):
  return readers.iter_numpy_batches(output_dir, shuffle=True, seed=0)


def torch_reader(output_dir, workers):
  # pylint: disable=import-outside-toplevel
  from torchdata.stateful_dataloader import StatefulDataLoader
  return StatefulDataLoader(
      readers.torch_dataset(output_dir, shuffle=True, seed=0),
      batch_size=None, num_workers=workers)


READERS = {'numpy': (numpy_reader, 0), 'torch, 0 workers': (torch_reader, 0),
           'torch, 2 workers': (torch_reader, 2)}


def saved_state(make, output_dir, workers, batches):
  """The reader's state after `batches` batches."""
  reader = make(output_dir, workers)
  for _ in itertools.islice(reader, batches):
    pass
  return reader.state_dict()


def first_batch_seconds(make, output_dir, workers, state=None, skip=0):
  """Seconds from making a reader (loading `state`, dropping `skip`
  batches) to its first batch."""
  started = time.perf_counter()
  reader = make(output_dir, workers)
  if state is not None:
    reader.load_state_dict(state)
  batches = iter(reader)
  for _ in range(skip + 1):
    next(batches)
  seconds = time.perf_counter() - started
  del batches, reader  # stops DataLoader workers before the next try
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('output_dir')
  parser.add_argument('--at', type=float, default=0.9,
                      help='where in the epoch the state is saved')
  parser.add_argument('--repeat', type=int, default=5)
  args = parser.parse_args()
  warnings.filterwarnings('ignore', message="'set_vital' is deprecated")
  shards = readers.verified_shards(args.output_dir)
  total = sum(shard.records for shard in shards)
  at = int(total * args.at)
  print(f'{args.output_dir}: {total} batches, '
        f'{sum(shard.bytes for shard in shards) / 1e6:.1f} MB in '
        f'{len(shards)} shards; resuming after batch {at}')
  print(f'{"reader":>18} {"fresh s":>8} {"resumed s":>10} {"skipped s":>10} '
        f'{"resumed/fresh":>14}')
  for name, (make, workers) in READERS.items():
    state = saved_state(make, args.output_dir, workers, at)
    tries = {'fresh': {}, 'resumed': {'state': state}, 'skipped': {'skip': at}}
    best = {how: min(first_batch_seconds(make, args.output_dir, workers,
                                         **options)
                     for _ in range(args.repeat))
            for how, options in tries.items()}
    print(f'{name:>18} {best["fresh"]:8.3f} {best["resumed"]:10.3f} '
          f'{best["skipped"]:10.3f} {best["resumed"] / best["fresh"]:14.2f}')


if __name__ == '__main__':
  main()
