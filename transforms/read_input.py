"""Reading the input files, each by its format, as one PCollection of
chunks.

  patterns -> MatchFiles -> ListParts -> (SpreadParts) -> ReadParts
    a JSON-lines file: LineRanges (transforms/read.py) -> LineChunks
    a Parquet file: RowGroups (transforms/read_parquet.py) -> RowChunks

Patterns are matched when the pipeline runs (never at graph construction),
through Beam's FileSystems, so local paths and gs:// work alike. A file
whose name ends in `.parquet` is read as Parquet, any other as JSON lines,
compressed by its extension or not; one run may mix both.

Both formats come out of one step, so that the records flow into parsing
and tokenizing without a Flatten: Beam's local runner materializes a
Flatten of two steps' outputs, holding every element in memory and, on
several workers, sending it through the runner's process.
"""

import apache_beam as beam
from apache_beam.io import fileio

from sftbeam.transforms.batch import BATCHING_STRATEGIES
from sftbeam.transforms.read import LineRange, ListLineRangesFn, ReadLineRangeFn
from sftbeam.transforms.read_parquet import (ListRowGroupsFn, ReadRowGroupFn,
                                             is_parquet)


class _ListPartsFn(beam.DoFn):
  """FileMetadata -> the parts a worker reads: LineRanges of a JSON-lines
  file, RowGroups of a Parquet file."""

  def __init__(self, columns, ranges_per_file: int):
    self._row_groups = ListRowGroupsFn(columns)
    self._line_ranges = ListLineRangesFn(ranges_per_file)

  def process(self, metadata):
    if is_parquet(metadata.path):
      return self._row_groups.process(metadata)
    return self._line_ranges.process(metadata)


class _ReadPartFn(beam.DoFn):
  """LineRange -> LineChunks; RowGroup -> RowChunks."""

  def __init__(self, chunk_lines: int, max_line_bytes: int, columns):
    self._lines = ReadLineRangeFn(chunk_lines, max_line_bytes)
    self._rows = ReadRowGroupFn(columns, chunk_lines)

  def process(self, part):
    if isinstance(part, LineRange):
      return self._lines.process(part)
    return self._rows.process(part)


class ReadInput(beam.PTransform):
  """Glob patterns -> LineChunks (JSON lines) and RowChunks (Parquet).

  Takes a pipeline root. `chunk_lines` lines, or rows, per chunk; longer
  lines than `max_line_bytes` are cut (and rejected by the parser);
  `columns`: the Parquet columns a record may read (parse.record_columns).
  With `batching` "global", the parts (files, row groups) and then the
  chunks are spread over the workers. With "bundle" and `workers` over 1
  (a local run on several processes), each uncompressed JSON-lines file is
  cut into `workers` byte ranges, and the ranges and row groups are spread:
  each worker reads its share, and the records never cross processes.
  """

  def __init__(self, patterns, chunk_lines: int, max_line_bytes: int,
               columns, batching: str = 'global', workers: int = 1):
    super().__init__()
    if batching not in BATCHING_STRATEGIES:
      raise ValueError(f'unknown batching {batching!r}')
    self._patterns = list(patterns)
    self._chunk_lines = chunk_lines
    self._max_line_bytes = max_line_bytes
    self._columns = tuple(columns)
    self._batching = batching
    self._ranges_per_file = workers if batching == 'bundle' else 1

  def expand(self, pbegin):
    parts = (
        pbegin
        | 'Patterns' >> beam.Create(self._patterns)
        | 'MatchFiles' >> fileio.MatchAll()
        | 'ListParts' >> beam.ParDo(
            _ListPartsFn(self._columns, self._ranges_per_file)))
    if self._batching == 'global' or self._ranges_per_file > 1:
      parts = parts | 'SpreadParts' >> beam.Reshuffle()
    chunks = parts | 'ReadParts' >> beam.ParDo(
        _ReadPartFn(self._chunk_lines, self._max_line_bytes, self._columns))
    if self._batching == 'bundle':
      return chunks
    # One file yields many chunks: spread them so that tokenizing runs on
    # every worker, not only on the one that read the file.
    return chunks | 'SpreadChunks' >> beam.Reshuffle()
