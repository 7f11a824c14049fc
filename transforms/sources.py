"""A mixture's sources read as one stream: each chunk parsed with its own
source's fields and tokenized, in one step for every source.

  LineChunks, RowChunks (every source's files, one ReadInput)
    -> ParseAndTokenizeSources -> (source name, TokenChunk)

One step rather than a branch per source joined by a Flatten: the local
runner holds a Flatten of several branches in memory, every record of the
run at once (docs/performance.md), and here the sources' records reach
SplitAndCopy without meeting in one.
"""

from typing import Dict, Iterable, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from sftbeam.transforms.mixture import Source
from sftbeam.transforms.parse import ParseChunks, record_columns
from sftbeam.transforms.records import LineChunk, RowChunk, TokenChunk
from sftbeam.transforms.stats import emit, per_source, rejection_stats
from sftbeam.transforms.tokenize import TokenizeRecords, TokenizeSettings


def sources_columns(sources: Sequence[Source]) -> tuple:
  """The Parquet columns a record of any of the `sources` may read."""
  return tuple(dict.fromkeys(column for source in sources
                             for column in record_columns(source.fields)))


def files_by_source(sources: Sequence[Source]) -> Dict[str, str]:
  """Every input file's path -> the name of the source it belongs to.

  Raises ValueError for a file two sources both match: its records would
  be read twice under two names.
  """
  owner = {}
  for source in sources:
    for pattern in source.input:
      for metadata in FileSystems.match([pattern])[0].metadata_list:
        other = owner.setdefault(metadata.path, source.name)
        if other != source.name:
          raise ValueError(f'{metadata.path} is an input of two sources, '
                           f'{other} and {source.name}: give each file to '
                           'one source')
  return owner


def prefixed(chunk: TokenChunk, source: Source) -> TokenChunk:
  """The TokenChunk with the source's prefix on its ids."""
  if not source.id_prefix:
    return chunk
  return chunk.renamed(source.id_prefix + example_id
                       for example_id in chunk.example_ids)


class ParseAndTokenizeSources(beam.DoFn):
  """LineChunk or RowChunk of a source's file -> (source name, TokenChunk)
  with the source's prefix on its ids; Rejected records on `rejected`;
  stats on `stats`, every count also counted as its source's
  (stats.per_source), rejections by reason among them."""
  REJECTED = TokenizeRecords.REJECTED
  STATS = TokenizeRecords.STATS

  def __init__(self, sources: Sequence[Source], settings: TokenizeSettings,
               max_line_bytes: int, input_format: str):
    self._sources = {source.name: source for source in sources}
    self._parsers = {source.name: ParseChunks(source.fields, max_line_bytes,
                                              input_format)
                     for source in sources}
    self._tokenize = TokenizeRecords(settings)
    self._source_of = None

  def setup(self):
    self._tokenize.setup()
    self._source_of = files_by_source(list(self._sources.values()))

  def teardown(self):
    self._tokenize.teardown()

  def process(self, chunk: Union[LineChunk, RowChunk]
              ) -> Iterable[Tuple[str, TokenChunk]]:
    source = self._sources[self._source_of[chunk.source]]
    for parsed in self._parsers[source.name].process(chunk):
      if isinstance(parsed, beam.pvalue.TaggedOutput):
        yield from self._counted(parsed, source.name)
        continue
      for tokenized in self._tokenize.process(parsed):
        if isinstance(tokenized, beam.pvalue.TaggedOutput):
          yield from self._counted(tokenized, source.name)
        else:
          yield source.name, prefixed(tokenized, source)

  def _counted(self, tagged: beam.pvalue.TaggedOutput, name: str):
    """A rejection or stats output of parsing or tokenizing, its counts
    made the source's too (a rejection also counted by its reason)."""
    if tagged.tag == self.STATS:
      yield beam.pvalue.TaggedOutput(self.STATS,
                                     per_source(tagged.value, name))
      return
    yield tagged
    yield emit(self.STATS, per_source(rejection_stats(tagged.value), name))
