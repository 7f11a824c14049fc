"""Packing: whole examples laid end to end in fixed-length rows.

This module owns the packed layout's arithmetic, apart from Beam: which
examples share a row (`best_fit_decreasing`), the arrays of a packed batch
(`packed_arrays`), the boundaries variable-length attention needs
(`cu_seqlens`), and the
rows of a token-budget batch (`rows_per_batch`). It imports only numpy (and
the `TokenChunk` it reads), so readers can use it without Beam.

An example whose token sequence is `seq` and supervised flags `sup` (see
`TokenChunk`) contributes its spec row unpadded: `input_ids = seq[:-1]`,
`labels = seq[1:]`, `response_mask = sup[1:]`, `L = len(seq) - 1` positions.
A row holds whole examples, never split, then the pad id up to
`pack_length`; no label crosses from one example into the next.
"""

import bisect
import heapq
from typing import List, Sequence, Tuple

import numpy as np

from sftbeam.transforms.records import TokenChunk

# Records packed together: the smallest window tried with
# benchmarks/packing_efficiency.py that packs to 0.98 of the stored tokens at
# both 2048 and 4096 tokens a row; larger windows gain little for more memory
# and latency (docs/packing.md has the measurements).
DEFAULT_PACK_WINDOW = 1000


def _check_lengths(lengths, capacity: int, capacity_name='capacity',
                   example_name=lambda index: f'example {index}'
                   ) -> np.ndarray:
  """`lengths` as int64, each 1..capacity, else a ValueError naming the
  first example out of range (`example_name(index)`)."""
  if not isinstance(capacity, (int, np.integer)) or capacity < 1:
    raise ValueError(
        f'{capacity_name} must be a positive integer, not {capacity!r}')
  lengths = np.asarray(lengths)
  if lengths.ndim != 1 or not (lengths.size == 0 or
                               np.issubdtype(lengths.dtype, np.integer)):
    raise ValueError('lengths must be a 1-D array of integers, not '
                     f'{lengths.dtype} of shape {lengths.shape}')
  lengths = lengths.astype(np.int64)
  for bad, what in ((lengths > capacity, f'over {capacity_name} {capacity}'),
                    (lengths < 1, 'under 1 (an example needs a label)')):
    if bad.any():
      index = int(np.flatnonzero(bad)[0])
      raise ValueError(f'{example_name(index)} has length '
                       f'{int(lengths[index])}, {what}')
  return lengths


def best_fit_decreasing(lengths, capacity: int) -> List[np.ndarray]:
  """Packs items of `lengths` into rows of `capacity`, best fit decreasing.

  Takes int lengths (each 1..capacity). Gives one int64 array per row, in
  the order rows were opened, holding item indices in segment order. Items
  go longest first (ties: lower index first); each into the open row with
  the least room that still fits it (ties: the earliest row), else into a
  new row. Deterministic, O(n log n).
  """
  lengths = _check_lengths(lengths, capacity)
  order = np.argsort(-lengths, kind='stable')
  rows = []
  # Open rows by room: the distinct rooms, sorted, and for each room a heap
  # of its rows, so the best fit is one bisect and the earliest row one pop.
  # At most `capacity` distinct rooms, whatever the number of rows.
  rooms = []
  rows_by_room = {}
  for index, length in zip(order.tolist(), lengths[order].tolist()):
    at = bisect.bisect_left(rooms, length)
    if at == len(rooms):
      row, room = len(rows), capacity
      rows.append([])
    else:
      room = rooms[at]
      row = heapq.heappop(rows_by_room[room])
      if not rows_by_room[room]:
        del rooms[at], rows_by_room[room]
    rows[row].append(index)
    room -= length
    if room == 0:
      continue  # full: no item fits any more
    if room in rows_by_room:
      heapq.heappush(rows_by_room[room], row)
    else:
      bisect.insort(rooms, room)
      rows_by_room[room] = [row]
  return [np.array(row, dtype=np.int64) for row in rows]


def packed_arrays(chunk: TokenChunk, rows: Sequence, pack_length: int,
                  pad_id: int) -> dict:
  """The arrays of one packed batch.

  Takes the records in `chunk`, `rows` (one sequence of record indices per
  row, in segment order, as `best_fit_decreasing` gives), the row length
  and the pad id. Gives, for B rows of L = `pack_length` positions:
    input_ids, labels   int64 [B, L]; the pad id after a row's examples
    response_mask       bool [B, L]; False on padding
    segment_ids         int64 [B, L]; 1..k for a row's k examples, 0 on padding
    positions           int64 [B, L]; 0..L_i-1 within each example, 0 on padding
    examples_per_row    int64 [B]
    example_ids         list of str, rows in order, segments in order
    prompt_lengths, output_lengths   int64, one per example, in that order
  """
  if not rows:
    raise ValueError('a packed batch needs at least one row')
  examples_per_row = np.fromiter(map(len, rows), np.int64, len(rows))
  if not examples_per_row.all():
    raise ValueError(f'row {int(np.argmin(examples_per_row))} is empty')
  examples = np.concatenate(rows).astype(np.int64)
  example_lengths = _check_lengths(
      chunk.lengths[examples] - 1, pack_length, 'pack_length',
      lambda index: f'example {chunk.example_ids[examples[index]]!r}')
  row_starts = np.cumsum(examples_per_row) - examples_per_row
  used = np.add.reduceat(example_lengths, row_starts)
  if (used > pack_length).any():
    row = int(np.argmax(used > pack_length))
    raise ValueError(f'row {row} holds {int(used[row])} tokens, more than '
                     f'pack_length {pack_length}')

  # Each example's tokens but its last are its inputs; one further on, its
  # labels and their flags.
  tokens = chunk.token_rows(examples)
  inputs = np.delete(tokens, np.cumsum(example_lengths + 1) - 1)
  # Examples lie end to end from each row's start, so in row-major order
  # the filled cells are columns 0..used-1 of every row, in token order.
  filled = np.arange(pack_length) < used[:, None]
  landed = np.cumsum(example_lengths) - example_lengths
  segments = np.arange(len(examples)) - np.repeat(row_starts,
                                                  examples_per_row) + 1
  shape = (len(rows), pack_length)
  arrays = {
      'input_ids': np.full(shape, pad_id, dtype=np.int64),
      'labels': np.full(shape, pad_id, dtype=np.int64),
      'response_mask': np.zeros(shape, dtype=np.bool_),
      'segment_ids': np.zeros(shape, dtype=np.int64),
      'positions': np.zeros(shape, dtype=np.int64),
  }
  arrays['input_ids'][filled] = chunk.ids[inputs]
  arrays['labels'][filled] = chunk.ids[inputs + 1]
  arrays['response_mask'][filled] = chunk.supervised[inputs + 1]
  arrays['segment_ids'][filled] = np.repeat(segments, example_lengths)
  arrays['positions'][filled] = (np.arange(len(inputs), dtype=np.int64) -
                                 np.repeat(landed, example_lengths))
  arrays['examples_per_row'] = examples_per_row
  arrays['example_ids'] = [chunk.example_ids[i] for i in examples.tolist()]
  arrays['prompt_lengths'] = chunk.prompt_lengths[examples]
  arrays['output_lengths'] = chunk.output_lengths[examples]
  return arrays


def rows_per_batch(width: int, batch_tokens: int) -> int:
  """Rows of `width` positions in a batch of at most `batch_tokens` tokens
  (one row when a single row is over the budget)."""
  for name, value in (('width', width), ('batch_tokens', batch_tokens)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name} must be a positive integer, not {value!r}')
  return max(1, batch_tokens // width)


def cu_seqlens(segment_ids: np.ndarray) -> Tuple[np.ndarray, int]:
  """`cu_seqlens` and `max_seqlen` of a packed batch for variable-length
  attention (FlashAttention's `flash_attn_varlen_func` convention).

  Takes `segment_ids` [B, L]. Over the flattened B x L tokens, each example
  is one sequence and each row's padding tail (when it has one) one more,
  so the boundaries tile 0..B*L. Gives `cu_seqlens`, int32 [sequences + 1],
  0 first and B*L last, and `max_seqlen`, the longest sequence (int).
  """
  segment_ids = np.asarray(segment_ids)
  if segment_ids.ndim != 2 or not segment_ids.size:
    raise ValueError('segment_ids must be a non-empty [B, L] array, not '
                     f'shape {segment_ids.shape}')
  rows, pack_length = segment_ids.shape
  if segment_ids.size > np.iinfo(np.int32).max:
    raise ValueError(f'{rows} x {pack_length} tokens overflow int32 '
                     'cu_seqlens')
  flat = segment_ids.reshape(-1)
  starts = np.empty(flat.size, dtype=np.bool_)
  starts[1:] = flat[1:] != flat[:-1]
  # Every row starts a sequence, even when its first segment id equals the
  # previous row's last (a row that one example fills, then another row).
  starts[::pack_length] = True
  cu_seqlens = np.append(np.flatnonzero(starts), flat.size).astype(np.int32)
  return cu_seqlens, int(np.diff(cu_seqlens).max())
