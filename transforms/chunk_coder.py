"""The coder of the chunks that flow between steps: pickled, as Beam's
default coder would, but sized without being encoded.

A Beam worker keeps a mean-bytes metric of every PCollection a step
outputs: it encodes the first 10 elements, then about 10 of every N, only
to measure them. A chunk holds thousands of records (megabytes), so that
sampling pickled about 580 MB in a local run of 1M records, 0.27 s of its
main thread (docs/performance.md). `ChunkCoder.estimate_size` adds up the
chunk's arrays' bytes and its strings' lengths instead; encoding, where a
chunk does cross processes, is pickle as before.

The module of a step that gives chunks registers their type (`register`),
and the step declares its output type (an annotation of `process`, or
`beam.typehints.with_output_types`), so that Beam picks this coder for
its PCollection.
"""

import pickle
from typing import Any

import apache_beam as beam

# A longer list is sized from this many of its first items.
_SIZED_ITEMS = 16


def estimated_size(value) -> int:
  """About the bytes `value` pickles to: its arrays' bytes (numpy's, and a
  Parquet chunk's Arrow rows), its strings' and bytes' lengths, 8 a number;
  a long list sized from its first items."""
  nbytes = getattr(value, 'nbytes', None)
  if isinstance(nbytes, int):
    return nbytes
  if isinstance(value, (str, bytes)):
    return len(value)
  if isinstance(value, list) and len(value) > _SIZED_ITEMS:
    sized = sum(map(estimated_size, value[:_SIZED_ITEMS]))
    return sized * len(value) // _SIZED_ITEMS
  if isinstance(value, (list, tuple)):
    return sum(map(estimated_size, value))
  return 8


class ChunkCoder(beam.coders.Coder):
  """Pickles a chunk; estimates its size without encoding it."""

  def encode(self, value) -> bytes:
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

  def decode(self, encoded: bytes):
    return pickle.loads(encoded)

  def estimate_size(self, value) -> int:
    return estimated_size(value)

  def is_deterministic(self) -> bool:
    return False

  def to_type_hint(self):
    return Any


def register(chunk_type: type):
  """Makes ChunkCoder the coder of PCollections of `chunk_type`."""
  beam.coders.registry.register_coder(chunk_type, ChunkCoder)
