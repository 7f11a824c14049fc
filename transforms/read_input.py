"""Reading the input files, each by its format.

  patterns -> MatchFiles -> ByFormat -> ReadLines: LineChunks (JSON lines)
                                     -> ReadRows: RowChunks (Parquet)

Patterns are matched when the pipeline runs (never at graph construction),
through Beam's FileSystems, so local paths and gs:// work alike. A file
whose name ends in `.parquet` is read as Parquet (transforms/read_parquet.py),
any other as JSON lines, compressed by its extension or not
(transforms/read.py); one run may mix both.
"""

import apache_beam as beam
from apache_beam.io import fileio

from sftbeam.transforms.batch import BATCHING_STRATEGIES
from sftbeam.transforms.read import ReadLineChunks
from sftbeam.transforms.read_parquet import ReadParquetRows, is_parquet


class ReadInput(beam.PTransform):
  """Glob patterns -> {'lines': LineChunks, 'rows': RowChunks}.

  Takes a pipeline root. `chunk_lines` lines, or rows, per chunk; longer
  lines than `max_line_bytes` are cut (and rejected by the parser);
  `columns`: the Parquet columns a record may read (parse.record_columns).
  With `batching` "global", chunks (Parquet: row groups) are spread over
  the workers.
  """

  def __init__(self, patterns, chunk_lines: int, max_line_bytes: int,
               columns, batching: str = 'global'):
    super().__init__()
    if batching not in BATCHING_STRATEGIES:
      raise ValueError(f'unknown batching {batching!r}')
    self._patterns = list(patterns)
    self._chunk_lines = chunk_lines
    self._max_line_bytes = max_line_bytes
    self._columns = tuple(columns)
    self._batching = batching

  def expand(self, pbegin):
    lines, parquet = (
        pbegin
        | 'Patterns' >> beam.Create(self._patterns)
        | 'MatchFiles' >> fileio.MatchAll()
        | 'ByFormat' >> beam.Partition(
            lambda metadata, _: int(is_parquet(metadata.path)), 2))
    return {
        'lines': lines | 'ReadLines' >> ReadLineChunks(
            self._chunk_lines, self._max_line_bytes, self._batching),
        'rows': parquet | 'ReadRows' >> ReadParquetRows(
            self._columns, self._chunk_lines, self._batching),
    }
