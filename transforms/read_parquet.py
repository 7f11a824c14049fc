"""Reading Parquet input files as chunks of rows, row group by row group.

Each matched `.parquet` file is opened once to list its row groups (from
its footer); each row group then travels as one small element, spread over
the workers (transforms/read_input.py), and the worker that gets it reads that
row group only, and of it only the columns a record may read, as Arrow
record batches of up to `chunk_rows` rows (`RowChunk`). Row numbers count
from 1 over the whole file, whichever worker reads which row group.

Parquet's own compression (snappy, gzip, zstd, ...) is undone by Arrow. A
file that is not Parquet, cut short or corrupt fails the run
(`CorruptInputError`, naming the file), as a compressed JSON-lines file
does; so does a column a record reads whose type JSON has no counterpart
for (binary, dates, decimals, ...): its values could not be the values of
a JSON line.
"""

from typing import NamedTuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from sftbeam.transforms.read import CorruptInputError
from sftbeam.transforms.records import RowChunk

PARQUET_SUFFIX = '.parquet'
# What Arrow raises on bytes that are not a valid Parquet file.
_PARQUET_ERRORS = (pa.ArrowException, OSError)


def is_parquet(path: str) -> bool:
  """Input files are read as Parquet exactly when their name ends so."""
  return path.endswith(PARQUET_SUFFIX)


class RowGroup(NamedTuple):
  """One row group of a Parquet input file, to be read by one worker."""
  path: str
  index: int
  first_row_number: int  # of its first row in the file, 1-based
  input_bytes: int  # its compressed size, for the progress line


def _not_parquet(path: str, error) -> CorruptInputError:
  return CorruptInputError(
      f'input {path} is not a readable Parquet file: it is cut short or '
      f'corrupt ({error}); restore the file and run again')


def _json_like(data_type) -> bool:
  """Whether every value of an Arrow type is a JSON value (null, boolean,
  number, string, array or object with string keys)."""
  types = pa.types
  if types.is_dictionary(data_type):
    return _json_like(data_type.value_type)
  if types.is_map(data_type):
    key = data_type.key_type
    return ((types.is_string(key) or types.is_large_string(key)) and
            _json_like(data_type.item_type))
  if types.is_struct(data_type):
    return all(_json_like(field.type) for field in data_type)
  if (types.is_list(data_type) or types.is_large_list(data_type) or
      types.is_fixed_size_list(data_type) or types.is_list_view(data_type) or
      types.is_large_list_view(data_type)):
    return _json_like(data_type.value_type)
  return (types.is_null(data_type) or types.is_boolean(data_type) or
          types.is_integer(data_type) or types.is_floating(data_type) or
          types.is_string(data_type) or types.is_large_string(data_type) or
          types.is_string_view(data_type))


def _read_columns(path: str, schema, wanted) -> list:
  """The columns of `wanted` that the file has; CorruptInputError for one
  of a type JSON has no counterpart for."""
  present = [name for name in wanted if name in schema.names]
  for name in present:
    data_type = schema.field(name).type
    if not _json_like(data_type):
      raise CorruptInputError(
          f'input {path}: column "{name}" is of type {data_type}, which JSON '
          'has no counterpart for; sftbeam reads Parquet strings, numbers, '
          'booleans, lists, structs and maps with string keys (cast the '
          'column, or rename it)')
  return present


def _open(path: str):
  """(open handle, ParquetFile) of an input file; its footer read."""
  handle = FileSystems.open(path, 'application/octet-stream',
                            compression_type=CompressionTypes.UNCOMPRESSED)
  try:
    return handle, pq.ParquetFile(handle, page_checksum_verification=True)
  except _PARQUET_ERRORS as error:
    handle.close()
    raise _not_parquet(path, error) from None


class ListRowGroupsFn(beam.DoFn):
  """FileMetadata of a Parquet file -> a RowGroup per row group."""

  def __init__(self, columns):
    self._columns = columns

  def process(self, metadata):
    path = metadata.path
    handle, parquet_file = _open(path)
    with handle:
      _read_columns(path, parquet_file.schema_arrow, self._columns)
      first_row_number = 1
      footer = parquet_file.metadata
      for index in range(footer.num_row_groups):
        group = footer.row_group(index)
        compressed = sum(group.column(column).total_compressed_size
                         for column in range(group.num_columns))
        yield RowGroup(path, index, first_row_number, compressed)
        first_row_number += group.num_rows


class ReadRowGroupFn(beam.DoFn):
  """RowGroup -> RowChunks of up to `chunk_rows` rows, the columns a
  record may read."""

  def __init__(self, columns, chunk_rows: int):
    self._columns = columns
    self._chunk_rows = chunk_rows

  def process(self, group: RowGroup):
    handle, parquet_file = _open(group.path)
    with handle:
      columns = _read_columns(group.path, parquet_file.schema_arrow,
                              self._columns)
      rows_in_group = parquet_file.metadata.row_group(group.index).num_rows
      batches = parquet_file.iter_batches(
          batch_size=self._chunk_rows, row_groups=[group.index],
          columns=columns)
      first_row_number = group.first_row_number
      while True:
        try:
          rows = next(batches, None)
        except _PARQUET_ERRORS as error:
          raise _not_parquet(group.path, error) from None
        if rows is None:
          return
        yield RowChunk(group.path, first_row_number, rows,
                       group.input_bytes * rows.num_rows //
                       max(rows_in_group, 1))
        first_row_number += rows.num_rows
