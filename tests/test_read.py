"""transforms/read.py: lines of an input file, whole or refused."""

import io
import os
from unittest import mock

import pytest
from apache_beam.io.filesystem import CompressionTypes
from hypothesis import given
from hypothesis import strategies as st

from compressed_inputs import COMPRESSORS, RECORDS_PER_FILE
from apache_beam.io.filesystem import FileMetadata
from sftbeam.transforms.read import (CorruptInputError, DecompressingReader,
                                     ListLineRangesFn, ReadLineRangeFn,
                                     corrupt_input_message, iter_lines)
from sftbeam.transforms.records import MAX_RAW_CHARS
from strategies import EXAMPLES


def test_iter_lines_strips_newlines_and_caps_long_lines():
  data = b'a\r\nbb\n' + b'x' * 50 + b'\nlast'
  lines = list(iter_lines(io.BytesIO(data), max_line_bytes=10))
  assert lines == [(b'a', 1), (b'bb', 2), (b'x' * 10, 50), (b'last', 4)]


def test_iter_lines_long_line_across_blocks(monkeypatch):
  monkeypatch.setattr('sftbeam.transforms.read._READ_BLOCK_BYTES', 4)
  lines = list(iter_lines(io.BytesIO(b'0123456789abc\nok\n'), 5))
  assert lines == [(b'01234', 13), (b'ok', 2)]


line_contents = st.lists(
    st.tuples(st.binary(max_size=30).map(
        lambda data: data.replace(b'\n', b'').replace(b'\r', b'')),
              st.booleans()),  # CRLF?
    max_size=10)


@EXAMPLES
@given(lines=line_contents, final_newline=st.booleans(),
       max_line_bytes=st.integers(1, 25), block_bytes=st.integers(1, 16))
def test_iter_lines_properties(lines, final_newline, max_line_bytes,
                               block_bytes):
  data = b''.join(content + (b'\r\n' if crlf else b'\n')
                  for content, crlf in lines)
  if lines and not final_newline:
    data = data[:-2 if lines[-1][1] else -1]
  with mock.patch('sftbeam.transforms.read._READ_BLOCK_BYTES', block_bytes):
    got = list(iter_lines(io.BytesIO(data), max_line_bytes))
  if lines and not final_newline and not lines[-1][0]:
    lines = lines[:-1]  # "a\n" + "" is one line, not two
  assert len(got) == len(lines)
  for (content, crlf), (line, total) in zip(lines, got):
    if len(content) <= max_line_bytes:
      assert (line, total) == (content, len(content))
    else:
      # Over the limit whatever the block boundaries; only a prefix kept.
      assert line == content[:min(max_line_bytes, MAX_RAW_CHARS)]
      assert total in ((len(content), len(content) + 1) if crlf
                       else (len(content),))


def test_every_cut_point_is_refused(gsm8k_head):
  """The reader itself, at many cut points of every compression."""
  kinds = {'gz': CompressionTypes.GZIP, 'bz2': CompressionTypes.BZIP2,
           'deflate': CompressionTypes.DEFLATE, 'xz': CompressionTypes.LZMA,
           'lzma': CompressionTypes.LZMA, 'zst': CompressionTypes.ZSTD,
           'zstd': CompressionTypes.ZSTD}
  for extension, compress in COMPRESSORS.items():
    data = compress(gsm8k_head)
    whole = list(iter_lines(DecompressingReader(io.BytesIO(data),
                                                kinds[extension], 'f'), 1000))
    assert len(whole) == RECORDS_PER_FILE
    for cut in sorted({0, 1, 10, len(data) - 1} |
                      set(range(0, len(data), max(1, len(data) // 16)))):
      reader = DecompressingReader(io.BytesIO(data[:cut]), kinds[extension],
                                   'f')
      with pytest.raises(CorruptInputError, match='f is cut short'):
        list(iter_lines(reader, 1000))


def test_error_text_from_a_worker_becomes_one_line():
  """Raised in another process, only the traceback's text reaches the CLI."""
  remote_text = ('Traceback (most recent call last):\n  File "x.py"\n'
                 'sftbeam.transforms.read.CorruptInputError: input a.gz is '
                 "cut short [while running 'ReadInput/ReadChunks']\n")
  assert corrupt_input_message(RuntimeError(remote_text)) == (
      'input a.gz is cut short')
  assert corrupt_input_message(RuntimeError('something else')) is None


def _lines_read(path: str, ranges: int, monkeypatch, block_bytes: int):
  """Every (line number, bytes, total) of `path` read as `ranges` ranges,
  each range read alone, in range order."""
  monkeypatch.setattr('sftbeam.transforms.read._READ_BLOCK_BYTES',
                      block_bytes)
  metadata = FileMetadata(path, os.path.getsize(path))
  lines = []
  for line_range in ListLineRangesFn(ranges).process(metadata):
    for chunk in ReadLineRangeFn(3, 12).process(line_range):
      lines += chunk.lines
  return lines


@pytest.mark.parametrize('data', [
    b'a\nbb\n\n' + b'x' * 40 + b'\nccc\r\nd\n',
    b'one line without a newline',
    b'\n\n\n\n\n',
    b'x' * 30 + b'\n' + b'y\n' * 7 + b'z' * 25,
])
@pytest.mark.parametrize('ranges', [2, 3, 5, 16, 97])
def test_byte_ranges_read_every_line_once_numbered_as_the_file(
    tmp_path, monkeypatch, data, ranges):
  """Whatever the cuts (inside a line, on a newline, inside a CRLF, in an
  over-long line; more ranges than lines), the ranges give the file's
  lines, each once, with the file's line numbers."""
  path = str(tmp_path / 'in.jsonl')
  with open(path, 'wb') as handle:
    handle.write(data)
  whole = _lines_read(path, 1, monkeypatch, 1 << 20)
  assert [number for number, _, _ in whole] == list(
      range(1, len(whole) + 1))
  for block_bytes in (4, 1 << 20):
    assert _lines_read(path, ranges, monkeypatch, block_bytes) == whole
