"""Parquet shards (--output_format parquet): a batch's rows written as
Parquet rows, and read back as the batch Example a TFRecord shard holds.

  rows_table      a batch's arrays -> Arrow table of its rows
  parquet_batch   ... and its shard slot (the writer's elements; the sink
                  numbers them: transforms/write.py)
  numbered        that table with its batch number in the `batch` column
  open_writer     a ParquetWriter of a shard, with its compression
  join_parts      several files of one shard slot -> one shard
  write_empty     a shard without rows
  describe_shard  what dataset_info.json lists about a shard
  batch_examples  a shard's batches as Example bytes (for the readers)

The columns are transforms/schema.py's PARQUET_COLUMNS; the file's
key-value metadata `sftbeam` holds {"layout", "pad_id"}, what rebuilding a
padded batch needs besides the rows. Batches are numbered 0, 1, ... through
a file, their rows consecutive, and a row group holds whole batches, so a
reader reads a batch from one row group and skips the row groups before
the batches it wants by their statistics. Files go through Beam's
FileSystems, so gs:// works too.
"""

import hashlib
import json
import os
import zlib
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from sftbeam.transforms import example_codec, schema, spec_arithmetic
from sftbeam.transforms.records import TokenChunk, offsets_of
from sftbeam.transforms.tfrecord import CorruptRecord

METADATA_KEY = b'sftbeam'
_ARROW_TYPES = {'int32': pa.int32(), 'string': pa.string(),
                'list<int32>': pa.list_(pa.int32()),
                'list<bool>': pa.list_(pa.bool_()),
                'list<string>': pa.list_(pa.string())}
# What Arrow raises on a file that is not a whole Parquet file.
_PARQUET_ERRORS = (pa.ArrowException, OSError)


class CorruptParquetShard(CorruptRecord):
  """A Parquet shard is not a whole Parquet file, or its batches are not
  numbered as sftbeam numbers them."""


def arrow_schema(layout: str, pad_id=None) -> pa.Schema:
  """The Arrow schema of a layout's shards, its metadata naming the layout
  and the pad id (None in a shard without rows)."""
  return pa.schema(
      [(name, _ARROW_TYPES[dtype])
       for name, dtype in schema.PARQUET_COLUMNS[layout].items()],
      metadata={METADATA_KEY: json.dumps({
          'layout': layout,
          'pad_id': None if pad_id is None else int(pad_id)})})


# ------------------------------------------------------------------ writing

def _lists(values, lengths: np.ndarray, dtype: str) -> pa.Array:
  """A list array of `dtype`: row i holds the next lengths[i] of `values`."""
  offsets = offsets_of(lengths).astype(np.int32)
  return pa.ListArray.from_arrays(
      pa.array(offsets), pa.array(values, _ARROW_TYPES[dtype].value_type))


def _padded_columns(arrays: dict, example_ids) -> list:
  """One row per example: its spec row up to its length."""
  lengths = arrays['prompt_lengths'] + arrays['output_lengths'] - 1
  rows, width = arrays['input_ids'].shape
  kept = np.arange(width) < lengths[:, None]
  return [
      pa.array(example_ids, pa.string()),
      _lists(arrays['input_ids'][kept], lengths, 'list<int32>'),
      _lists(arrays['labels'][kept], lengths, 'list<int32>'),
      _lists(arrays['response_mask'][kept], lengths, 'list<bool>'),
      pa.array(arrays['prompt_lengths'], pa.int32()),
      pa.array(arrays['output_lengths'], pa.int32()),
      pa.array(np.full(rows, width), pa.int32())]


def _packed_columns(arrays: dict, example_ids) -> list:
  """One row per packed row: its lists whole (padding included), and its
  examples' ids and lengths."""
  rows, width = arrays['input_ids'].shape
  per_row = arrays['examples_per_row']
  whole_rows = np.full(rows, width)
  return [_lists(example_ids, per_row, 'list<string>')] + [
      _lists(arrays[name].ravel(), whole_rows, dtype)
      for name, dtype in schema.PARQUET_COLUMNS['packed'].items()
      if name in schema.LAYOUTS['packed'].matrix] + [
          _lists(arrays[name], per_row, 'list<int32>')
          for name in ('prompt_lengths', 'output_lengths')]


def rows_table(arrays: dict, example_ids, layout: str,
               pad_id: int) -> pa.Table:
  """A batch (`pad_shift_mask`'s arrays, or `pack.packed_arrays'`) as an
  Arrow table of its rows, batch number 0 (see `numbered`)."""
  columns = (_padded_columns if layout == 'padded' else _packed_columns)(
      arrays, list(example_ids))
  batch = pa.array(np.zeros(len(columns[0]), np.int32))
  return pa.Table.from_arrays([batch] + columns,
                              schema=arrow_schema(layout, pad_id))


def numbered(table: pa.Table, batch: int) -> pa.Table:
  """`table` with every row's batch number `batch`."""
  return table.set_column(0, schema.BATCH_COLUMN, pa.array(
      np.full(table.num_rows, batch, np.int32)))


class ParquetBatch(NamedTuple):
  """A batch as the Parquet writer takes it: its rows (`rows_table`), and
  the crc32 of its Example bytes, which picks its shard as the TFRecord
  writer's hash of those bytes does: a run writes the same batches in the
  same shards, in the same order, in either format."""
  example_crc: int
  rows: pa.Table


def parquet_batch(arrays: dict, example_ids, layout: str,
                  pad_id: int) -> ParquetBatch:
  """A batch's arrays (as rows_table takes them) as a ParquetBatch."""
  example = example_codec.serialize_batch(arrays, example_ids, layout)
  return ParquetBatch(zlib.crc32(example),
                      rows_table(arrays, example_ids, layout, pad_id))


def _codec(compression: str):
  return None if compression == 'none' else compression


def open_writer(handle, arrow: pa.Schema,
                compression: str) -> pq.ParquetWriter:
  """A ParquetWriter into an open binary handle (which it leaves open).
  Pages carry CRCs, so a reader that checks them finds a damaged page."""
  return pq.ParquetWriter(handle, arrow, compression=_codec(compression),
                          write_page_checksum=True)


def write_batches(writer: pq.ParquetWriter, tables):
  """Writes numbered batch tables as one row group."""
  table = pa.concat_tables(tables)
  writer.write_table(table, row_group_size=max(table.num_rows, 1))


def _create(path: str):
  return FileSystems.create(path,
                            compression_type=CompressionTypes.UNCOMPRESSED)


def _open(path: str):
  return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def join_parts(parts, final: str, compression: str):
  """Writes the batches of the Parquet files `parts` (in that order) into
  one shard at `final`, renumbered after each other, row group by row
  group."""
  writer, first = None, 0
  with _create(final) as target:
    for path in parts:
      with _open(path) as handle:
        part = pq.ParquetFile(handle)
        writer = writer or open_writer(target, part.schema_arrow,
                                       compression)
        for index in range(part.num_row_groups):
          table = part.read_row_group(index)
          batches = table.column(schema.BATCH_COLUMN).to_numpy()
          writer.write_table(
              table.set_column(0, schema.BATCH_COLUMN,
                               pa.array(batches + np.int32(first))),
              row_group_size=table.num_rows)
        first += _batch_count(part)
    if writer:
      writer.close()


def write_empty(path: str, layout: str, compression: str):
  """A shard of `layout` without rows."""
  with _create(path) as handle:
    open_writer(handle, arrow_schema(layout), compression).close()


# ------------------------------------------------------------------ reading

def _not_whole(path: str, problem) -> CorruptParquetShard:
  return CorruptParquetShard(f'{path}: not a whole Parquet shard ({problem})')


def _batch_ranges(parquet_file: pq.ParquetFile) -> list:
  """(first, last) batch number of each row group, from its statistics
  (read from the `batch` column where a row group has none)."""
  ranges = []
  for index in range(parquet_file.num_row_groups):
    stats = parquet_file.metadata.row_group(index).column(0).statistics
    if stats is not None and stats.has_min_max:
      ranges.append((stats.min, stats.max))
    else:
      batches = parquet_file.read_row_group(
          index, columns=[schema.BATCH_COLUMN]).column(0).to_numpy()
      ranges.append((int(batches.min()), int(batches.max())))
  return ranges


def _batch_count(parquet_file: pq.ParquetFile) -> int:
  ranges = _batch_ranges(parquet_file)
  return ranges[-1][1] + 1 if ranges else 0


def _check_numbering(path: str, parquet_file: pq.ParquetFile) -> int:
  """The number of batches in the file, after checking they are numbered
  0, 1, ... in row order, each within one row group."""
  if parquet_file.schema_arrow.names[:1] != [schema.BATCH_COLUMN]:
    raise _not_whole(path, f'its first column is not "{schema.BATCH_COLUMN}"')
  batches = parquet_file.read(columns=[schema.BATCH_COLUMN]).column(
      0).to_numpy()
  steps = np.diff(batches, prepend=-1)
  if ((steps < 0) | (steps > 1)).any():
    raise _not_whole(path, 'its batches are not numbered 0, 1, ... in order')
  ranges = _batch_ranges(parquet_file)
  if any(low <= high for (_, high), (low, _) in zip(ranges, ranges[1:])):
    raise _not_whole(path, 'a batch spans two row groups')
  return int(batches[-1]) + 1 if batches.size else 0


def describe_shard(path: str) -> dict:
  """What dataset_info.json lists about a Parquet shard: {'name',
  'records': its batches, 'rows', 'bytes', 'sha256' of the file}. Raises
  CorruptParquetShard for a file that is not a whole Parquet shard."""
  with _open(path) as raw:
    digest = hashlib.file_digest(raw, 'sha256')
    size = raw.tell()
    try:
      parquet_file = pq.ParquetFile(raw)
      batches = _check_numbering(path, parquet_file)
    except _PARQUET_ERRORS as error:
      raise _not_whole(path, error) from None
  return {'name': os.path.basename(path), 'records': batches,
          'rows': parquet_file.metadata.num_rows, 'bytes': size,
          'sha256': digest.hexdigest()}


def _list_values(column, dtype=np.int64):
  """(values, lengths) of a list column: every row's values end to end."""
  column = column.combine_chunks()
  return (column.flatten().to_numpy(zero_copy_only=False).astype(dtype),
          np.diff(column.offsets.to_numpy()))


def _padded_arrays(rows: pa.Table, pad_id: int) -> dict:
  """The padded batch of its example rows, as pad_shift_mask gives it."""
  inputs, lengths = _list_values(rows.column('input_ids'))
  labels, _ = _list_values(rows.column('labels'))
  mask, _ = _list_values(rows.column('response_mask'), np.bool_)
  ends = offsets_of(lengths)[1:]
  # Each example's tokens: its inputs, then its last label; its flags: its
  # mask after a first token that no label shows (never learned).
  chunk = TokenChunk(
      example_ids=rows.column('example_id').to_pylist(),
      ids=np.insert(inputs, ends, labels[ends - 1]),
      offsets=offsets_of(lengths + 1),
      supervised=np.insert(mask, ends - lengths, False),
      prompt_lengths=rows.column('prompt_length').to_numpy().astype(np.int64),
      truncated=np.zeros(rows.num_rows, np.bool_))
  arrays = spec_arithmetic.pad_shift_mask(
      chunk, pad_id, int(rows.column('batch_width')[0].as_py()))
  return dict(arrays, example_ids=chunk.example_ids)


def _packed_arrays(rows: pa.Table) -> dict:
  """The packed batch of its rows, as pack.packed_arrays gives it."""
  arrays = {}
  for name in schema.LAYOUTS['packed'].matrix:
    values, _ = _list_values(
        rows.column(name), np.bool_ if name == 'response_mask' else np.int64)
    arrays[name] = values.reshape(rows.num_rows, -1)
  ids = rows.column('example_ids').combine_chunks()
  arrays['example_ids'] = ids.flatten().to_pylist()
  arrays['examples_per_row'] = np.diff(ids.offsets.to_numpy()).astype(
      np.int64)
  for name in ('prompt_lengths', 'output_lengths'):
    arrays[name], _ = _list_values(rows.column(name))
  return arrays


def _example(rows: pa.Table, layout: str, pad_id: int) -> bytes:
  """One batch's rows as the Example bytes of that batch."""
  arrays = (_padded_arrays(rows, pad_id) if layout == 'padded'
            else _packed_arrays(rows))
  return example_codec.serialize_batch(arrays, arrays['example_ids'], layout)


def _batches(table: pa.Table):
  """(batch number, its rows) of each batch in a row group's table."""
  batches = table.column(schema.BATCH_COLUMN).to_numpy()
  starts = np.flatnonzero(np.diff(batches, prepend=-1))
  for start, end in zip(starts, list(starts[1:]) + [len(batches)]):
    yield int(batches[start]), table.slice(start, end - start)


def _layout_and_pad_id(path: str, parquet_file: pq.ParquetFile):
  """The layout and pad id in a shard's metadata."""
  try:
    found = json.loads(parquet_file.schema_arrow.metadata[METADATA_KEY])
    return found['layout'], found['pad_id']
  except (KeyError, TypeError, ValueError):
    raise _not_whole(path, f'no {METADATA_KEY.decode()} metadata of layout '
                     'and pad id') from None


def batch_examples(path: str, first: int = 0,
                   stop: int = None) -> Iterator[bytes]:
  """The Example bytes of batches first..stop-1 of a Parquet shard (to its
  end without `stop`), rebuilt from their rows: the Examples a TFRecord
  shard of the same batches holds. Row groups before `first` are skipped
  unread. Raises CorruptParquetShard where the file is not whole."""
  with _open(path) as handle:
    try:
      parquet_file = pq.ParquetFile(handle)
      layout, pad_id = _layout_and_pad_id(path, parquet_file)
      for index, (low, high) in enumerate(_batch_ranges(parquet_file)):
        if high < first:
          continue
        if stop is not None and low >= stop:
          return
        for batch, rows in _batches(parquet_file.read_row_group(index)):
          if first <= batch and (stop is None or batch < stop):
            yield _example(rows, layout, pad_id)
    except _PARQUET_ERRORS as error:
      raise _not_whole(path, error) from None
