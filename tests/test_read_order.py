"""The readers' order and the resumable position in it (pipeline/read_order.py),
on shards that are only listings: a record is the string 'shard:index', so
every case runs in microseconds. The readers on real output, in new
processes, are in test_resume.py."""

import json

import numpy as np
import pytest

from sftbeam.pipeline.read_order import (Batches, EpochPart,
                                         IncompatibleState, Order,
                                         part_slices, shard_order)
from sftbeam.pipeline.readers import Shard

# Shard sizes with an empty shard and a one-record shard among them.
SIZES = [7, 10, 0, 9, 1, 11]


def listing(sizes=SIZES, tag=''):
  return [Shard(f'batches-{index:05d}{tag}.tfrecord', '', size, 0, f'{index}')
          for index, size in enumerate(sizes)]


def read_slice(shard, first, stop):
  return (f'{shard.name}:{index}' for index in range(first, stop))


class Recorder:
  """read_slice and decode that note what they were asked for."""

  def __init__(self):
    self.slices, self.read, self.decoded = [], [], []

  def read_slice(self, shard, first, stop):
    self.slices.append((shard.name, first, stop))
    for record in read_slice(shard, first, stop):
      self.read.append(record)
      yield record

  def decode(self, record):
    self.decoded.append(record)
    return record


def streaming_shuffle(records, buffer_size, rng):
  """The shuffle buffer as a stream of records (what the readers did before
  positions were computed ahead): the reference for the order."""
  buffer = []
  for record in records:
    if len(buffer) < buffer_size:
      buffer.append(record)
      continue
    slot = rng.integers(buffer_size)
    yield buffer[slot]
    buffer[slot] = record
  rng.shuffle(buffer)
  yield from buffer


def whole_epoch(order, epoch, sizes=SIZES):
  return list(Batches(listing(sizes), order, epoch, read_slice))


@pytest.mark.parametrize('buffer_size', [1, 4, 256])
@pytest.mark.parametrize('part, parts', [(0, 1), (1, 3)])
def test_the_order_is_a_shuffle_buffer_over_the_parts_slices(buffer_size,
                                                              part, parts):
  order = Order(True, 5, buffer_size, part, parts)
  shards = shard_order(listing(), True, 5, 2)
  in_file_order = [record for shard, first, stop in
                   part_slices(shards, part, parts)
                   for record in read_slice(shard, first, stop)]
  expected = list(streaming_shuffle(
      in_file_order, buffer_size, np.random.default_rng([5, 2, part, parts])))
  assert whole_epoch(order, 2) == expected
  assert sorted(expected) == sorted(in_file_order)


@pytest.mark.parametrize('shuffle', [False, True])
def test_parts_read_every_batch_once(shuffle):
  every = whole_epoch(Order(shuffle, 1), 0)
  assert len(every) == sum(SIZES) == len(set(every))
  for parts in (2, 3, 4):
    together = [record for part in range(parts)
                for record in whole_epoch(Order(shuffle, 1, 4, part, parts), 0)]
    assert sorted(together) == sorted(every)


@pytest.mark.parametrize('order', [Order(), Order(True, 3, 4),
                                   Order(True, 3, 4, 1, 2),
                                   Order(True, 0, 256, 2, 3)])
def test_from_every_position_the_rest_of_the_epoch(order):
  epoch = whole_epoch(order, 1)
  for given in range(len(epoch) + 1):
    batches = Batches(listing(), order, 1, read_slice)
    for _ in range(given):
      next(batches)
    state = json.loads(json.dumps(batches.state_dict()))
    assert state['epoch'] == 1 and state['batches'] == given
    resumed = Batches(listing(), order, 0, read_slice)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1 and list(resumed) == epoch[given:]


def test_a_resumed_reader_decodes_nothing_given_before():
  order = Order(True, 3, 4)
  epoch = whole_epoch(order, 0)
  recorder = Recorder()
  resumed = Batches(listing(), order, 0, recorder.read_slice, recorder.decode)
  resumed.load_state_dict(
      {**Batches(listing(), order, 0, read_slice).state_dict(), 'batches': 30})
  assert list(resumed) == epoch[30:] == recorder.decoded


def test_a_resumed_reader_opens_no_shard_it_has_finished():
  """Without shuffle, reading starts at the saved batch; with a shuffle
  buffer, at the earliest batch the buffer still held."""
  shards = listing()
  recorder = Recorder()
  resumed = Batches(shards, Order(), 0, recorder.read_slice)
  resumed.load_state_dict({**resumed.state_dict(), 'batches': 20})
  list(resumed)
  # 20 = 7 + 10 + 0 + 3: the fourth shard from its record 3, then the rest.
  assert recorder.slices == [(shards[3].name, 3, 9), (shards[4].name, 0, 1),
                             (shards[5].name, 0, 11)]

  recorder = Recorder()
  order = Order(True, 3, 4)
  resumed = Batches(shards, order, 0, recorder.read_slice)
  resumed.load_state_dict({**resumed.state_dict(), 'batches': 30})
  list(resumed)
  part = EpochPart(shards, order, 0)
  earliest = {}  # slice number -> its earliest record still to give
  for position in part.positions[30:]:
    number = int(np.searchsorted(part.starts, position, side='right')) - 1
    earliest[number] = min(position, earliest.get(number, position))
  opened = [(part.slices[number][0].name,
             part.slices[number][1] + position - part.starts[number],
             part.slices[number][2])
            for number, position in earliest.items()]
  # Each slice holding a batch still to give, once, from its earliest such
  # batch; first the one holding the next batch.
  assert recorder.slices == opened
  assert len(opened) <= len(part.slices) - 2  # two finished, not opened


@pytest.mark.parametrize('given', [0, 25])
def test_a_reader_holds_no_more_batches_than_the_shuffle_buffer(given):
  order = Order(True, 3, 4)
  recorder = Recorder()
  reader = Batches(listing(), order, 0, recorder.read_slice, recorder.decode)
  reader.load_state_dict({**reader.state_dict(), 'batches': given})
  still_to_give = set(whole_epoch(order, 0)[given:])
  for _ in reader:
    held = (set(recorder.read) & still_to_give) - set(recorder.decoded)
    assert len(held) <= order.shuffle_buffer


def test_a_state_after_the_last_batch_gives_nothing_more():
  """As the uninterrupted iterator, which has nothing more to give."""
  order = Order(True, 3)
  batches = Batches(listing(), order, 4, read_slice)
  assert len(list(batches)) == sum(SIZES)
  resumed = Batches(listing(), order, 4, read_slice)
  resumed.load_state_dict(batches.state_dict())
  assert list(resumed) == []


@pytest.mark.parametrize('change, message', [
    (dict(order=Order(True, 4)), 'shuffle seed 3, this reader has 4'),
    (dict(order=Order(True, 3, 64)), 'shuffle buffer 256, this reader has 64'),
    (dict(order=Order(False, 3)), "order 'shuffled', this reader has 'listed'"),
    (dict(order=Order(True, 3, 256, 0, 2)), 'number of parts'),
    (dict(tag='-other'), 'run'),
    (dict(sizes=SIZES[:-1]), 'run'),
])
def test_a_state_of_another_run_or_order_is_refused(change, message):
  saved = Batches(listing(), Order(True, 3), 0, read_slice)
  next(saved)
  other = Batches(listing(change.get('sizes', SIZES), change.get('tag', '')),
                  change.get('order', Order(True, 3)), 0, read_slice)
  with pytest.raises(IncompatibleState, match=message):
    other.load_state_dict(saved.state_dict())


def test_without_shuffle_the_seed_does_not_matter():
  saved = Batches(listing(), Order(False, 3), 0, read_slice)
  next(saved)
  other = Batches(listing(), Order(False, 4), 0, read_slice)
  other.load_state_dict(saved.state_dict())
  assert next(other) == whole_epoch(Order(), 0)[1]


@pytest.mark.parametrize('state, message', [
    (None, 'not an sftbeam reader state'),
    ({'epoch': 0, 'batches': 3}, 'not an sftbeam reader state'),
    ('batches=3', 'not an sftbeam reader state'),
])
def test_what_is_not_a_state_is_refused(state, message):
  with pytest.raises(IncompatibleState, match=message):
    Batches(listing(), Order(), 0, read_slice).load_state_dict(state)


@pytest.mark.parametrize('batches, message', [
    (-1, "no valid 'batches'"), ('3', "no valid 'batches'"),
    (sum(SIZES) + 1, f'this part of it has {sum(SIZES)}')])
def test_a_position_outside_the_epoch_is_refused(batches, message):
  reader = Batches(listing(), Order(), 0, read_slice)
  next(reader)
  with pytest.raises(IncompatibleState, match=message):
    reader.load_state_dict({**reader.state_dict(), 'batches': batches,
                            'epoch': 1})
  # Refused, the reader is where it was.
  assert reader.epoch == 0 and next(reader) == whole_epoch(Order(), 0)[1]
