"""The hand-written Example encoder against TensorFlow's own protobufs."""

import numpy as np
import pytest
import tensorflow as tf

from sftbeam.transforms import schema
from sftbeam.transforms.sft import pad_shift_mask
from token_chunks import pairs_chunk


def _tf_example(arrays, example_ids):
  """The same batch built through the protobuf API."""
  def int64s(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(
        value=np.asarray(values).astype(np.int64).ravel().tolist()))
  feature = {name: int64s(arrays[name]) for name in
             schema.MATRIX_FEATURES + schema.ROW_FEATURES}
  feature[schema.SHAPE_FEATURE] = int64s(arrays['input_ids'].shape)
  feature[schema.ID_FEATURE] = tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[i.encode('utf-8') for i in example_ids]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


@pytest.mark.parametrize('pad_id, width', [(0, None), (151643, 300),
                                           (2**31 - 1, None)])
def test_serialize_batch_equals_tensorflow_example(pad_id, width):
  rng = np.random.default_rng(pad_id)
  prompts = [rng.integers(0, 2**20, size=rng.integers(1, 90))
             for _ in range(7)]
  outputs = [rng.integers(0, 2**20, size=rng.integers(0, 90))
             for _ in range(7)]
  arrays = pad_shift_mask(pairs_chunk(prompts, outputs), pad_id, width)
  example_ids = [f'id-{i}-é' for i in range(7)]
  serialized = schema.serialize_batch(arrays, example_ids)
  assert tf.train.Example.FromString(serialized) == _tf_example(
      arrays, example_ids)
  parsed = schema.parse_batch(tf.constant(serialized))
  np.testing.assert_array_equal(parsed['labels'].numpy(), arrays['labels'])
  np.testing.assert_array_equal(parsed['response_mask'].numpy(),
                                arrays['response_mask'])


def test_varints_match_the_protobuf_encoding():
  values = [0, 1, 127, 128, 300, 16383, 16384, 2**35, 2**63 - 1]
  expected = tf.train.Int64List(value=values).SerializeToString()
  # Int64List: key byte 0x0A, payload length, packed varints.
  assert schema._varints(values) == expected[2:]  # pylint: disable=protected-access


def test_varints_of_every_table_value_match_the_protobuf_encoding():
  """Values below 2**18 are encoded by table lookup; check all of them."""
  values = np.arange(2**18)
  expected = tf.train.Int64List(value=values.tolist()).SerializeToString()
  assert schema._varints(values) == expected[4:]  # key, 3-byte length


def test_negative_values_are_encoded_as_protobuf_does():
  """Ten bytes of the two's complement, as Int64List writes them."""
  values = [-1, -2**63, 7, -300]
  expected = tf.train.Int64List(value=values).SerializeToString()
  assert schema._varints(np.array(values)) == expected[2:]  # pylint: disable=protected-access
