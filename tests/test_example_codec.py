"""The Example codec (transforms/example_codec.py) against TensorFlow's
own protobufs and parser: the hand-written encoder, and the numpy decoder."""

import numpy as np
import pytest

from sftbeam.pipeline.readers import numpy_batch
from sftbeam.transforms import example_codec, schema
from sftbeam.transforms.spec_arithmetic import pad_rows, pad_shift_mask
from token_chunks import pairs_chunk


def random_batch(seed, rows=7, pad_id=151643, width=None):
  """(a padded batch's arrays, its example ids) of random records."""
  rng = np.random.default_rng(seed)
  prompts = [rng.integers(0, 2**20, size=rng.integers(1, 90))
             for _ in range(rows)]
  outputs = [rng.integers(0, 2**20, size=rng.integers(0, 90))
             for _ in range(rows)]
  return pad_shift_mask(pairs_chunk(prompts, outputs), pad_id, width), [
      f'id-{i}-é' for i in range(rows)]


def tf_example(features: dict) -> bytes:
  """An Example built through TensorFlow's protobuf API."""
  import tensorflow as tf
  def feature(values):
    if isinstance(values, list) and all(isinstance(v, bytes) for v in values):
      return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    values = np.asarray(values)
    if values.dtype.kind == 'f':
      return tf.train.Feature(float_list=tf.train.FloatList(
          value=values.ravel().tolist()))
    return tf.train.Feature(int64_list=tf.train.Int64List(
        value=values.astype(np.int64).ravel().tolist()))
  return tf.train.Example(features=tf.train.Features(feature={
      name: feature(values) for name, values in features.items()
  })).SerializeToString()


# ---------------------------------------------------------------- encoding

@pytest.mark.slow
@pytest.mark.parametrize('pad_id, width', [(0, None), (151643, 300),
                                           (2**31 - 1, None)])
def test_serialize_batch_equals_tensorflow_example(pad_id, width):
  import tensorflow as tf
  arrays, example_ids = random_batch(pad_id, pad_id=pad_id, width=width)
  serialized = example_codec.serialize_batch(arrays, example_ids)
  features = {name: arrays[name]
              for name in schema.MATRIX_FEATURES + schema.ROW_FEATURES}
  features.update(shape=arrays['input_ids'].shape, example_ids=[
      example_id.encode('utf-8') for example_id in example_ids])
  assert tf.train.Example.FromString(serialized) == (
      tf.train.Example.FromString(tf_example(features)))
  parsed = example_codec.parse_batch(tf.constant(serialized))
  np.testing.assert_array_equal(parsed['labels'].numpy(), arrays['labels'])
  np.testing.assert_array_equal(parsed['response_mask'].numpy(),
                                arrays['response_mask'])


@pytest.mark.slow
def test_varints_match_the_protobuf_encoding():
  import tensorflow as tf
  values = [0, 1, 127, 128, 300, 16383, 16384, 2**35, 2**63 - 1]
  expected = tf.train.Int64List(value=values).SerializeToString()
  # Int64List: key byte 0x0A, payload length, packed varints.
  assert example_codec._varints(values) == expected[2:]  # pylint: disable=protected-access


@pytest.mark.slow
def test_varints_of_every_table_value_match_the_protobuf_encoding():
  """Values below 2**18 are encoded by table lookup; check all of them."""
  import tensorflow as tf
  values = np.arange(2**18)
  expected = tf.train.Int64List(value=values.tolist()).SerializeToString()
  assert example_codec._varints(values) == expected[4:]  # key, 3-byte length


@pytest.mark.slow
def test_headers_and_sizes_match_the_protobuf_encoding():
  """One varint (_varint), a field's key and length (_header) and each
  value's byte count (_varint_sizes), at every branch's boundaries."""
  import tensorflow as tf
  values = [0, 1, 127, 128, 300, 16383, 16384, 2**17, 2**18 - 1, 2**18,
            2**21 - 1, 2**21, 2**35, 2**63 - 1]
  for value in values:
    packed = tf.train.Int64List(value=[value]).SerializeToString()
    assert example_codec._header(0x0A, len(packed) - 2) == packed[:2]  # pylint: disable=protected-access
    assert example_codec._varint(value) == packed[2:]  # pylint: disable=protected-access
    blob = b'x' * value if value < 2**22 else None
    if blob is not None:
      listed = tf.train.BytesList(value=[blob]).SerializeToString()
      assert example_codec._header(0x0A, value) + blob == listed  # pylint: disable=protected-access
  for case in (np.array(values[:9]), np.array(values)):  # table, and not
    np.testing.assert_array_equal(
        example_codec._varint_sizes(case),  # pylint: disable=protected-access
        [len(example_codec._varint(int(value))) for value in case])  # pylint: disable=protected-access


@pytest.mark.slow
def test_negative_values_are_encoded_as_protobuf_does():
  """Ten bytes of the two's complement, as Int64List writes them."""
  import tensorflow as tf
  values = [-1, -2**63, 7, -300]
  expected = tf.train.Int64List(value=values).SerializeToString()
  assert example_codec._varints(np.array(values)) == expected[2:]  # pylint: disable=protected-access


# ---------------------------------------------------------------- decoding

@pytest.mark.parametrize('seed', range(5))
def test_decode_batch_inverts_serialize_batch(seed):
  arrays, example_ids = random_batch(seed)
  batch = example_codec.decode_batch(example_codec.serialize_batch(arrays, example_ids))
  assert batch['example_ids'] == example_ids
  for name in schema.MATRIX_FEATURES + schema.ROW_FEATURES:
    np.testing.assert_array_equal(batch[name], arrays[name])
    assert batch[name].dtype == arrays[name].dtype
  assert batch['input_ids'].dtype == np.int64
  assert batch['response_mask'].dtype == np.bool_


@pytest.mark.slow
@pytest.mark.parametrize('seed', range(3))
def test_decode_batch_equals_tensorflow_parse(seed):
  import tensorflow as tf
  arrays, example_ids = random_batch(seed, rows=32)
  serialized = example_codec.serialize_batch(arrays, example_ids)
  parsed = example_codec.parse_batch(tf.constant(serialized))
  batch = example_codec.decode_batch(serialized)
  for name in schema.MATRIX_FEATURES + schema.ROW_FEATURES:
    np.testing.assert_array_equal(batch[name], parsed[name].numpy())
  assert batch['example_ids'] == [
      value.decode() for value in parsed['example_ids'].numpy()]


@pytest.mark.slow
def test_decode_example_reads_any_tensorflow_example():
  """Negative and 64-bit values (10-byte varints), floats, empty lists,
  and features in TensorFlow's own order."""
  values = [0, 1, 127, 128, 300, 2**21, 2**35, 2**63 - 1, -1, -2**63]
  decoded = example_codec.decode_example(tf_example({
      'big': values, 'empty': np.zeros(0, np.int64),
      'floats': np.array([0.5, -2.0], np.float32),
      'words': [b'a', b'', b'\xff\x00']}))
  np.testing.assert_array_equal(decoded['big'], values)
  assert decoded['big'].dtype == np.int64
  assert decoded['empty'].size == 0
  np.testing.assert_array_equal(decoded['floats'], [0.5, -2.0])
  assert decoded['words'] == [b'a', b'', b'\xff\x00']


@pytest.mark.slow
def test_decode_varints_of_every_table_value():
  import tensorflow as tf
  values = np.arange(2**18)
  encoded = tf.train.Int64List(value=values.tolist()).SerializeToString()
  np.testing.assert_array_equal(example_codec.decode_varints(encoded, 4), values)


def test_only_the_named_features_are_decoded():
  arrays, example_ids = random_batch(0)
  batch = example_codec.decode_batch(example_codec.serialize_batch(arrays, example_ids),
                              names=('prompt_lengths',))
  assert set(batch) == {'prompt_lengths'}


@pytest.mark.slow
def test_packed_batches_decode_generically():
  """Matrix features reshaped to `shape`, per-example features 1-D; the
  readers add FlashAttention's cu_seqlens (each example, each padding tail
  one sequence)."""
  segment_ids = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
  positions = np.array([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
  serialized = tf_example({
      'input_ids': np.arange(12), 'labels': np.arange(12),
      'response_mask': np.ones(12), 'shape': [2, 6],
      'segment_ids': segment_ids, 'positions': positions,
      'examples_per_row': [2, 1], 'prompt_lengths': [2, 1, 3],
      'output_lengths': [2, 2, 4], 'example_ids': [b'a', b'b', b'c']})
  batch = numpy_batch(serialized)
  np.testing.assert_array_equal(batch['segment_ids'], segment_ids)
  np.testing.assert_array_equal(batch['positions'], positions)
  assert batch['input_ids'].shape == (2, 6)
  np.testing.assert_array_equal(batch['examples_per_row'], [2, 1])
  np.testing.assert_array_equal(batch['prompt_lengths'], [2, 1, 3])
  assert batch['example_ids'] == ['a', 'b', 'c']
  np.testing.assert_array_equal(batch['cu_seqlens'], [0, 3, 5, 6, 12])
  assert batch['cu_seqlens'].dtype == np.int32
  assert batch['max_seqlen'] == 6


@pytest.mark.parametrize('cut', [1, 10, 100])
def test_a_cut_example_is_a_decode_error(cut):
  arrays, example_ids = random_batch(0)
  serialized = example_codec.serialize_batch(arrays, example_ids)
  with pytest.raises(example_codec.DecodeError):
    example_codec.decode_batch(serialized[:-cut])


@pytest.mark.slow
def test_a_matrix_of_the_wrong_size_is_a_decode_error():
  serialized = tf_example({'input_ids': np.arange(5), 'shape': [2, 3]})
  with pytest.raises(example_codec.DecodeError, match='input_ids'):
    example_codec.decode_batch(serialized)


@pytest.mark.parametrize('seed, pad_id, batch_rows, high', [
    (0, 151643, 3, 2**20), (1, 0, 2, 2**17), (2, 5, 7, 100), (3, 2**20, 1, 2**20),
    (4, 151643, 30, 2**20)])
def test_padded_batches_encoded_together_equal_each_encoded_alone(
    seed, pad_id, batch_rows, high):
  """serialize_padded_batches over a run of stacked batches gives, batch
  by batch, serialize_batch's bytes: token ids and pad ids in every varint
  size (below 2**7, the table's 2**18, above), the last batch short."""
  rng = np.random.default_rng(seed)
  prompts = [rng.integers(0, high, size=rng.integers(1, 40))
             for _ in range(11)]
  outputs = [rng.integers(0, high, size=rng.integers(0, 40))
             for _ in range(11)]
  chunk = pairs_chunk(prompts, outputs)
  example_ids = [f'r{i}-é' for i in range(11)]
  width = int(chunk.lengths.max()) + 3
  starts = list(range(0, 11, batch_rows))
  together = example_codec.serialize_padded_batches(
      pad_rows(chunk, pad_id, width), example_ids,
      list(zip(starts, starts[1:] + [11])))
  alone = [example_codec.serialize_batch(
      pad_shift_mask(chunk.slice(first, min(first + batch_rows, 11)), pad_id,
                     width), example_ids[first:first + batch_rows])
           for first in starts]
  assert together == alone
