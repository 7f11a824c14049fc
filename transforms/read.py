"""Reading input files as chunks of raw lines.

Lines are read as bytes (decoding is the parser's job, so one invalid byte
costs one record, not the run) and grouped into chunks, so that every later
step handles thousands of records per element instead of one.
"""

import apache_beam as beam
from apache_beam.io import fileio

from sftbeam.transforms.batch import BATCHING_STRATEGIES
from sftbeam.transforms.records import MAX_RAW_CHARS, LineChunk

_READ_BLOCK_BYTES = 1 << 20


def iter_lines(handle, max_line_bytes: int):
  """Yields (line_bytes, total_bytes) for each line of a binary handle.

  The newline (LF or CRLF) is removed. A line longer than `max_line_bytes`
  is yielded as its first `max_line_bytes` (at most MAX_RAW_CHARS) bytes
  only, all that its rejection shows, with its real size; the rest is
  skipped without being held in memory.
  """
  pending = b''
  skipped = 0  # bytes of an over-long line already dropped
  while True:
    block = handle.read(_READ_BLOCK_BYTES)
    if not block:
      break
    pending += block
    start = 0
    while True:
      end = pending.find(b'\n', start)
      if end < 0:
        break
      line = pending[start:end]
      yield _finish_line(line, skipped, max_line_bytes)
      skipped = 0
      start = end + 1
    pending = pending[start:]
    # One byte over the limit is kept: it may be the CR of a CRLF line of
    # exactly max_line_bytes, which must not count as too long.
    if len(pending) > max_line_bytes + 1:
      skipped += len(pending) - max_line_bytes - 1
      pending = pending[:max_line_bytes + 1]
  if pending or skipped:
    yield _finish_line(pending, skipped, max_line_bytes)


def _finish_line(line: bytes, skipped: int, max_line_bytes: int):
  if line.endswith(b'\r') and not skipped:
    line = line[:-1]
  total = len(line) + skipped
  if total > max_line_bytes:
    # Rejected unread: carry only what the rejected output shows.
    line = line[:min(max_line_bytes, MAX_RAW_CHARS)]
  return line, total


class _ReadLineChunksFn(beam.DoFn):
  """ReadableFile -> LineChunk of up to `chunk_lines` lines each."""

  def __init__(self, chunk_lines: int, max_line_bytes: int):
    self._chunk_lines = chunk_lines
    self._max_line_bytes = max_line_bytes

  def process(self, readable_file):
    source = readable_file.metadata.path
    lines = []
    with readable_file.open() as handle:
      for line_number, (line, total) in enumerate(
          iter_lines(handle, self._max_line_bytes), start=1):
        lines.append((line_number, line, total))
        if len(lines) == self._chunk_lines:
          yield LineChunk(source, lines)
          lines = []
    if lines:
      yield LineChunk(source, lines)


class ReadLineChunks(beam.PTransform):
  """Glob patterns -> LineChunks of every matched file, spread over workers.

  Takes a pipeline root; gives a PCollection of `LineChunk`. Patterns are
  matched when the pipeline runs (never at graph construction), through
  Beam's FileSystems, so local paths and gs:// work alike; .gz/.bz2 files
  are decompressed by extension.
  """

  def __init__(self, patterns, chunk_lines: int, max_line_bytes: int,
               batching: str = 'global'):
    """With `batching` "global", chunks are reshuffled across workers."""
    super().__init__()
    if batching not in BATCHING_STRATEGIES:
      raise ValueError(f'unknown batching {batching!r}')
    self._patterns = list(patterns)
    self._chunk_lines = chunk_lines
    self._max_line_bytes = max_line_bytes
    self._batching = batching

  def expand(self, pbegin):
    chunks = (
        pbegin
        | 'Patterns' >> beam.Create(self._patterns)
        | 'MatchFiles' >> fileio.MatchAll()
        | 'OpenFiles' >> fileio.ReadMatches()
        | 'ReadChunks' >> beam.ParDo(
            _ReadLineChunksFn(self._chunk_lines, self._max_line_bytes)))
    if self._batching == 'bundle':
      return chunks
    # One file yields many chunks: spread them so that tokenizing runs on
    # every worker, not only on the one that read the file.
    return chunks | 'SpreadChunks' >> beam.Reshuffle()


def message_to_chunk(message, source: str, max_line_bytes: int) -> LineChunk:
  """A Pub/Sub message -> a LineChunk of one line, the message body.

  Streaming reads one record per message. Its `source` is
  `<subscription or topic>#<message id>` and its line number is None. A
  body over max_line_bytes is cut like a long file line, its real size
  kept, so the parser rejects it as line_too_long.
  """
  data = message.data
  return LineChunk(f'{source}#{message.message_id}',
                   [(None, data[:max_line_bytes], len(data))])
