"""Reading JSON-lines input files as chunks of raw lines.

A file is read whole (`LineRange` with end None), or, to share it among
local workers, as byte ranges: each range holds the lines that start in
it, numbered as in the whole file.

Lines are read as bytes (decoding is the parser's job, so one invalid byte
costs one record, not the run) and grouped into chunks, so that every later
step handles thousands of records per element instead of one.

A compressed file (Beam's compression types, by extension) is decompressed
here, not by Beam's reader, which takes a stream that stops early for a
complete one: a file cut short or corrupt fails the run (`CorruptInputError`)
instead of losing its end without a word.
"""

import bz2
import contextlib
import lzma
import re
import zlib
from typing import NamedTuple, Optional, Tuple

import apache_beam as beam
import zstandard
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from sftbeam.transforms.records import MAX_RAW_CHARS, LineChunk

_READ_BLOCK_BYTES = 1 << 20
# Compressed bytes given to a decompressor at a time: what one step can
# expand in memory is this times the compression ratio.
_COMPRESSED_PIECE_BYTES = 1 << 16


class CorruptInputError(IOError):
  """An input file cannot be read whole: its compressed data ends early or
  is corrupt, or it is not a Parquet file sftbeam can read (cut short,
  corrupt, a column of a type JSON lacks: transforms/read_parquet.py). The
  run fails; the CLI prints the message as one line."""


_STEP_ANNOTATION = re.compile(r" \[while running '[^']*'\]")
_CORRUPT_INPUT_LINE = re.compile(CorruptInputError.__name__ + r': (.+)')


def corrupt_input_message(error: BaseException):
  """The message of the CorruptInputError that failed a run, or None.

  Raised in this process, Beam re-raises it with the step's name added;
  raised in a worker process or on Dataflow, only its text travels, inside
  the runner's own exception.
  """
  if isinstance(error, CorruptInputError):
    text = str(error)
  else:
    found = _CORRUPT_INPUT_LINE.search(str(error))
    if not found:
      return None
    text = found.group(1)
  return _STEP_ANNOTATION.sub('', text).strip()


def _new_decompressor(compression: str):
  """A decompressor object of one stream: `decompress`, `eof`, `unused_data`."""
  if compression == CompressionTypes.GZIP:
    return zlib.decompressobj(zlib.MAX_WBITS | 16)
  if compression == CompressionTypes.DEFLATE:
    return zlib.decompressobj()
  if compression == CompressionTypes.BZIP2:
    return bz2.BZ2Decompressor()
  if compression == CompressionTypes.LZMA:
    return lzma.LZMADecompressor()
  if compression == CompressionTypes.ZSTD:
    # Beam's own window limit, so that what Beam reads, this reads.
    return zstandard.ZstdDecompressor(
        max_window_size=1 << 31).decompressobj()
  raise ValueError(f'unknown compression {compression!r}')


# What the decompressors raise on data that is not a valid stream.
_CORRUPT_DATA_ERRORS = (OSError, ValueError, EOFError, zlib.error,
                        lzma.LZMAError, zstandard.ZstdError)


def _corrupt(path: str, compression: str, problem) -> CorruptInputError:
  return CorruptInputError(
      f'input {path} is cut short or corrupt ({compression}: {problem}); '
      'restore the file and run again')


def _decompress(decompressor, data: bytes, compression: str, path: str):
  try:
    return decompressor.decompress(data)
  except _CORRUPT_DATA_ERRORS as error:
    raise _corrupt(path, compression, error) from None


def _decompressed_blocks(raw, compression: str, path: str):
  """Yields the decompressed bytes of a binary handle, block by block.

  Streams that follow each other (files joined with `cat`) are read one
  after the other, as Beam reads them. Raises CorruptInputError, naming
  `path`, where the data is corrupt or ends inside a stream (an empty file
  included); errors reading `raw` itself pass unchanged.
  """
  decompressor = _new_decompressor(compression)
  while True:
    data = raw.read(_COMPRESSED_PIECE_BYTES)
    if not data:
      break
    while data:
      if decompressor.eof:
        decompressor = _new_decompressor(compression)
      yield _decompress(decompressor, data, compression, path)
      data = decompressor.unused_data if decompressor.eof else b''
  if not decompressor.eof:
    raise _corrupt(path, compression,
                   'the data ends before the end of its stream')


class DecompressingReader:
  """A compressed binary handle read as its decompressed bytes (`read`);
  raises CorruptInputError as `_decompressed_blocks` does."""

  def __init__(self, raw, compression: str, path: str):
    self._raw = raw
    self._blocks = _decompressed_blocks(raw, compression, path)
    self._block = b''
    self._offset = 0  # in _block, of the first byte not yet read

  def read(self, size: int) -> bytes:
    """Up to `size` decompressed bytes; b'' at the end."""
    while self._offset == len(self._block):
      block = next(self._blocks, None)
      if block is None:
        return b''
      self._block, self._offset = block, 0
    piece = self._block[self._offset:self._offset + size]
    self._offset += len(piece)
    return piece

  def close(self):
    self._raw.close()


def _decompressing(raw, path: str):
  """A binary handle of an input file's decompressed bytes, from one of
  its raw bytes."""
  compression = CompressionTypes.detect_compression_type(path)
  if compression == CompressionTypes.UNCOMPRESSED:
    return raw
  return DecompressingReader(raw, compression, path)


def iter_lines(handle, max_line_bytes: int):
  """Yields (line_bytes, total_bytes) for each line of a binary handle.

  The newline (LF or CRLF) is removed. A line longer than `max_line_bytes`
  is yielded as its first `max_line_bytes` (at most MAX_RAW_CHARS) bytes
  only, all that its rejection shows, with its real size; the rest is
  skipped without being held in memory.
  """
  for lines in _line_blocks(handle, max_line_bytes):
    yield from lines


def _line_blocks(handle, max_line_bytes: int):
  """iter_lines' (line_bytes, total_bytes), as one list per block read:
  a block's lines are split at once, and only a block holding a CR or a
  line over the limit is looked at line by line."""
  pending = b''
  skipped = 0  # bytes of an over-long line already dropped
  while True:
    block = handle.read(_READ_BLOCK_BYTES)
    if not block:
      break
    pending += block
    end = pending.rfind(b'\n')
    if end >= 0:
      whole, pending = pending[:end], pending[end + 1:]
      lines = whole.split(b'\n')
      first = [_finish_line(lines[0], skipped, max_line_bytes)]
      skipped = 0
      yield first + _finish_lines(lines[1:], max_line_bytes,
                                  may_end_in_cr=b'\r' in whole)
    # One byte over the limit is kept: it may be the CR of a CRLF line of
    # exactly max_line_bytes, which must not count as too long.
    if len(pending) > max_line_bytes + 1:
      skipped += len(pending) - max_line_bytes - 1
      pending = pending[:max_line_bytes + 1]
  if pending or skipped:
    yield [_finish_line(pending, skipped, max_line_bytes)]


def _finish_lines(lines, max_line_bytes: int, may_end_in_cr: bool) -> list:
  """_finish_line of each of these whole lines (none skipped);
  `may_end_in_cr`: whether their bytes hold a CR."""
  lengths = list(map(len, lines))
  if lines and (may_end_in_cr or max(lengths) > max_line_bytes):
    return [_finish_line(line, 0, max_line_bytes) for line in lines]
  return list(zip(lines, lengths))


def _finish_line(line: bytes, skipped: int, max_line_bytes: int):
  if line.endswith(b'\r') and not skipped:
    line = line[:-1]
  total = len(line) + skipped
  if total > max_line_bytes:
    # Rejected unread: carry only what the rejected output shows.
    line = line[:min(max_line_bytes, MAX_RAW_CHARS)]
  return line, total


def _line_chunks(source: str, handle, first_number: int, chunk_lines: int,
                 max_line_bytes: int):
  """Yields LineChunks of a handle's lines, the first numbered
  `first_number`."""
  lines = []
  number = first_number
  for block in _line_blocks(handle, max_line_bytes):
    lines += [(number + index, line, total)
              for index, (line, total) in enumerate(block)]
    number += len(block)
    while len(lines) >= chunk_lines:
      yield LineChunk(source, lines[:chunk_lines])
      lines = lines[chunk_lines:]
  if lines:
    yield LineChunk(source, lines)


class LineRange(NamedTuple):
  """The lines of a file that start in bytes [start, end), to be read by
  one worker; end None: the whole file, decompressed by its extension."""
  path: str
  start: int
  end: Optional[int]


class ListLineRangesFn(beam.DoFn):
  """FileMetadata -> `ranges` LineRanges of about equal bytes; one, the
  whole file, when `ranges` is 1 or the file is compressed (its bytes
  cannot be entered in the middle)."""

  def __init__(self, ranges: int):
    self._ranges = ranges

  def process(self, metadata):
    path, size = metadata.path, metadata.size_in_bytes
    if self._ranges == 1 or (CompressionTypes.detect_compression_type(path)
                             != CompressionTypes.UNCOMPRESSED):
      yield LineRange(path, 0, None)
      return
    bounds = [size * part // self._ranges for part in range(self._ranges)]
    for start, end in zip(bounds, bounds[1:] + [size]):
      if end > start:
        yield LineRange(path, start, end)


class _RangeReader:
  """A binary handle read from `first` (a line start) through the end of
  the line holding byte `end - 1`: the lines that start before `end`."""

  def __init__(self, handle, first: int, end: int):
    handle.seek(first)
    self._handle = handle
    self._left = end - first  # bytes before `end`
    self._in_line = False  # whether the last byte read was no newline

  def read(self, size: int) -> bytes:
    if self._left > 0:
      block = self._handle.read(min(size, self._left))
      self._left -= len(block)
      self._in_line = bool(block) and not block.endswith(b'\n')
      return block
    if not self._in_line:
      return b''
    # Past `end`, inside a line that started before it: read to its end.
    block = self._handle.read(size)
    cut = block.find(b'\n')
    if cut >= 0 or not block:
      self._in_line = False
      block = block[:cut + 1] if cut >= 0 else block
    return block


def _first_line_start(handle, start: int) -> Tuple[int, int]:
  """(offset of the first line starting at or after `start`, its line
  number): every newline before it is counted, so that line numbers are
  the file's whichever worker reads which range."""
  newlines, offset = 0, 0
  handle.seek(0)
  while offset < start:
    block = handle.read(min(_READ_BLOCK_BYTES, start - offset))
    if not block:
      return offset, newlines + 1
    newlines += block.count(b'\n')
    offset += len(block)
  if start == 0 or _ends_line(handle, start):
    return start, newlines + 1
  while True:  # inside a line that an earlier range reads: skip it
    block = handle.read(_READ_BLOCK_BYTES)
    cut = block.find(b'\n')
    if cut >= 0:
      return offset + cut + 1, newlines + 2
    if not block:
      return offset, newlines + 1
    offset += len(block)


def _ends_line(handle, start: int) -> bool:
  """Whether byte `start - 1` is a newline; leaves the handle at `start`."""
  handle.seek(start - 1)
  return handle.read(1) == b'\n'


class ReadLineRangeFn(beam.DoFn):
  """LineRange -> LineChunks of up to `chunk_lines` of its lines."""

  def __init__(self, chunk_lines: int, max_line_bytes: int):
    self._chunk_lines = chunk_lines
    self._max_line_bytes = max_line_bytes

  def process(self, line_range: LineRange):
    path = line_range.path
    raw = FileSystems.open(path, 'application/octet-stream',
                           compression_type=CompressionTypes.UNCOMPRESSED)
    if line_range.end is None:
      with contextlib.closing(_decompressing(raw, path)) as handle:
        yield from _line_chunks(path, handle, 1, self._chunk_lines,
                                self._max_line_bytes)
      return
    with contextlib.closing(raw):
      first, first_number = _first_line_start(raw, line_range.start)
      if first >= line_range.end:
        return
      yield from _line_chunks(
          path, _RangeReader(raw, first, line_range.end), first_number,
          self._chunk_lines, self._max_line_bytes)


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
