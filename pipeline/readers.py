"""Reading a finished sftbeam output directory, verified, without TensorFlow.

  for batch in iter_numpy_batches('out/'):     # dicts of numpy arrays
      ...
  dataset = torch_dataset('out/')              # torch IterableDataset
  dataset = read_tf_dataset('out/')            # tf.data, dicts of tensors

Every reader trusts nothing it has not checked. The directory must hold a
dataset_info.json (written last: without it the run did not finish) of a
schema version this code reads. Every listed shard must be a shard file
directly in the directory (no `../`, absolute path, subdirectory, scheme or
link out of it), listed once, of the listed size. Before a shard's first
batch is given, the whole shard is read once and its sha256 and record
count compared with dataset_info.json (and every record's CRCs checked);
the records are then read again and checked again as they are given. A
Parquet shard's records are its batches, each rebuilt from its rows as the
Example bytes of that batch (transforms/parquet_shards.py), so every reader
reads both formats alike. All readers get their records from one function
(`serialized_batches`), so they refuse the same things. A run that wrote
no rows reads as an empty dataset.

Order: shards in listed order, records in file order; with `shuffle`, the
shard order is a permutation fixed by (seed, epoch) and batches pass through
a shuffle buffer seeded by the same. `part`/`parts` give one of `parts`
contiguous, near-equal slices of that sequence, so that parts (DataLoader
workers, distributed ranks) together read every batch exactly once.
"""

import collections
import itertools
import json
import os
import re
from typing import Iterator, NamedTuple

import numpy as np
from apache_beam.io.filesystems import FileSystems

from sftbeam.transforms import (example_codec, filenames, pack,
                                parquet_shards, schema)
from sftbeam.transforms.paths import is_remote
from sftbeam.transforms.tfrecord import (CorruptRecord, describe_shard,
                                         iter_records)

_SHA256 = re.compile(r'[0-9a-f]{64}')


class IncompleteOutput(ValueError):
  """The directory is not a complete sftbeam output this code can read."""


class CorruptOutput(IncompleteOutput):
  """dataset_info.json and the shards disagree, or a shard is damaged."""


class Shard(NamedTuple):
  """A shard as dataset_info.json lists it, resolved inside the directory."""
  name: str
  path: str
  records: int
  bytes: int
  sha256: str


def load_dataset_info(output_dir: str) -> dict:
  """The directory's dataset_info.json, checked to exist and be of a
  schema version this code reads."""
  output_dir = os.fspath(output_dir)
  path = FileSystems.join(output_dir, filenames.INFO)
  if not FileSystems.exists(path):
    raise IncompleteOutput(
        f'{output_dir} has no {filenames.INFO}: the run did not finish '
        '(re-run it with --overwrite)')
  with FileSystems.open(path) as handle:
    info = json.loads(handle.read())
  version = info.get('schema_version')
  if version not in schema.SUPPORTED_SCHEMA_VERSIONS:
    raise IncompleteOutput(
        f'{path} has schema version {version}; this sftbeam reads '
        f'{schema.SUPPORTED_SCHEMA_VERSIONS}: use the sftbeam version that '
        'wrote it, or run the pipeline again')
  return info


def _check_entry(output_dir: str, entry) -> Shard:
  """One `shards` entry as a Shard, or CorruptOutput saying what is wrong."""
  if not isinstance(entry, dict) or not isinstance(entry.get('name'), str):
    raise CorruptOutput(f'{output_dir}/{filenames.INFO}: shard entry '
                        f'{entry!r} has no name')
  name = entry['name']
  if not filenames.SHARD_ENTRY.fullmatch(name):
    raise CorruptOutput(
        f'{output_dir}/{filenames.INFO} lists shard {name!r}, which is not '
        f'a shard file name ({filenames.SHARD_PREFIX}-*{filenames.SHARD_SUFFIX}'
        f'[.gz] or {filenames.SHARD_PREFIX}-*{filenames.PARQUET_SUFFIX}) '
        'directly in the directory: refused')
  counts = [entry.get(key) for key in ('records', 'bytes')]
  if (not all(type(count) is int and count >= 0 for count in counts) or
      not _SHA256.fullmatch(str(entry.get('sha256')))):
    raise CorruptOutput(f'{output_dir}/{filenames.INFO}: shard {name} needs '
                        'integer records and bytes and a hex sha256')
  path = FileSystems.join(output_dir, name)
  if not is_remote(output_dir) and (
      os.path.dirname(os.path.realpath(path)) !=
      os.path.realpath(output_dir)):
    raise CorruptOutput(f'shard {name} is a link out of {output_dir}: refused')
  return Shard(name, path, *counts, entry['sha256'])


def verified_shards(output_dir: str, info: dict = None) -> list:
  """The listed shards, each checked to be a shard file directly in
  `output_dir`, listed once, present and of the listed size."""
  output_dir = os.fspath(output_dir)
  info = info or load_dataset_info(output_dir)
  entries = info.get('shards')
  if not isinstance(entries, list):
    raise CorruptOutput(f'{output_dir}/{filenames.INFO} has no shard list')
  shards = [_check_entry(output_dir, entry) for entry in entries]
  names = [shard.name for shard in shards]
  twice = sorted(name for name, count in collections.Counter(names).items()
                 if count > 1)
  if twice:
    raise CorruptOutput(f'{output_dir}/{filenames.INFO} lists shard '
                        f'{twice[0]} more than once: refused')
  if not shards:
    return []
  missing = [shard.name for shard in shards
             if not FileSystems.exists(shard.path)]
  if missing:
    raise IncompleteOutput(f'{len(missing)} shards listed in '
                           f'{filenames.INFO} are missing, e.g. {missing[0]}')
  for shard in shards:
    size = _file_size(shard.path)
    if size != shard.bytes:
      raise CorruptOutput(f'shard {shard.name} holds {size} '
                          f'bytes; {filenames.INFO} says {shard.bytes}')
  return shards


def _file_size(path: str) -> int:
  """The size of the file at `path`, by its exact path (FileSystems.match
  would read `[`, `*`, `?` in the directory's name as a glob)."""
  return FileSystems.get_filesystem(path).metadata(path).size_in_bytes


def _verify_contents(shard: Shard):
  """Reads the whole shard once: sha256, record count and every CRC."""
  describe = (parquet_shards.describe_shard
              if filenames.is_parquet_shard(shard.name) else describe_shard)
  try:
    found = describe(shard.path)
  except CorruptRecord as error:
    raise CorruptOutput(f'shard {shard.name} is damaged: {error}') from error
  for key in ('bytes', 'sha256', 'records'):
    if found[key] != getattr(shard, key):
      raise CorruptOutput(
          f'shard {shard.name}: {key} {found[key]} found, '
          f'{getattr(shard, key)} in {filenames.INFO}: the shard was '
          'changed or replaced after the run')


def shard_records(shard: Shard, first: int = 0,
                  stop: int = None) -> Iterator[bytes]:
  """Records first..stop-1 of a shard, after verifying the whole shard (a
  Parquet shard's batches as the Example bytes of the same batches)."""
  stop = shard.records if stop is None else stop
  _verify_contents(shard)
  if filenames.is_parquet_shard(shard.name):
    yield from _parquet_records(shard, first, stop)
    return
  records = iter_records(shard.path)
  try:
    for index in range(stop):
      record = next(records, None)
      if record is None:
        raise CorruptOutput(f'shard {shard.name} changed while read: it '
                            f'ends after {index} records')
      if index >= first:
        yield record
  except CorruptRecord as error:
    raise CorruptOutput(f'shard {shard.name} changed while read: '
                        f'{error}') from error
  finally:
    records.close()


def _parquet_records(shard: Shard, first: int, stop: int) -> Iterator[bytes]:
  """Batches first..stop-1 of a verified Parquet shard, as Example bytes."""
  read = first
  try:
    for record in parquet_shards.batch_examples(shard.path, first, stop):
      yield record
      read += 1
  except CorruptRecord as error:
    raise CorruptOutput(f'shard {shard.name} changed while read: '
                        f'{error}') from error
  if read < stop:
    raise CorruptOutput(f'shard {shard.name} changed while read: it ends '
                        f'after {read} records')


def _shard_order(shards: list, shuffle: bool, seed: int, epoch: int) -> list:
  if not shuffle:
    return list(shards)
  rng = np.random.default_rng([seed, epoch])
  return [shards[i] for i in rng.permutation(len(shards))]


def part_slices(shards: list, part: int, parts: int):
  """(shard, first, stop) slices of the `part`-th of `parts` contiguous,
  near-equal parts of the batches of `shards` in that order."""
  total = sum(shard.records for shard in shards)
  low, high = total * part // parts, total * (part + 1) // parts
  offset = 0
  for shard in shards:
    first, stop = max(low - offset, 0), min(high - offset, shard.records)
    if first < stop:
      yield shard, first, stop
    offset += shard.records


def _shuffled(records: Iterator, buffer_size: int, rng) -> Iterator:
  """A shuffle buffer: each record leaves at a random time after entering."""
  buffer = []
  for record in records:
    if len(buffer) < buffer_size:
      buffer.append(record)
      continue
    slot = rng.integers(buffer_size)
    yield buffer[slot]
    buffer[slot] = record
  rng.shuffle(buffer)
  yield from buffer


def serialized_batches(output_dir: str, shuffle=False, seed=0, epoch=0,
                shuffle_buffer=256, part=0, parts=1) -> Iterator[bytes]:
  """The verified Example bytes of part `part` of `parts` (module doc)."""
  if not 0 <= part < parts:
    raise ValueError(f'part {part} is not in 0..{parts - 1}')
  shards = _shard_order(verified_shards(output_dir), shuffle, seed, epoch)
  records = (record for shard, first, stop in part_slices(shards, part, parts)
             for record in shard_records(shard, first, stop))
  if not shuffle:
    return records
  return _shuffled(records, shuffle_buffer,
                   np.random.default_rng([seed, epoch, part, parts]))


def numpy_batch(serialized: bytes) -> dict:
  """One Example's bytes as the readers give it (example_codec.decode_batch,
  plus `cu_seqlens`/`max_seqlen` for packed batches)."""
  batch = example_codec.decode_batch(serialized)
  if 'segment_ids' in batch:
    batch['cu_seqlens'], batch['max_seqlen'] = pack.cu_seqlens(
        batch['segment_ids'])
  return batch


def iter_numpy_batches(output_dir: str, shuffle: bool = False, seed: int = 0,
                       epoch: int = 0, shuffle_buffer: int = 256):
  """Yields batch dicts of numpy arrays, without TensorFlow.

  `input_ids`/`labels` int64 [B, L], `response_mask` bool [B, L],
  `prompt_lengths`/`output_lengths` int64 (per row; per example in packed
  batches), `example_ids` a list of str; packed batches also `segment_ids`,
  `positions` int64 [B, L], `examples_per_row` int64 [B], `cu_seqlens`
  int32 and `max_seqlen`. `torch.from_numpy` takes the arrays as they are.
  Checks the directory at once (IncompleteOutput, CorruptOutput), each
  shard's contents before its first batch.
  """
  records = serialized_batches(output_dir, shuffle, seed, epoch,
                               shuffle_buffer)
  return (numpy_batch(record) for record in records)


def torch_dataset(output_dir: str, *, shuffle: bool = False, seed: int = 0,
                  epoch: int = 0, rank: int = 0, world_size: int = 1):
  """A torch IterableDataset of batch dicts of tensors (see
  sftbeam.pipeline.torch_reader); torch is imported only here."""
  # pylint: disable=import-outside-toplevel
  from sftbeam.pipeline.torch_reader import SftBatches
  return SftBatches(output_dir, shuffle=shuffle, seed=seed, epoch=epoch,
                    rank=rank, world_size=world_size)


def read_tf_dataset(output_dir: str, shuffle: bool = False, seed: int = 0,
                    shuffle_buffer: int = 256):
  """A tf.data.Dataset of batch dicts (see example_codec.parse_batch).

  `input_ids`/`labels` int32 [B, L], `response_mask` bool [B, L],
  `prompt_lengths`/`output_lengths` int32 [B], `example_ids` string [B].
  Records come from the same verified path as iter_numpy_batches; the
  k-th pass over the dataset has that reader's order for epoch k. Every
  shard is also verified here, once, so that a bad directory raises
  IncompleteOutput or CorruptOutput now: inside a pass, tf.data would
  re-raise such an error as a tf.errors.OpError (with the same message).
  """
  # Imported here: nothing else in sftbeam needs TensorFlow.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  info = load_dataset_info(output_dir)
  for shard in verified_shards(output_dir, info):
    _verify_contents(shard)
  passes = itertools.count()

  def records():
    return serialized_batches(output_dir, shuffle, seed, next(passes),
                              shuffle_buffer)

  dataset = tf.data.Dataset.from_generator(
      records, output_signature=tf.TensorSpec((), tf.string))
  layout = info['layout']
  return dataset.map(
      lambda serialized: example_codec.parse_batch(serialized, layout),
      num_parallel_calls=tf.data.AUTOTUNE)
