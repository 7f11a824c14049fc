"""Mixtures and the validation split: which tokenized records are written,
how many times, and to which split (docs/mixtures.md).

  (source name, TokenChunk) -> SplitAndCopy -> {'train': TokenChunks,
                                                'validation': TokenChunks,
                                                'train_stats',
                                                'validation_stats'}

  Validation  per source, of its n records that were not rejected, the
              round(F * n) with the smallest split key: (a hash of seed,
              source name and record id; then a hash of the record's
              tokens, so records sharing an id are told apart). Records
              alike in both (same id, same tokens) are interchangeable:
              which of them goes is settled by a group of those alone.
  Copies      a train record of a source of weight w = k + f is written k
              times, and once more when another hash of (seed, name, id)
              is below f; copies 2, 3, ... get the ids "<id>~2", "~3", ...
              Weight 0 drops the source (from both splits).

Every decision is a function of (seed, source, record id, tokens): never
of the order of lines or files, the runner or the number of workers.
"""

import hashlib
import heapq
import math
from typing import Dict, Iterable, NamedTuple, Optional, Tuple

import apache_beam as beam
import numpy as np

from sftbeam.transforms import filenames
from sftbeam.transforms.parse import FieldNames
from sftbeam.transforms.records import TokenChunk
from sftbeam.transforms.stats import emit, split_stats

SPLITS = (filenames.TRAIN, filenames.VALIDATION)
# What each hash is for: the two decisions draw independent hashes.
_SPLIT, _COPY = 'split', 'copy'


class Source(NamedTuple):
  """One input of a run: its name, globs, weight and record fields.

  `id_prefix` goes before its example ids: "<name>:" in a mixture, so
  sources may share ids; "" for a run's plain --input.
  """
  name: str
  input: Tuple[str, ...]
  weight: float = 1.0
  fields: FieldNames = FieldNames()
  id_prefix: str = ''


SplitKey = Tuple[float, str]


class Boundary(NamedTuple):
  """The largest split key of a source that goes to validation; of the
  records with exactly that key, `taken` of `alike` go."""
  key: SplitKey
  taken: int
  alike: int


def unit_hash(purpose: str, seed: int, name: str, record_id: str) -> float:
  """A uniform float in [0, 1) from blake2b of (purpose, seed, name, id):
  the same on every machine and Python (never Python's hash())."""
  text = f'{purpose}\0{seed}\0{name}\0{record_id}'
  digest = hashlib.blake2b(text.encode('utf-8', 'surrogatepass'),
                           digest_size=8).digest()
  return (int.from_bytes(digest, 'big') >> 11) / float(1 << 53)


def copy_count(weight: float, seed: int, name: str, record_id: str) -> int:
  """How many times a train record is written: k = floor(weight), plus one
  when its copy hash is below the fraction f = weight - k."""
  whole = math.floor(weight)
  return whole + int(unit_hash(_COPY, seed, name, record_id) < weight - whole)


def copy_id(example_id: str, copy: int) -> str:
  """The id of copy `copy` (1: the record itself) of an example."""
  return example_id if copy == 1 else f'{example_id}~{copy}'


def validation_count(fraction: float, records: int) -> int:
  """How many of a source's `records` go to validation: Python's
  round(fraction * records) (halves to even)."""
  return round(fraction * records)


def token_hash(chunk: TokenChunk, index: int) -> str:
  """A hash of record `index`'s tokens and learned flags: breaks ties
  between records that share an id."""
  start, end = chunk.offsets[index], chunk.offsets[index + 1]
  digest = hashlib.blake2b(digest_size=16)
  digest.update(chunk.ids[start:end].tobytes())
  digest.update(chunk.supervised[start:end].tobytes())
  return digest.hexdigest()


def record_id(source: Source, example_id: str) -> str:
  """The id a record has in its input (without the source's prefix)."""
  return example_id[len(source.id_prefix):]


def split_key(source: Source, seed: int, chunk: TokenChunk,
              index: int) -> SplitKey:
  """The key validation is chosen by: the smallest keys go."""
  return (unit_hash(_SPLIT, seed, source.name,
                    record_id(source, chunk.example_ids[index])),
          token_hash(chunk, index))


def find_boundary(keys: Iterable[SplitKey], fraction: float
                  ) -> Optional[Boundary]:
  """The boundary of validation among a source's keys (iterated three
  times; memory holds only the chosen keys), or None when none goes."""
  chosen = heapq.nsmallest(validation_count(fraction, sum(1 for _ in keys)),
                           keys)
  if not chosen:
    return None
  last = chosen[-1]
  return Boundary(last, chosen.count(last),
                  sum(1 for key in keys if key == last))


def goes_to_validation(key: SplitKey, boundary: Optional[Boundary]):
  """True, False, or None: a record alike others at the boundary, only
  some of which go (settled by SettleTies)."""
  if boundary is None or key > boundary.key:
    return False
  if key < boundary.key or boundary.taken == boundary.alike:
    return True
  return None


def token_counts(chunk: TokenChunk) -> Tuple[int, int]:
  """(tokens, learned tokens) of the rows the records become: each row is
  its record's tokens less one (input_ids = seq[:-1]), and learns every
  supervised token but the first position's (response_mask = sup[1:])."""
  lengths = chunk.lengths
  learned = int(chunk.supervised.sum()) - int(
      chunk.supervised[chunk.offsets[:-1][lengths > 0]].sum())
  return int((lengths - 1).sum()), learned


class _SplitKeys(beam.DoFn):
  """(name, TokenChunk) -> (name, split key) per record."""

  def __init__(self, sources: Dict[str, Source], seed: int):
    self._sources = sources
    self._seed = seed

  def process(self, keyed: Tuple[str, TokenChunk]):
    name, chunk = keyed
    source = self._sources[name]
    # A source of weight 0 is dropped from both splits: none is chosen.
    chosen = range(len(chunk)) if source.weight else ()
    for index in chosen:
      yield name, split_key(source, self._seed, chunk, index)


class _SplitRecords(beam.DoFn):
  """(name, TokenChunk) -> (name, TokenChunk) of its validation records on
  `validation`, of its train records (main); a record at a boundary shared
  with alike records, as ((name, key, taken), one-record chunk) on
  `tied`."""
  VALIDATION = 'validation'
  TIED = 'tied'

  def __init__(self, sources: Dict[str, Source], seed: int):
    self._sources = sources
    self._seed = seed

  def process(self, keyed: Tuple[str, TokenChunk], boundaries: dict):
    name, chunk = keyed
    boundary = boundaries.get(name)
    train, validation = [], []
    for index in range(len(chunk)):
      key = split_key(self._sources[name], self._seed, chunk, index)
      goes = goes_to_validation(key, boundary)
      if goes is None:
        yield beam.pvalue.TaggedOutput(self.TIED, (
            (name, key, boundary.taken), chunk.take([index])))
      else:
        (validation if goes else train).append(index)
    if validation:
      yield beam.pvalue.TaggedOutput(self.VALIDATION,
                                     (name, chunk.take(validation)))
    if train:
      yield name, chunk.take(train) if len(train) < len(chunk) else chunk


class _SettleTies(beam.DoFn):
  """((name, key, taken), alike one-record chunks) -> the first `taken` to
  `validation`, the others to train (main): they are alike, so which is
  which changes nothing written."""
  VALIDATION = 'validation'

  def process(self, grouped: Tuple[Tuple[str, SplitKey, int],
                                   Iterable[TokenChunk]]):
    (name, _, taken), chunks = grouped
    for index, chunk in enumerate(chunks):
      if index < taken:
        yield beam.pvalue.TaggedOutput(self.VALIDATION, (name, chunk))
      else:
        yield name, chunk


class _WriteCopies(beam.DoFn):
  """(name, TokenChunk) of one split -> the TokenChunk written (train: each
  record as many times as its weight says, validation: once); and per
  source stats on `stats` (stats.split_stats)."""
  STATS = 'stats'

  def __init__(self, split: str, sources: Dict[str, Source], seed: int):
    self._split = split
    self._sources = sources
    self._seed = seed

  def process(self, keyed: Tuple[str, TokenChunk]):
    name, chunk = keyed
    source = self._sources[name]
    counts = np.ones(len(chunk), np.int64)
    if self._split == filenames.TRAIN:
      counts = np.array([copy_count(source.weight, self._seed, name,
                                    record_id(source, example_id))
                         for example_id in chunk.example_ids], np.int64)
    written = chunk.take(np.repeat(np.arange(len(chunk)), counts))
    written = written.renamed([
        copy_id(example_id, copy) for example_id, count in zip(
            chunk.example_ids, counts.tolist())
        for copy in range(1, count + 1)])
    tokens, learned = token_counts(written)
    yield emit(self.STATS, split_stats(
        name, self._split, records=len(chunk), examples=len(written),
        dropped=int((counts == 0).sum()),
        copies=int(np.maximum(counts - 1, 0).sum()), tokens=tokens,
        learned_tokens=learned))
    if len(written):
      yield written


class SplitAndCopy(beam.PTransform):
  """(source name, TokenChunk) -> {'train', 'validation': TokenChunks to
  write; 'train_stats', 'validation_stats': their stats dicts}.

  `sources` by name; `fraction` of each source's records go to validation
  (0: none, and no 'validation' is built beyond an empty one); `seed`
  chooses which (see the module docstring).
  """

  def __init__(self, sources: Dict[str, Source], fraction: float, seed: int):
    super().__init__()
    self._sources = dict(sources)
    self._fraction = fraction
    self._seed = seed

  def expand(self, chunks):
    train, validation = chunks, chunks.pipeline | 'NoValidation' >> (
        beam.Create([]))
    if self._fraction:
      train, validation = self._split(chunks)
    outputs = {}
    for split, part in zip(SPLITS, (train, validation)):
      copied = part | f'Write{split.title()}Copies' >> beam.ParDo(
          _WriteCopies(split, self._sources, self._seed)).with_outputs(
              _WriteCopies.STATS, main='chunks')
      outputs[split] = copied.chunks
      outputs[f'{split}_stats'] = copied.stats
    return outputs

  def _split(self, chunks):
    """(train, validation) keyed chunks."""
    fraction = self._fraction
    boundaries = (
        chunks
        | 'SplitKeys' >> beam.ParDo(_SplitKeys(self._sources, self._seed))
        | 'KeysBySource' >> beam.GroupByKey()
        | 'FindBoundaries' >> beam.MapTuple(
            lambda name, keys: (name, find_boundary(keys, fraction))))
    split = chunks | 'SplitRecords' >> beam.ParDo(
        _SplitRecords(self._sources, self._seed),
        boundaries=beam.pvalue.AsDict(boundaries)).with_outputs(
            _SplitRecords.TIED, _SplitRecords.VALIDATION, main='train')
    settled = (
        split.tied
        | 'GroupAlike' >> beam.GroupByKey()
        | 'SettleTies' >> beam.ParDo(_SettleTies()).with_outputs(
            _SettleTies.VALIDATION, main='train'))
    return ((split.train, settled.train) | 'Train' >> beam.Flatten(),
            (split.validation, settled.validation)
            | 'Validation' >> beam.Flatten())
