"""transforms/records.py: the values between steps."""

import json

import numpy as np
import pytest

from sftbeam.transforms.records import Rejected, TokenChunk
from token_chunks import pairs_chunk


def test_rejected_to_json_keeps_reason_and_source():
  rejected = Rejected('f.jsonl', 3, 'invalid_json', 'boom', '{')
  assert json.loads(rejected.to_json()) == {
      'source': 'f.jsonl', 'line_number': 3, 'reason': 'invalid_json',
      'message': 'boom', 'raw': '{'}


def _chunk(seed, records, longest=8):
  """A TokenChunk of `records` random records, each part at most `longest`
  tokens."""
  rng = np.random.default_rng(seed)
  prompts = [rng.integers(0, 1000, rng.integers(1, longest + 1))
             for _ in range(records)]
  outputs = [rng.integers(0, 1000, rng.integers(1, longest + 1))
             for _ in range(records)]
  return pairs_chunk(prompts, outputs, [f'{seed}-{i}' for i in range(records)])


def _as_lists(chunk):
  return [np.asarray(part).tolist() for part in chunk]


def test_gather_is_the_takes_concatenated():
  first, second = _chunk(0, 9), _chunk(1, 5)
  parts = [(first, [3, 0, 8]), (second, []), (second, [4, 1])]
  expected = TokenChunk.concat([chunk.take(indices) for chunk, indices
                                in parts if indices])
  assert _as_lists(TokenChunk.gather(parts)) == _as_lists(expected)


@pytest.mark.parametrize('longest', [8, 400])  # copied by a take, by slices
def test_gather_copies_each_record_whole(longest):
  first, second = _chunk(3, 12, longest), _chunk(4, 6, longest)
  parts = [(first, [11, 2, 5]), (second, np.arange(6)), (first, [0])]
  gathered = TokenChunk.gather(parts)
  records = [(chunk, index) for chunk, indices in parts for index in indices]
  assert gathered.example_ids == [chunk.example_ids[index]
                                  for chunk, index in records]
  for name in ('ids', 'supervised'):
    expected = [getattr(chunk, name)[chunk.offsets[index]:
                                     chunk.offsets[index + 1]].tolist()
                for chunk, index in records]
    values = getattr(gathered, name)
    assert [values[start:end].tolist() for start, end in zip(
        gathered.offsets[:-1], gathered.offsets[1:])] == expected
    assert values.dtype == getattr(first, name).dtype
    assert values.flags.writeable  # a new array, as a take gives
  assert gathered.prompt_lengths.tolist() == [
      chunk.prompt_lengths[index] for chunk, index in records]


def test_slice_is_a_take_of_consecutive_records():
  chunk = _chunk(2, 7)
  assert _as_lists(chunk.slice(2, 5)) == _as_lists(chunk.take([2, 3, 4]))
  assert len(chunk.slice(3, 3)) == 0
