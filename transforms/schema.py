"""The output schema: one `tf.train.Example` per batch.

Writers and readers both import this module; nothing else names a feature.

Every Example holds one padded batch of B rows and width L:
  input_ids, labels   int64, B*L values, row-major
  response_mask       int64 (0/1), B*L values, row-major
  shape               int64, [B, L]
  prompt_lengths      int64, B values (prompt tokens per row)
  output_lengths      int64, B values (output tokens per row)
  example_ids         bytes, B values (utf-8 record ids)
"""

import numpy as np
import tensorflow as tf

# Bump when a feature is added, removed or changes meaning; readers refuse
# versions they do not know.
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

MATRIX_FEATURES = ('input_ids', 'labels', 'response_mask')
ROW_FEATURES = ('prompt_lengths', 'output_lengths')
SHAPE_FEATURE = 'shape'
ID_FEATURE = 'example_ids'

SHARD_PREFIX = 'batches'
SHARD_SUFFIX = '.tfrecord'
REJECTED_PREFIX = 'rejected'
REJECTED_SUFFIX = '.jsonl'
INFO_FILE = 'dataset_info.json'


def feature_spec() -> dict:
  """The `tf.io.parse_single_example` spec of one batch Example."""
  spec = {name: tf.io.VarLenFeature(tf.int64)
          for name in MATRIX_FEATURES + ROW_FEATURES}
  spec[SHAPE_FEATURE] = tf.io.FixedLenFeature([2], tf.int64)
  spec[ID_FEATURE] = tf.io.VarLenFeature(tf.string)
  return spec


def describe_features() -> dict:
  """Human-readable feature spec for dataset_info.json."""
  described = {name: {'dtype': 'int64', 'shape': '[B*L]', 'order': 'row-major'}
               for name in MATRIX_FEATURES}
  described.update(
      {name: {'dtype': 'int64', 'shape': '[B]'} for name in ROW_FEATURES})
  described[SHAPE_FEATURE] = {'dtype': 'int64', 'shape': '[2]',
                              'meaning': '[B, L]'}
  described[ID_FEATURE] = {'dtype': 'bytes', 'shape': '[B]'}
  return described


def _int64_feature(values: np.ndarray) -> tf.train.Feature:
  return tf.train.Feature(
      int64_list=tf.train.Int64List(value=values.ravel().tolist()))


def serialize_batch(arrays: dict, example_ids) -> bytes:
  """Serializes `pad_shift_mask` arrays plus row ids into Example bytes."""
  feature = {name: _int64_feature(arrays[name].astype(np.int64))
             for name in MATRIX_FEATURES + ROW_FEATURES}
  feature[SHAPE_FEATURE] = _int64_feature(
      np.asarray(arrays['input_ids'].shape))
  feature[ID_FEATURE] = tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[example_id.encode('utf-8') for example_id in example_ids]))
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def parse_batch(serialized) -> dict:
  """tf.data map fn: Example bytes -> dict of dense tensors.

  `input_ids`/`labels` int32 [B, L], `response_mask` bool [B, L], the row
  fields int32 [B], `example_ids` string [B].
  """
  parsed = tf.io.parse_single_example(serialized, feature_spec())
  shape = tf.cast(parsed[SHAPE_FEATURE], tf.int32)
  batch = {}
  for name in MATRIX_FEATURES:
    values = tf.reshape(tf.sparse.to_dense(parsed[name]), shape)
    batch[name] = (tf.cast(values, tf.bool) if name == 'response_mask'
                   else tf.cast(values, tf.int32))
  for name in ROW_FEATURES:
    batch[name] = tf.cast(tf.sparse.to_dense(parsed[name]), tf.int32)
  batch[ID_FEATURE] = tf.sparse.to_dense(parsed[ID_FEATURE], default_value='')
  return batch
