"""Batch Examples as bytes: the `tf.train.Example` wire format written and
read directly with numpy, and parsed with TensorFlow for tf.data.

  serialize_batch   a batch's arrays -> Example bytes (the pipeline's writer)
  serialize_padded_batches   consecutive padded batches' arrays -> their
                    Examples, encoded together
  decode_batch      Example bytes -> numpy arrays (readers without TensorFlow)
  parse_batch       Example bytes -> tensors (a tf.data map function)

Which features a batch holds, per layout, is transforms/schema.py.
"""

import functools

import numpy as np

from sftbeam.transforms.records import offsets_of
from sftbeam.transforms.schema import ID_FEATURE, LAYOUTS, SHAPE_FEATURE

# ------------------------------------------------------------------ encoding
# The protobuf wire format of tf.train.Example, written directly rather than
# through the protobuf API, whose per-message cost would outweigh all other
# per-row work but tokenizing (docs/performance.md).
#   Example  { Features features = 1; }
#   Features { map<string, Feature> feature = 1; }   entries: key=1, value=2
#   Feature  { BytesList bytes_list = 1; Int64List int64_list = 3; }
#   *List    { repeated value = 1; }                  int64 packed
_LENGTH_DELIMITED = (1 << 3) | 2, (2 << 3) | 2, (3 << 3) | 2
_ONE_BYTE = [bytes([value]) for value in range(0x80)]


def _varint(value: int) -> bytes:
  """The base-128 varint of one non-negative integer."""
  if value < 0x80:
    return _ONE_BYTE[value]
  if value < 0x4000:  # the common lengths, without a loop
    return bytes((value & 0x7F | 0x80, value >> 7))
  encoded = bytearray()
  while value > 0x7F:
    encoded.append((value & 0x7F) | 0x80)
    value >>= 7
  encoded.append(value)
  return bytes(encoded)


def _varint_groups(values: np.ndarray) -> np.ndarray:
  """(n, width) uint8: the 7-bit groups of each value, low group first,
  with the continuation bit set; groups past a value's end are 0."""
  width = max(1, (int(values.max()).bit_length() + 6) // 7)
  rest = values[:, None] >> (7 * np.arange(width, dtype=np.uint64))
  return ((rest & 0x7F) | ((rest > 0x7F) << np.uint64(7))).astype(np.uint8)


# The varint bytes of every value below 2**18 (all token ids of common
# vocabularies), packed little-endian into one uint32 each: encoding a
# batch is then one gather and one compaction.
_VARINT_TABLE_SIZE = 1 << 18
_VARINT_WORDS = _varint_groups(
    np.arange(_VARINT_TABLE_SIZE, dtype=np.uint64)).astype(np.uint32) @ (
        np.uint32(1) << np.arange(0, 24, 8, dtype=np.uint32))


def _varints(values: np.ndarray) -> bytes:
  """Base-128 varints of int64 values, row-major (negatives as protobuf
  writes them: ten bytes of their two's complement), vectorized."""
  values = np.asarray(values).ravel()
  if not values.size:
    return b''
  if values.dtype == np.bool_:
    return values.astype(np.uint8).tobytes()  # one byte each, as is
  unsigned = values.astype(np.int64, copy=False).view(np.uint64)
  largest = unsigned.max()
  if largest < 0x80:
    return unsigned.astype(np.uint8).tobytes()
  if largest >= _VARINT_TABLE_SIZE:
    packed = _varint_groups(unsigned)
  else:
    packed = _VARINT_WORDS.take(unsigned.view(np.int64)).view(
        np.uint8).reshape(-1, 4)
  # A byte is written if it is a value's first or carries bits: only bytes
  # past a value's end are zero (a value's last byte is non-zero).
  written = packed != 0
  written[:, 0] = True
  return np.compress(written.ravel(), packed.ravel()).tobytes()


# The byte count of each table value's varint.
_VARINT_SIZES = (np.arange(_VARINT_TABLE_SIZE) >= 1 << 7).astype(np.uint8) + (
    np.arange(_VARINT_TABLE_SIZE) >= 1 << 14) + 1


def _varint_sizes(values: np.ndarray) -> np.ndarray:
  """The byte count of each value's varint (1 to 10), flat, uint8."""
  unsigned = values.astype(np.int64, copy=False).view(np.uint64).ravel()
  if unsigned.size and unsigned.max() < _VARINT_TABLE_SIZE:
    return _VARINT_SIZES.take(unsigned.view(np.int64))
  sizes = np.ones(len(unsigned), np.uint8)
  for bits in range(7, 64, 7):
    sizes += unsigned >= np.uint64(1 << bits)
  return sizes


def _header(field_key: int, length: int) -> bytes:
  """The key byte and varint length of a length-delimited field."""
  return _ONE_BYTE[field_key] + _varint(length)


def _field(field_key: int, payload: bytes) -> bytes:
  """A length-delimited field: key byte, varint length, payload."""
  return _header(field_key, len(payload)) + payload


@functools.lru_cache(maxsize=None)
def _feature_key(name: str) -> bytes:
  """The key field of a feature map entry."""
  return _field(_LENGTH_DELIMITED[0], name.encode('utf-8'))


def _feature_entry(name: str, feature: list) -> list:
  """The parts of one `Features.feature` map entry: name -> feature, where
  `feature` is the parts of the Feature message (joined only once, for the
  whole Example, so that large payloads are not copied at every level)."""
  key = _feature_key(name)
  feature_length = sum(map(len, feature))
  value_header = _header(_LENGTH_DELIMITED[1], feature_length)
  entry_length = len(key) + len(value_header) + feature_length
  return [_header(_LENGTH_DELIMITED[0], entry_length), key, value_header,
          *feature]


def _int64_feature(payload: bytes) -> list:
  """The parts of a Feature holding an Int64List of these packed varints."""
  int64_list = _header(_LENGTH_DELIMITED[0], len(payload))
  return [_header(_LENGTH_DELIMITED[2], len(int64_list) + len(payload)),
          int64_list, payload]


def _bytes_feature(values) -> list:
  """The parts of a Feature holding a BytesList."""
  key = _LENGTH_DELIMITED[0]
  bytes_list = b''.join([_header(key, len(value)) + value
                         for value in values])
  return [_field(_LENGTH_DELIMITED[0], bytes_list)]


def _example(names, payloads, shape, example_ids) -> bytes:
  """Example bytes: an Int64List feature per name (its packed varints in
  `payloads`), then the shape and the example ids."""
  parts = []
  for name, payload in zip(names, payloads):
    parts += _feature_entry(name, _int64_feature(payload))
  parts += _feature_entry(SHAPE_FEATURE, _int64_feature(
      b''.join(map(_varint, shape))))
  parts += _feature_entry(ID_FEATURE, _bytes_feature(
      [example_id.encode('utf-8') for example_id in example_ids]))
  # Example { Features features = 1 }: one header, then every part once.
  return b''.join([_header(_LENGTH_DELIMITED[0], sum(map(len, parts))),
                   *parts])


def serialize_batch(arrays: dict, example_ids, layout: str = 'padded') -> bytes:
  """Serializes a batch's arrays (`pad_shift_mask`'s, or for the packed
  layout `pack.packed_arrays`') plus example ids into Example bytes."""
  features = LAYOUTS[layout]
  names = features.matrix + features.vectors
  return _example(names, [_varints(arrays[name]) for name in names],
                  arrays['input_ids'].shape, example_ids)


def serialize_padded_batches(padded, example_ids, bounds) -> list:
  """The Example bytes of consecutive padded batches, from their rows
  padded together (a spec_arithmetic.PaddedRows): a batch per (first, end)
  of `bounds`, rows first to end - 1.

  Each Example is serialize_batch's of that batch's `pad_shift_mask`
  arrays. The padded token rows are varint-encoded once for all the
  batches, and each row's input_ids and labels cut from its bytes (all but
  the last token's, all but the first token's): a batch's per-call cost
  would otherwise outweigh its encoding (docs/performance.md).
  """
  rows, columns = padded.sequences.shape  # columns: width + 1, at least 2
  tokens = _varints(padded.sequences)
  # Where each row's bytes start and end, and its first token's end and
  # last token's start: from the byte counts, a row's sum at a time.
  sizes = _varint_sizes(padded.sequences).reshape(rows, columns)
  row_offsets = offsets_of(sizes.sum(axis=1, dtype=np.int64))
  row_starts = row_offsets[:-1].tolist()
  row_ends = row_offsets[1:].tolist()
  first_ends = (row_offsets[:-1] + sizes[:, 0]).tolist()
  last_starts = (row_offsets[1:] - sizes[:, -1]).tolist()
  mask = padded.supervised[:, 1:].astype(np.uint8).tobytes()
  lengths = [(_varints(values), offsets_of(_varint_sizes(values)).tolist())
             for values in (padded.prompt_lengths, padded.output_lengths)]
  width = columns - 1
  names = LAYOUTS['padded'].matrix + LAYOUTS['padded'].vectors
  examples = []
  for first, end in bounds:
    payloads = [
        b''.join([tokens[start:stop] for start, stop in zip(
            row_starts[first:end], last_starts[first:end])]),
        b''.join([tokens[start:stop] for start, stop in zip(
            first_ends[first:end], row_ends[first:end])]),
        mask[first * width:end * width],
    ] + [stream[starts[first]:starts[end]] for stream, starts in lengths]
    examples.append(_example(names, payloads, (end - first, width),
                             example_ids[first:end]))
  return examples


# ---------------------------------------------------------------- TensorFlow

def feature_spec(layout: str = 'padded') -> dict:
  """The `tf.io.parse_single_example` spec of one batch Example."""
  # TensorFlow is imported only by the readers that parse with it: workers
  # write Examples without it (serialize_batch), so none pays its start-up
  # time and memory (docs/performance.md).
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  features = LAYOUTS[layout]
  spec = {name: tf.io.VarLenFeature(tf.int64)
          for name in features.matrix + features.vectors}
  spec[SHAPE_FEATURE] = tf.io.FixedLenFeature([2], tf.int64)
  spec[ID_FEATURE] = tf.io.VarLenFeature(tf.string)
  return spec


def parse_batch(serialized, layout: str = 'padded') -> dict:
  """tf.data map fn: Example bytes -> dict of dense tensors.

  `input_ids`/`labels` int32 [B, L], `response_mask` bool [B, L], the other
  int features int32, `example_ids` string.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  features = LAYOUTS[layout]
  parsed = tf.io.parse_single_example(serialized, feature_spec(layout))
  shape = tf.cast(parsed[SHAPE_FEATURE], tf.int32)
  batch = {}
  for name in features.matrix:
    values = tf.reshape(tf.sparse.to_dense(parsed[name]), shape)
    batch[name] = (tf.cast(values, tf.bool) if name == 'response_mask'
                   else tf.cast(values, tf.int32))
  for name in features.vectors:
    batch[name] = tf.cast(tf.sparse.to_dense(parsed[name]), tf.int32)
  batch[ID_FEATURE] = tf.sparse.to_dense(parsed[ID_FEATURE], default_value='')
  return batch


# ------------------------------------------------------------------ decoding
# The inverse of serialize_batch, in numpy, for readers without TensorFlow.
# It reads any tf.train.Example in the wire format (fields in any order,
# unknown fields skipped, int64 lists packed or not), decoding each packed
# int64 list as one vectorized varint decode.

# Features stored as [B, L] matrices, in any layout.
_MATRIX_NAMES = frozenset(name for layout in LAYOUTS.values()
                          for name in layout.matrix)

_VARINT, _FIXED64, _DELIMITED, _FIXED32 = 0, 1, 2, 5
# Feature's oneof: bytes_list = 1, float_list = 2, int64_list = 3.
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 1, 2, 3


class DecodeError(ValueError):
  """The bytes are not a well-formed batch Example."""


def _varint_at(data: bytes, position: int):
  """(value, next position) of the varint starting at `position`."""
  value = shift = 0
  while True:
    if position >= len(data):
      raise DecodeError('a varint runs past the end of its message')
    byte = data[position]
    position += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, position
    shift += 7
    if shift > 63:
      raise DecodeError('a varint is longer than 10 bytes')


def _fields(data: bytes, start: int, end: int):
  """Yields (field number, wire type, value start, value end) of each field
  of the message data[start:end]; a varint field's value is its bytes."""
  position = start
  while position < end:
    key, position = _varint_at(data, position)
    number, wire_type = key >> 3, key & 7
    if wire_type == _VARINT:
      _, stop = _varint_at(data, position)
    elif wire_type == _DELIMITED:
      length, position = _varint_at(data, position)
      stop = position + length
    elif wire_type in (_FIXED64, _FIXED32):
      stop = position + (8 if wire_type == _FIXED64 else 4)
    else:
      raise DecodeError(f'unsupported wire type {wire_type} in field {number}')
    if stop > end:
      raise DecodeError(f'field {number} runs past the end of its message')
    yield number, wire_type, position, stop
    position = stop


def decode_varints(data: bytes, start: int = 0, end: int = None) -> np.ndarray:
  """int64 values of the packed varints in data[start:end], vectorized.

  A varint ends at its first byte below 0x80; values are assembled one
  group position at a time (at most 10 rounds, 3 for token ids below
  2**21). Ten-byte varints are negative numbers, as in protobuf.
  """
  end = len(data) if end is None else end
  groups = np.frombuffer(data, np.uint8, end - start, start)
  if not groups.size:
    return np.zeros(0, np.int64)
  if groups.max() < 0x80:  # one byte each (masks, small numbers)
    return groups.astype(np.int64)
  ends = np.flatnonzero(groups < 0x80)
  if not ends.size or ends[-1] != groups.size - 1:
    raise DecodeError('packed varints end inside a varint')
  starts = np.empty_like(ends)
  starts[0] = 0
  np.add(ends[:-1], 1, out=starts[1:])
  width = int((ends - starts).max()) + 1
  if width > 10:
    raise DecodeError('a varint is longer than 10 bytes')
  payload = (groups & 0x7F).astype(np.uint64)
  values = payload[starts]
  for group in range(1, width):
    # Every value's group `group`, or 0 past its end: no subsets to index.
    at = starts + group
    present = np.where(at <= ends, payload[np.minimum(at, ends)], 0)
    values |= present << np.uint64(7 * group)
  return values.view(np.int64)


def _decode_feature(data: bytes, start: int, end: int):
  """One Feature message -> int64 array, float32 array or list of bytes."""
  int64_parts, float_parts, byte_values = [], [], []
  for kind, _, kind_start, kind_end in _fields(data, start, end):
    for number, wire_type, value_start, value_end in _fields(
        data, kind_start, kind_end):
      if number != 1:
        continue
      if kind == _BYTES_LIST:
        byte_values.append(data[value_start:value_end])
      elif kind == _INT64_LIST:
        int64_parts.append(decode_varints(data, value_start, value_end))
      elif kind == _FLOAT_LIST and wire_type == _DELIMITED:
        float_parts.append(np.frombuffer(
            data, '<f4', (value_end - value_start) // 4, value_start))
      elif kind == _FLOAT_LIST:
        float_parts.append(np.frombuffer(data, '<f4', 1, value_start))
    if kind == _BYTES_LIST:
      return byte_values
    if kind == _FLOAT_LIST:
      return np.concatenate(float_parts or [np.zeros(0, np.float32)])
    if kind == _INT64_LIST:
      return np.concatenate(int64_parts or [np.zeros(0, np.int64)])
  return np.zeros(0, np.int64)  # an empty Feature: no values


def decode_example(serialized: bytes, names=None) -> dict:
  """The features of one serialized tf.train.Example, as flat values.

  Gives {name: int64 array | float32 array | list of bytes}; with `names`,
  only those features are decoded (the others are skipped unread).
  """
  serialized = bytes(serialized)
  features = {}
  for number, _, start, end in _fields(serialized, 0, len(serialized)):
    if number != 1:  # Example.features
      continue
    for entry_number, _, entry_start, entry_end in _fields(
        serialized, start, end):
      if entry_number != 1:  # Features.feature (map entries)
        continue
      name, value = None, (entry_start, entry_start)
      for part, _, part_start, part_end in _fields(
          serialized, entry_start, entry_end):
        if part == 1:
          name = serialized[part_start:part_end].decode('utf-8')
        elif part == 2:
          value = (part_start, part_end)
      if name is not None and (names is None or name in names):
        features[name] = _decode_feature(serialized, *value)
  return features


def decode_batch(serialized: bytes, names=None) -> dict:
  """One batch Example's bytes -> dict of numpy arrays, no TensorFlow.

  Matrix features (`input_ids`, `labels`, `response_mask`, and packed
  batches' `segment_ids`, `positions`) are reshaped to `shape` [B, L];
  `response_mask` is bool, the other int64 features stay int64 (1-D:
  per row, or per example in packed batches); `example_ids` is a list of
  str. With `names`, only those features are decoded.
  """
  wanted = None if names is None else set(names) | {SHAPE_FEATURE}
  features = decode_example(serialized, wanted)
  if SHAPE_FEATURE not in features or features[SHAPE_FEATURE].size != 2:
    raise DecodeError(f'a batch Example needs a 2-value `{SHAPE_FEATURE}`')
  rows, width = (int(value) for value in features.pop(SHAPE_FEATURE))
  batch = {}
  for name, values in features.items():
    if name == ID_FEATURE:
      batch[name] = [value.decode('utf-8') for value in values]
    elif name in _MATRIX_NAMES:
      if values.size != rows * width:
        raise DecodeError(f'`{name}` holds {values.size} values; shape '
                          f'[{rows}, {width}] needs {rows * width}')
      batch[name] = values.reshape(rows, width)
    else:
      batch[name] = values
  if 'response_mask' in batch:
    batch['response_mask'] = batch['response_mask'].astype(bool)
  return batch
