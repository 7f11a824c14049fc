"""The order in which the readers give a finished run's batches, and where a
reader stands in it: one implementation for the numpy, PyTorch and tf.data
readers (`pipeline/readers.py` reads and verifies the shards).

An epoch's batch sequence is the shards in listed order (with `shuffle`, a
permutation fixed by (seed, epoch)) and their records in file order. Part
`part` of `parts` reads one contiguous, near-equal slice of that sequence
(parts are DataLoader workers and distributed ranks: together they read
every batch exactly once) and, with `shuffle`, gives it through a shuffle
buffer seeded by (seed, epoch, part, parts).

That order depends on nothing but those numbers and the run's shards, so a
position in it is two numbers: the epoch and the batches given so far.
`Batches` gives one part of one epoch, says where it is (`state_dict()`, a
dict of numbers and strings) and continues from a saved position
(`load_state_dict()`) without decoding what was given before it: it opens
only the shards that still hold a batch to give, the one holding its next
batch first, each at its first such batch, and keeps aside only records
that the shuffle buffer held too.
"""

import collections
import hashlib
import json
from typing import Callable, Iterator, NamedTuple

import numpy as np

# Tells an sftbeam reader state from any other dict; bumped when the meaning
# of a state changes.
STATE_FORMAT = 'sftbeam-reader-1'


class IncompatibleState(ValueError):
  """A saved reader state that this reader cannot continue exactly."""


class Order(NamedTuple):
  """What fixes a reader's order, besides the run and the epoch."""
  shuffle: bool = False
  seed: int = 0
  shuffle_buffer: int = 256
  part: int = 0
  parts: int = 1


def shard_order(shards: list, shuffle: bool, seed: int, epoch: int) -> list:
  """The shards in listed order, or permuted by (seed, epoch)."""
  if not shuffle:
    return list(shards)
  rng = np.random.default_rng([seed, epoch])
  return [shards[i] for i in rng.permutation(len(shards))]


def part_slices(shards: list, part: int, parts: int):
  """(shard, first, stop) slices of the `part`-th of `parts` contiguous,
  near-equal parts of the batches of `shards` in that order."""
  total = sum(shard.records for shard in shards)
  low, high = total * part // parts, total * (part + 1) // parts
  offset = 0
  for shard in shards:
    first, stop = max(low - offset, 0), min(high - offset, shard.records)
    if first < stop:
      yield shard, first, stop
    offset += shard.records


def _shuffle_buffer_order(count: int, buffer_size: int, rng) -> list:
  """The order in which a shuffle buffer gives the records 0..count-1 that
  enter it in order: when full, a random slot's record leaves for each one
  that enters; at the end the rest leave in a random order."""
  buffer, order = [], []
  for index in range(count):
    if len(buffer) < buffer_size:
      buffer.append(index)
      continue
    slot = rng.integers(buffer_size)
    order.append(buffer[slot])
    buffer[slot] = index
  rng.shuffle(buffer)
  return order + buffer


class EpochPart:
  """One part of one epoch: the shard slices it reads, in reading order, and
  `positions`, the order it gives their batches in (indexes into the
  sequence of the slices' records)."""

  def __init__(self, shards: list, order: Order, epoch: int):
    shards = shard_order(shards, order.shuffle, order.seed, epoch)
    self.slices = list(part_slices(shards, order.part, order.parts))
    # starts[i]: the index of slice i's first record in the sequence.
    self.starts = np.cumsum([0] + [stop - first
                                   for _, first, stop in self.slices])
    count = int(self.starts[-1])
    if order.shuffle:
      rng = np.random.default_rng([order.seed, epoch, order.part, order.parts])
      self.positions = _shuffle_buffer_order(count, order.shuffle_buffer, rng)
    else:
      self.positions = range(count)

  def records(self, read_slice: Callable, start: int = 0) -> Iterator[bytes]:
    """The records of positions[start:], in that order.

    `read_slice(shard, first, stop)` gives records first..stop-1 of a shard.
    A slice is opened when the first of its records still to give is due,
    at that record, and read on as its later ones are due; records read on
    the way are kept until their turn (the shuffle buffer held them too).
    So a resumed reader opens only the shards that hold batches still to
    give, the one holding its next batch first, and decodes nothing.
    """
    wanted = self.positions[start:]
    slice_of = dict(zip(wanted, (np.searchsorted(self.starts, wanted,
                                                 side='right') - 1).tolist()))
    left = collections.Counter(slice_of.values())
    first_wanted = {}  # per slice, its earliest record still to give
    for position, number in slice_of.items():
      first_wanted[number] = min(position, first_wanted.get(number, position))
    held, cursors = {}, {}
    for position in wanted:
      number = slice_of[position]
      if position not in held:
        if number not in cursors:
          cursors[number] = self._cursor(read_slice, number,
                                         first_wanted[number])
        for index, record in cursors[number]:
          if index in slice_of:
            held[index] = record
          if index == position:
            break
      left[number] -= 1
      if not left[number]:
        cursors.pop(number, None)  # closes the shard
      yield held.pop(position)

  def _cursor(self, read_slice: Callable, number: int, start: int):
    """(index, record) of slice `number`'s records from index `start` on."""
    shard, first, stop = self.slices[number]
    skip = start - int(self.starts[number])
    return enumerate(read_slice(shard, first + skip, stop), start)


def run_fingerprint(shards: list) -> str:
  """A short digest of the run's shards (names, batch counts, sha256):
  two directories with the same fingerprint give the same batches."""
  listing = json.dumps([[shard.name, shard.records, shard.sha256]
                        for shard in shards])
  return hashlib.sha256(listing.encode()).hexdigest()[:16]


def settings_state(run: str, order: Order) -> dict:
  """The keys of a state that must match for a reader to continue it."""
  return {'run': run, 'order': 'shuffled' if order.shuffle else 'listed',
          'seed': order.seed, 'shuffle_buffer': order.shuffle_buffer,
          'part': order.part, 'parts': order.parts}


def make_state(run: str, order: Order, epoch: int, given: int,
               **more) -> dict:
  """A reader's position as a dict of numbers and strings (JSON-safe)."""
  return {'format': STATE_FORMAT, **settings_state(run, order), **more,
          'epoch': epoch, 'batches': given}


# What each key of a state means, for the error that refuses it.
_MEANING = {'run': "run (its shards' checksums)", 'order': 'order',
            'seed': 'shuffle seed', 'shuffle_buffer': 'shuffle buffer',
            'parts': 'number of parts (ranks x DataLoader workers)',
            'part': 'part', 'world_size': 'world size', 'rank': 'rank',
            'num_workers': 'number of DataLoader workers'}


def check_state(state, expected: dict):
  """Refuses (IncompatibleState) a state that is not a reader state or
  differs from `expected` in a key that changes the batches."""
  if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
    raise IncompatibleState(
        f'not an sftbeam reader state (no "format": "{STATE_FORMAT}"): '
        'pass what state_dict() gave')
  for key, value in expected.items():
    if key in ('seed', 'shuffle_buffer') and expected['order'] != 'shuffled':
      continue  # without shuffle, neither changes the order
    if key not in state:
      raise IncompatibleState(
          f'the reader state has no {_MEANING[key]} ({key!r}): it was saved '
          'by another kind of reader')
    if state[key] != value:
      raise IncompatibleState(
          f'the reader state was saved with {_MEANING[key]} {state[key]!r}, '
          f'this reader has {value!r}: it would not give the batches that '
          'come next; resume with the same run and settings')
  for key in ('epoch', 'batches'):
    if type(state.get(key)) is not int or state[key] < 0:
      raise IncompatibleState(f'the reader state has no valid {key!r}: '
                              f'{state.get(key)!r}')


class Batches:
  """The batches of one part of one epoch of a run, in the readers' order;
  a position in it can be saved and continued.

  Iterating gives `decode(record)` for each batch. `shards` are verified
  shards (readers.verified_shards), `read_slice` reads a slice of one
  (readers.shard_records, which verifies it before its first record).
  """

  def __init__(self, shards: list, order: Order, epoch: int,
               read_slice: Callable, decode: Callable = None):
    self._shards = shards
    self._order = order
    self._read_slice = read_slice
    self._decode = decode
    self._run = run_fingerprint(shards)
    self._part = EpochPart(shards, order, epoch)
    self._epoch = epoch
    self._given = 0       # batches of the epoch given, or skipped by a state
    self._records = None  # opened at the first batch asked for

  @property
  def epoch(self) -> int:
    """The epoch this iterator gives."""
    return self._epoch

  def __len__(self) -> int:
    """Batches in this part of the epoch, given or not."""
    return len(self._part.positions)

  def __iter__(self):
    return self

  def __next__(self):
    if self._records is None:
      self._records = self._part.records(self._read_slice, self._given)
    record = next(self._records)
    self._given += 1
    return self._decode(record) if self._decode else record

  def state_dict(self, **more) -> dict:
    """Where this iterator is (with `more` keys), as a dict of numbers and
    strings. After the epoch's last batch it is the end of that epoch:
    loaded, it gives nothing more, as the uninterrupted iterator would."""
    return make_state(self._run, self._order, self._epoch, self._given,
                      **more)

  def load_state_dict(self, state: dict):
    """Continues where `state` says (its epoch, after its batches), if it
    was saved reading the same run with the same order (else
    IncompatibleState, and this iterator stays where it was). Nothing
    before that position is decoded."""
    check_state(state, settings_state(self._run, self._order))
    epoch, given = state['epoch'], state['batches']
    part = (self._part if epoch == self._epoch else
            EpochPart(self._shards, self._order, epoch))
    if given > len(part.positions):
      raise IncompatibleState(
          f'the reader state says {given} batches of epoch {epoch} were '
          f'given; this part of it has {len(part.positions)}')
    self._part, self._epoch, self._given = part, epoch, given
    self._records = None
