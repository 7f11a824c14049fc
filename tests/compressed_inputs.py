"""Compressed inputs: each compression the readers take, and how many lines
of gsm8k_test the tests compress (conftest's `gsm8k_head`)."""

import bz2
import gzip
import lzma
import zlib

import zstandard

RECORDS_PER_FILE = 200
COMPRESSORS = {
    'gz': gzip.compress,
    'bz2': bz2.compress,
    'deflate': zlib.compress,
    'xz': lzma.compress,
    'lzma': lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE),
    'zst': zstandard.ZstdCompressor().compress,
    'zstd': zstandard.ZstdCompressor(write_checksum=True).compress,
}
