"""Packing (transforms/pack.py): properties against plain references, worked
examples, errors, and the real tokenizer on GSM8K."""

import collections
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import shared_data
from sftbeam import tokenize_prompt_and_output
from sftbeam.transforms.pack import (best_fit_decreasing, packed_arrays,
                                     rows_per_batch, cu_seqlens)
from sftbeam.transforms.records import TokenChunk
from sftbeam.transforms.stats import packing_stats, packing_summary

EXAMPLES = settings(max_examples=200, deadline=None)
PAD = -1  # no token has this id, so padding is told apart from tokens
F, T = False, True


# ------------------------------------------------------- plain references

def reference_best_fit_decreasing(lengths, capacity):
  """Best fit decreasing as the brief words it, scanning every row."""
  order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
  rows, rooms = [], []
  for index in order:
    fitting = [row for row, room in enumerate(rooms) if room >= lengths[index]]
    if fitting:
      row = min(fitting, key=lambda row: (rooms[row], row))
    else:
      row = len(rows)
      rows.append([])
      rooms.append(capacity)
    rows[row].append(index)
    rooms[row] -= lengths[index]
  return rows


def reference_varlen(segment_ids):
  """cu_seqlens and max_seqlen walked row by row, segment by segment."""
  rows, pack_length = segment_ids.shape
  lengths = []
  for row in segment_ids.tolist():
    segments = [s for s in row if s]
    for segment in range(1, max(segments, default=0) + 1):
      lengths.append(row.count(segment))
    if row.count(0):
      lengths.append(row.count(0))
  boundaries = [0]
  for length in lengths:
    boundaries.append(boundaries[-1] + length)
  return boundaries, max(lengths)


# ------------------------------------------------------------ properties

@st.composite
def packing_inputs(draw):
  """(sequences, flags, pack_length): every sequence 2..pack_length+1 tokens,
  short ones often, so that rows hold several."""
  pack_length = draw(st.integers(1, 48))
  count = draw(st.integers(1, 40))
  sizes = st.integers(2, min(6, pack_length + 1)) | st.integers(
      2, pack_length + 1)
  sequences, flags = [], []
  for _ in range(count):
    size = draw(sizes)
    sequences.append(draw(st.lists(st.integers(0, 151_000), min_size=size,
                                   max_size=size)))
    flags.append(draw(st.lists(st.booleans(), min_size=size, max_size=size)))
  return sequences, flags, pack_length


def chunk_of(sequences, flags):
  ids = [f'ex{i}' for i in range(len(sequences))]
  return TokenChunk.from_sequences(ids, sequences, flags)


@EXAMPLES
@given(lengths=st.lists(st.integers(1, 64), max_size=80),
       extra=st.integers(0, 64))
def test_best_fit_decreasing_matches_reference(lengths, extra):
  capacity = max(lengths, default=1) + extra
  rows = best_fit_decreasing(np.array(lengths, dtype=np.int64), capacity)
  assert [row.tolist() for row in rows] == reference_best_fit_decreasing(
      lengths, capacity)
  assert all(row.dtype == np.int64 for row in rows)
  assert sorted(i for row in rows for i in row.tolist()) == list(
      range(len(lengths)))
  assert all(sum(lengths[i] for i in row) <= capacity for row in rows)


@EXAMPLES
@given(inputs=packing_inputs())
def test_packed_examples_are_spec_rows(inputs):
  sequences, flags, pack_length = inputs
  chunk = chunk_of(sequences, flags)
  rows = best_fit_decreasing(chunk.lengths - 1, pack_length)
  arrays = packed_arrays(chunk, rows, pack_length, PAD)

  shape = (len(rows), pack_length)
  for name, dtype in (('input_ids', np.int64), ('labels', np.int64),
                      ('response_mask', np.bool_), ('segment_ids', np.int64),
                      ('positions', np.int64)):
    assert arrays[name].shape == shape, name
    assert arrays[name].dtype == dtype, name

  # Every example once, rows in order, segments in order within a row.
  order = [i for row in rows for i in row.tolist()]
  assert arrays['example_ids'] == [chunk.example_ids[i] for i in order]
  assert collections.Counter(arrays['example_ids']) == collections.Counter(
      chunk.example_ids)
  assert arrays['examples_per_row'].tolist() == [len(row) for row in rows]
  assert arrays['prompt_lengths'].tolist() == [
      flags[i].index(True) if True in flags[i] else len(flags[i])
      for i in order]
  assert (arrays['prompt_lengths'] + arrays['output_lengths']).tolist() == [
      len(sequences[i]) for i in order]

  for b, row in enumerate(rows):
    segment_ids = arrays['segment_ids'][b]
    used = 0
    for segment, index in enumerate(row.tolist(), start=1):
      seq, sup = sequences[index], flags[index]
      cells = segment_ids == segment
      # One contiguous run, right after the previous example.
      assert np.flatnonzero(cells).tolist() == list(
          range(used, used + len(seq) - 1))
      assert arrays['input_ids'][b, cells].tolist() == seq[:-1]
      assert arrays['labels'][b, cells].tolist() == seq[1:]
      assert arrays['response_mask'][b, cells].tolist() == sup[1:]
      assert arrays['positions'][b, cells].tolist() == list(
          range(len(seq) - 1))
      used += len(seq) - 1
    assert used <= pack_length
    # The rest of the row is padding.
    tail = np.s_[b, used:]
    assert (arrays['segment_ids'][tail] == 0).all()
    assert (arrays['input_ids'][tail] == PAD).all()
    assert (arrays['labels'][tail] == PAD).all()
    assert not arrays['response_mask'][tail].any()
    assert (arrays['positions'][tail] == 0).all()

  bounds, max_seqlen = cu_seqlens(arrays['segment_ids'])
  expected_cu, expected_max = reference_varlen(arrays['segment_ids'])
  assert bounds.dtype == np.int32
  assert bounds.tolist() == expected_cu
  assert bounds[-1] == len(rows) * pack_length
  assert max_seqlen == expected_max

  stats = packing_stats(arrays)
  real = int((chunk.lengths - 1).sum())
  assert stats['real_tokens'] == real
  assert stats['stored_tokens'] == len(rows) * pack_length
  assert stats['records_written'] == len(sequences)
  assert sum(count for name, count in stats.items()
             if name.startswith('examples_per_row/')) == len(rows)
  summary = packing_summary(stats)
  assert summary['packing_efficiency'] == real / (len(rows) * pack_length)
  assert summary['examples_per_row_max'] == max(map(len, rows))


@settings(max_examples=50, deadline=None)
@given(inputs=packing_inputs())
def test_packing_is_deterministic(inputs):
  sequences, flags, pack_length = inputs
  results = []
  for _ in range(2):
    chunk = chunk_of(sequences, flags)  # a fresh chunk each time
    rows = best_fit_decreasing(chunk.lengths - 1, pack_length)
    results.append(packed_arrays(chunk, rows, pack_length, PAD))
  first, second = results
  assert first.keys() == second.keys()
  for name in first:
    assert np.array_equal(first[name], second[name]), name


@EXAMPLES
@given(width=st.integers(1, 5000), batch_tokens=st.integers(1, 100_000))
def test_rows_per_batch_budget(width, batch_tokens):
  rows = rows_per_batch(width, batch_tokens)
  assert rows >= 1
  assert rows * width <= batch_tokens or rows == 1
  assert (rows + 1) * width > batch_tokens  # no room for one more row


# ------------------------------------------------------- worked examples

def test_best_fit_decreasing_worked_example():
  # Longest first: 9 opens row 0 (room 1), 7 row 1 (room 3), 5 row 2
  # (room 5); 3 fits row 1 exactly; the 2s go to row 2 (room 5, then 3),
  # the least room that fits; 1 ties rows 0 and 2 (room 1): the earliest.
  rows = best_fit_decreasing(np.array([5, 3, 7, 2, 2, 9, 1]), 10)
  assert [row.tolist() for row in rows] == [[5, 6], [2, 1], [0, 3, 4]]


def test_packed_arrays_worked_example():
  chunk = TokenChunk.from_sequences(
      ['a', 'b', 'c'], [[1, 2, 3, 4], [5, 6, 7], [8, 9]],
      [[F, F, T, T], [F, T, T], [F, T]])
  arrays = packed_arrays(chunk, [[0, 2], [1]], pack_length=6, pad_id=0)
  assert arrays['input_ids'].tolist() == [[1, 2, 3, 8, 0, 0],
                                          [5, 6, 0, 0, 0, 0]]
  assert arrays['labels'].tolist() == [[2, 3, 4, 9, 0, 0],
                                       [6, 7, 0, 0, 0, 0]]
  assert arrays['response_mask'].tolist() == [[F, T, T, T, F, F],
                                              [T, T, F, F, F, F]]
  assert arrays['segment_ids'].tolist() == [[1, 1, 1, 2, 0, 0],
                                            [1, 1, 0, 0, 0, 0]]
  assert arrays['positions'].tolist() == [[0, 1, 2, 0, 0, 0],
                                          [0, 1, 0, 0, 0, 0]]
  assert arrays['examples_per_row'].tolist() == [2, 1]
  assert arrays['example_ids'] == ['a', 'c', 'b']
  assert arrays['prompt_lengths'].tolist() == [2, 1, 1]
  assert arrays['output_lengths'].tolist() == [2, 1, 2]
  bounds, max_seqlen = cu_seqlens(arrays['segment_ids'])
  assert bounds.tolist() == [0, 3, 4, 6, 8, 12]
  assert max_seqlen == 4


def test_varlen_full_rows_of_one_example_stay_apart():
  bounds, max_seqlen = cu_seqlens(np.ones((3, 4), np.int64))
  assert bounds.tolist() == [0, 4, 8, 12]
  assert max_seqlen == 4


def test_cu_seqlens_without_padding_tails():
  bounds, longest = cu_seqlens(np.array([[1, 2, 2], [1, 1, 2]]))
  np.testing.assert_array_equal(bounds, [0, 1, 3, 5, 6])
  assert longest == 2


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize('lengths, capacity, message', [
    ([3, 11, 2], 10, 'example 1 has length 11, over capacity 10'),
    ([3, 0], 10, 'example 1 has length 0, under 1'),
    ([[1, 2]], 10, '1-D array of integers'),
    ([1.5], 10, '1-D array of integers'),
    ([1], 0, 'capacity must be a positive integer'),
])
def test_best_fit_decreasing_errors(lengths, capacity, message):
  with pytest.raises(ValueError, match=message):
    best_fit_decreasing(np.array(lengths), capacity)


def test_best_fit_decreasing_of_nothing():
  assert best_fit_decreasing(np.array([], np.int64), 8) == []


def test_packed_arrays_errors():
  chunk = TokenChunk.from_sequences(['a', 'b', 'c'],
                                    [[1, 2, 3], [4, 5, 6, 7], [8]],
                                    [[F, T, T], [F, F, T, T], [F]])
  with pytest.raises(ValueError, match='row 0 holds 5 tokens, more than '
                     'pack_length 4'):
    packed_arrays(chunk, [[0, 1]], 4, 0)
  with pytest.raises(ValueError, match="example 'b' has length 3, over "
                     'pack_length 2'):
    packed_arrays(chunk, [[1]], 2, 0)
  with pytest.raises(ValueError, match="example 'c' has length 0, under 1"):
    packed_arrays(chunk, [[2]], 4, 0)
  with pytest.raises(ValueError, match='row 1 is empty'):
    packed_arrays(chunk, [[0], []], 4, 0)
  with pytest.raises(ValueError, match='at least one row'):
    packed_arrays(chunk, [], 4, 0)


@pytest.mark.parametrize('width, batch_tokens', [(0, 10), (8, 0), (8, 2.5)])
def test_rows_per_batch_errors(width, batch_tokens):
  with pytest.raises(ValueError, match='must be a positive integer'):
    rows_per_batch(width, batch_tokens)


def test_cu_seqlens_errors():
  with pytest.raises(ValueError, match=r'non-empty \[B, L\] array'):
    cu_seqlens(np.zeros(8, np.int64))
  with pytest.raises(ValueError, match=r'non-empty \[B, L\] array'):
    cu_seqlens(np.zeros((0, 8), np.int64))


def test_importable_without_beam():
  code = ('import sys; import sftbeam.transforms.pack; '
          'print("apache_beam" in sys.modules)')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, check=True)
  assert result.stdout.strip() == 'False'


# ------------------------------------------- the real tokenizer, real data

def test_gsm8k_packed_rows_match_the_spec(qwen):
  with open(shared_data('gsm8k_train.jsonl'), encoding='utf-8') as handle:
    records = [json.loads(line) for line in handle][:1000]
  prompts = [record['prompt'] for record in records]
  outputs = [record['output'] for record in records]
  prompt_ids = qwen(prompts)['input_ids']
  output_ids = qwen(outputs, add_special_tokens=False)['input_ids']
  chunk = TokenChunk.from_sequences(
      [f'gsm8k-{i}' for i in range(len(records))],
      [p + o for p, o in zip(prompt_ids, output_ids)],
      [[F] * len(p) + [T] * len(o) for p, o in zip(prompt_ids, output_ids)])
  pack_length = 2048
  rows = best_fit_decreasing(chunk.lengths - 1, pack_length)
  arrays = packed_arrays(chunk, rows, pack_length, qwen.pad_token_id)

  # Each example, cut out by its segment id, is the spec function's row.
  spec = tokenize_prompt_and_output(prompts, outputs, qwen)
  example = 0
  for b, count in enumerate(arrays['examples_per_row'].tolist()):
    for segment in range(1, count + 1):
      index = int(arrays['example_ids'][example].split('-')[1])
      cells = arrays['segment_ids'][b] == segment
      width = int(cells.sum())
      assert width == len(prompt_ids[index]) + len(output_ids[index]) - 1
      for name in ('input_ids', 'labels', 'response_mask'):
        assert np.array_equal(arrays[name][b, cells],
                              spec[name][index, :width]), (index, name)
      example += 1
  assert sorted(arrays['example_ids']) == sorted(chunk.example_ids)

  summary = packing_summary(packing_stats(arrays))
  # GSM8K rows are short (mean L about 160): one window of 1000 packs
  # them almost perfectly.
  assert summary['packing_efficiency'] > 0.99
  assert summary['examples_per_row_mean'] > 10
  bounds, max_seqlen = cu_seqlens(arrays['segment_ids'])
  assert len(bounds) - 1 == len(records) + int(
      (arrays['segment_ids'][:, -1] == 0).sum())
  assert max_seqlen <= pack_length
