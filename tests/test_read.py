"""transforms/read.py: lines of an input file."""

import io

from sftbeam.transforms.read import iter_lines


def test_iter_lines_strips_newlines_and_caps_long_lines():
  data = b'a\r\nbb\n' + b'x' * 50 + b'\nlast'
  lines = list(iter_lines(io.BytesIO(data), max_line_bytes=10))
  assert lines == [(b'a', 1), (b'bb', 2), (b'x' * 10, 50), (b'last', 4)]


def test_iter_lines_long_line_across_blocks(monkeypatch):
  monkeypatch.setattr('sftbeam.transforms.read._READ_BLOCK_BYTES', 4)
  lines = list(iter_lines(io.BytesIO(b'0123456789abc\nok\n'), 5))
  assert lines == [(b'01234', 13), (b'ok', 2)]
