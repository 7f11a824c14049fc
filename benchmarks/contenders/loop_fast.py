"""loop-fast: the loop's output from the fastest single-process loop we
could write, timed like the loop.

The same Examples as the loop, batch for batch: orjson per line; fastokens
`encode_batch_flat` on FAST_CHUNK (4096) records at a time, the next chunk
read and tokenized on a thread while this one's Examples are built and
written; each record's tokens put together by one numpy scatter per chunk
and varint-encoded once (numpy); a row of input_ids is its record's bytes
but the last token's plus the pad's bytes repeated, labels the same but the
first token's, the mask a 0/1 byte a position; Example headers from the
lengths, its parts joined once; tf.io.TFRecordWriter. fastokens loads while
TensorFlow imports. docs/performance.md has the measurements behind these
choices.

fastokens' segment cache stays off: the input repeats every 13,792 records,
a cache would measure the repetition, and sftbeam does not use one. This
process never imports sftbeam.
"""

import collections
import concurrent.futures
import itertools
import json
import os
import time
from typing import NamedTuple

import numpy as np

from contenders.common import SPEC_BATCH, fastokens_tokenizer

# Records per tokenizer call (a multiple of SPEC_BATCH, so its batches are
# the loop's).
FAST_CHUNK = 4096


def _varint(value: int) -> bytes:
  """A non-negative int as protobuf varint bytes."""
  out = bytearray()
  while value > 0x7f:
    out.append(value & 0x7f | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def varints(values):
  """The protobuf varints of `values` (ints in [0, 2**28)), concatenated,
  and each value's byte count.

  Each varint is built in a uint32 (7 bits a byte, the high bit set when a
  byte follows); one compaction then drops the unused bytes: the zero bytes
  after the first (a varint's later bytes are never zero).
  """
  values = np.asarray(values)
  if values.size and not 0 <= values.min() <= values.max() < 1 << 28:
    raise ValueError('varints() takes ints in [0, 2**28)')
  values = values.astype(np.uint32)
  words = values & 0x7f
  counts = np.ones(values.size, np.int64)
  for group in (1, 2, 3):
    follows = values >= 1 << (7 * group)
    counts += follows
    words |= follows.astype(np.uint32) << (8 * group - 1)
    words |= (values << group) & (0x7f << (8 * group))
  table = words.astype('<u4', copy=False).view(np.uint8).reshape(-1, 4)
  keep = table != 0
  keep[:, 0] = True
  return np.compress(keep.ravel(), table.ravel()).tobytes(), counts


def _starts(counts):
  """Where each of `counts` items starts in their concatenation, and (last)
  where it ends."""
  starts = np.zeros(len(counts) + 1, np.int64)
  np.cumsum(counts, out=starts[1:])
  return starts


def _header(field: int, length: int) -> bytes:
  """Tag and length of a length-delimited protobuf field."""
  return bytes([field << 3 | 2]) + _varint(length)


def _nested(fields, parts) -> list:
  """`parts` (bytes) inside length-delimited `fields`, outermost first: a
  list of bytes to join once (no copy per level of nesting)."""
  length = sum(map(len, parts))
  for field in reversed(fields):
    header = _header(field, length)
    parts = [header] + parts
    length += len(header)
  return parts


def _feature(name: bytes, kind: int, values: list) -> list:
  """A Features.feature map entry: `name` -> a Feature whose list `kind`
  (1 bytes, 3 int64) holds `values` (bytes of its value fields)."""
  return _nested((1,), [_header(1, len(name)), name] +
                 _nested((2, kind), values))


def _int64_feature(name: bytes, packed: bytes) -> list:
  """A map entry `name` -> an Int64List of `packed` varints."""
  return _feature(name, 3, _nested((1,), [packed]))


class FastChunk(NamedTuple):
  """Records parsed and tokenized: record r's prompt then output tokens are
  tokens[starts[r]:starts[r + 1]]; its id is id_fields[r], a BytesList
  value field."""
  id_fields: list
  tokens: np.ndarray
  starts: np.ndarray
  prompt_lengths: np.ndarray
  output_lengths: np.ndarray


def _flat_ids(encoded):
  ids, offsets = encoded
  return (np.frombuffer(ids, '<u4'),
          np.frombuffer(offsets, '<u8').astype(np.int64))


def read_fast_chunk(lines, tokenizer, parse) -> FastChunk:
  """JSON lines -> FastChunk: one fastokens call for the prompts, one for
  the outputs, then each record's tokens put together by one scatter."""
  records = [parse(line) for line in lines]
  id_fields = [_header(1, len(key)) + key for key in
               (str(record['id']).encode('utf-8') for record in records)]
  prompt_ids, prompt_offsets = _flat_ids(tokenizer.encode_batch_flat(
      [record['prompt'] for record in records], add_special_tokens=True))
  output_ids, output_offsets = _flat_ids(tokenizer.encode_batch_flat(
      [record['output'] for record in records], add_special_tokens=False))
  prompt_lengths = np.diff(prompt_offsets)
  output_lengths = np.diff(output_offsets)
  starts = _starts(prompt_lengths + output_lengths)
  tokens = np.empty(starts[-1], np.uint32)
  tokens[np.arange(len(prompt_ids)) + np.repeat(
      starts[:-1] - prompt_offsets[:-1], prompt_lengths)] = prompt_ids
  tokens[np.arange(len(output_ids)) + np.repeat(
      starts[:-1] + prompt_lengths - output_offsets[:-1],
      output_lengths)] = output_ids
  return FastChunk(id_fields, tokens, starts, prompt_lengths, output_lengths)


def fast_examples(chunk: FastChunk, pad_id: int):
  """The loop's Examples for `chunk`: batches of SPEC_BATCH records in
  input order, padded to the batch's longest, shifted, masked.

  Every token is varint-encoded once, padding not at all: a row of
  input_ids is its record's bytes but the last token's, then the pad's
  bytes repeated; labels skip the first token instead. Yields (Example
  bytes, rows, width).
  """
  totals = chunk.prompt_lengths + chunk.output_lengths
  records = len(totals)
  batch_starts = np.arange(0, records, SPEC_BATCH)
  rows = np.diff(np.append(batch_starts, records))
  # At least 1: a batch of empty records has width 0, as the loop's.
  row_widths = np.repeat(
      np.maximum(np.maximum.reduceat(totals, batch_starts), 1), rows)
  token_bytes, counts = varints(chunk.tokens)
  byte_at = _starts(counts)
  starts = chunk.starts[:-1]
  in_input = np.minimum(totals, row_widths - 1)
  label_skip = np.minimum(totals, 1)
  input_from, input_to = (byte_at[starts].tolist(),
                          byte_at[starts + in_input].tolist())
  label_from, label_to = (byte_at[starts + label_skip].tolist(),
                          byte_at[starts + totals].tolist())
  input_pads = (row_widths - 1 - in_input).tolist()
  label_pads = (row_widths - 1 - totals + label_skip).tolist()
  cuts = np.append(batch_starts, records)
  prompt_lengths, output_lengths = (
      _cut(lengths, cuts) for lengths in (chunk.prompt_lengths,
                                          chunk.output_lengths))
  pad = _varint(pad_id)
  tokens = memoryview(token_bytes)
  for batch, (first, last) in enumerate(zip(cuts[:-1].tolist(),
                                            cuts[1:].tolist())):
    width = int(row_widths[first]) - 1
    input_ids = b''.join([piece for row in range(first, last) for piece in (
        tokens[input_from[row]:input_to[row]], pad * input_pads[row])])
    labels = b''.join([piece for row in range(first, last) for piece in (
        tokens[label_from[row]:label_to[row]], pad * label_pads[row])])
    columns = np.arange(width)
    prompt = chunk.prompt_lengths[first:last, None]
    # A bool is one byte, 0 or 1: its own varint.
    mask = ((columns >= prompt - 1) &
            (columns < prompt + chunk.output_lengths[first:last, None] - 1))
    entries = (_int64_feature(b'input_ids', input_ids) +
               _int64_feature(b'labels', labels) +
               _int64_feature(b'response_mask', mask.tobytes()) +
               _int64_feature(b'prompt_lengths', prompt_lengths[batch]) +
               _int64_feature(b'output_lengths', output_lengths[batch]) +
               _int64_feature(b'shape', _varint(last - first) +
                              _varint(width)) +
               _feature(b'example_ids', 1,
                        [b''.join(chunk.id_fields[first:last])]))
    yield b''.join(_nested((1,), entries)), last - first, width


def _cut(values, cuts) -> list:
  """The varints of `values`, as one bytes per slice between `cuts`."""
  data, counts = varints(values)
  at = _starts(counts)[cuts].tolist()
  return [data[start:end] for start, end in zip(at[:-1], at[1:])]


def fast_pad_id(tokenizer_dir, tokenizer) -> int:
  """The id of tokenizer_config.json's pad token, else of its eos token
  (what the loop takes from transformers)."""
  with open(os.path.join(tokenizer_dir, 'tokenizer_config.json'),
            encoding='utf-8') as handle:
    config = json.load(handle)
  for name in ('pad_token', 'eos_token'):
    token = config.get(name)
    token = token.get('content') if isinstance(token, dict) else token
    token_id = None if token is None else tokenizer.token_to_id(token)
    if token_id is not None:
      return token_id
  raise ValueError(f'{tokenizer_dir}: no pad or eos token')


def work(input_path, out_dir, tokenizer_dir):
  """The loop's output, as fast as a hand-written loop in one process makes
  it: FAST_CHUNK records per tokenizer call, the Example bytes by hand."""
  import orjson  # only in this worker
  with concurrent.futures.ThreadPoolExecutor(1) as loader:
    # fastokens loads (seconds, without the GIL) while TensorFlow imports.
    loading = loader.submit(fastokens_tokenizer, tokenizer_dir)
    import tensorflow as tf
    tokenizer = loading.result()
  pad_id = fast_pad_id(tokenizer_dir, tokenizer)
  writer = tf.io.TFRecordWriter(os.path.join(out_dir, 'batches.tfrecord'))
  counts = collections.Counter()
  started = time.perf_counter()
  with open(input_path, 'rb') as handle, \
      concurrent.futures.ThreadPoolExecutor(1) as reader:

    def read_next():
      lines = list(itertools.islice(handle, FAST_CHUNK))
      return read_fast_chunk(lines, tokenizer, orjson.loads) if lines else None

    # The next chunk is read and tokenized while this one is written.
    pending = reader.submit(read_next)
    while (chunk := pending.result()) is not None:
      pending = reader.submit(read_next)
      for example, rows, width in fast_examples(chunk, pad_id):
        writer.write(example)
        counts.update(records_written=rows, stored_tokens=rows * width)
      records = len(chunk.id_fields)
      counts.update(records=records,
                    real_tokens=int(chunk.starts[-1]) - records)
  writer.close()
  return dict(counts, timed_s=time.perf_counter() - started)
