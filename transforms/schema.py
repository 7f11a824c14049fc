"""The output schema: one `tf.train.Example` per batch, and its features
per layout; or, with --output_format parquet, one Parquet row per example
(padded layout) or per packed row (packed layout), and its columns. (The
names of the files a run writes: transforms/filenames.py.)

Writers and readers both import this module; nothing else names a feature
or a column. Turning a batch into Example bytes and back is
transforms/example_codec.py; into Parquet rows and back,
transforms/parquet_shards.py.

Every Example holds one batch of B rows and width L. Padded layout (one
record per row, right-padded):
  input_ids, labels   int64, B*L values, row-major
  response_mask       int64 (0/1), B*L values, row-major
  shape               int64, [B, L]
  prompt_lengths      int64, B values (prompt tokens per row)
  output_lengths      int64, B values (output tokens per row)
  example_ids         bytes, B values (utf-8 record ids)
Packed layout (whole records end to end in rows of L = pack_length;
docs/packing.md), the same plus:
  segment_ids         int64, B*L: 1..k for a row's k records, 0 on padding
  positions           int64, B*L: 0..L_i-1 within each record, 0 on padding
  examples_per_row    int64, B values
and there example_ids, prompt_lengths and output_lengths hold one value per
record (rows in order, records in order within a row), not per row.
"""

from typing import NamedTuple, Tuple

# Bump when a feature is added, removed or changes meaning; readers refuse
# versions they do not know.
SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (2,)

SHAPE_FEATURE = 'shape'
ID_FEATURE = 'example_ids'


class Layout(NamedTuple):
  """The int64 features of a layout's batches: [B, L] matrices, stored
  row-major, and 1-D vectors."""
  matrix: Tuple[str, ...]
  vectors: Tuple[str, ...]


LAYOUTS = {
    'padded': Layout(('input_ids', 'labels', 'response_mask'),
                     ('prompt_lengths', 'output_lengths')),
    'packed': Layout(('input_ids', 'labels', 'response_mask', 'segment_ids',
                      'positions'),
                     ('examples_per_row', 'prompt_lengths', 'output_lengths')),
}
MATRIX_FEATURES = LAYOUTS['padded'].matrix
ROW_FEATURES = LAYOUTS['padded'].vectors

# The Parquet columns of each layout, with their types; rows of a batch are
# consecutive, in the batch's row order, with the same `batch` number.
# Padded: one row per example, its spec row without padding (prompt +
# output - 1 positions), and the width its batch is padded to. Packed: one
# row per packed row, every list pack_length long (padding included), but
# example_ids, prompt_lengths and output_lengths: one per example in it.
BATCH_COLUMN = 'batch'
PARQUET_COLUMNS = {
    'padded': {
        BATCH_COLUMN: 'int32', 'example_id': 'string',
        'input_ids': 'list<int32>', 'labels': 'list<int32>',
        'response_mask': 'list<bool>', 'prompt_length': 'int32',
        'output_length': 'int32', 'batch_width': 'int32'},
    'packed': {
        BATCH_COLUMN: 'int32', 'example_ids': 'list<string>',
        'input_ids': 'list<int32>', 'labels': 'list<int32>',
        'response_mask': 'list<bool>', 'segment_ids': 'list<int32>',
        'positions': 'list<int32>', 'prompt_lengths': 'list<int32>',
        'output_lengths': 'list<int32>'},
}


def describe_columns(layout: str = 'padded') -> dict:
  """The Parquet columns for dataset_info.json: {name: {'dtype': ...}}."""
  return {name: {'dtype': dtype}
          for name, dtype in PARQUET_COLUMNS[layout].items()}


def describe_features(layout: str = 'padded') -> dict:
  """Human-readable feature spec for dataset_info.json."""
  features = LAYOUTS[layout]
  per = '[B]' if layout == 'padded' else '[records in the batch]'
  described = {name: {'dtype': 'int64', 'shape': '[B*L]', 'order': 'row-major'}
               for name in features.matrix}
  described.update(
      {name: {'dtype': 'int64', 'shape': per} for name in features.vectors})
  if 'examples_per_row' in described:
    described['examples_per_row']['shape'] = '[B]'
  described[SHAPE_FEATURE] = {'dtype': 'int64', 'shape': '[2]',
                              'meaning': '[B, L]'}
  described[ID_FEATURE] = {'dtype': 'bytes', 'shape': per}
  return described
