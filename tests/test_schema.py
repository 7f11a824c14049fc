"""The feature table (transforms/schema.py) agrees with what is written:
dataset_info.json describes exactly the features a batch Example holds."""

import numpy as np
import pytest

from sftbeam.transforms import example_codec, pack, schema
from sftbeam.transforms.spec_arithmetic import pad_shift_mask
from token_chunks import pairs_chunk

CHUNK = pairs_chunk([[1, 2], [5], [8]], [[3, 4], [6, 7], [9]], ['a', 'b', 'c'])


def batch_arrays(layout: str) -> dict:
  """A small batch of `layout`: three records, padded or packed into 6."""
  if layout == 'packed':
    return pack.packed_arrays(CHUNK, [np.array([0, 2]), np.array([1])], 6, 0)
  return pad_shift_mask(CHUNK, 0)


@pytest.mark.parametrize('layout', sorted(schema.LAYOUTS))
def test_described_features_are_the_written_ones(layout):
  written = example_codec.decode_example(example_codec.serialize_batch(
      batch_arrays(layout), ['a', 'c', 'b'], layout))
  described = schema.describe_features(layout)
  assert set(described) == set(written)
  rows, width = written[schema.SHAPE_FEATURE]
  for name in schema.LAYOUTS[layout].matrix:
    assert described[name]['shape'] == '[B*L]'
    assert written[name].size == rows * width
  records_per_batch = '[B]' if layout == 'padded' else '[records in the batch]'
  assert described[schema.ID_FEATURE]['shape'] == records_per_batch
  assert len(written[schema.ID_FEATURE]) == 3


def test_the_padded_features_are_the_padded_layouts():
  padded = schema.LAYOUTS['padded']
  assert (schema.MATRIX_FEATURES, schema.ROW_FEATURES) == (padded.matrix,
                                                          padded.vectors)
  packed = schema.LAYOUTS['packed']
  assert set(padded.matrix) < set(packed.matrix)
  assert set(padded.vectors) < set(packed.vectors)
