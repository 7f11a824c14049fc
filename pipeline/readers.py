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
batch is given, the whole shard is read once and its sha256 and count of
TFRecord records (one Example, one batch, each) compared with
dataset_info.json (and every TFRecord record's CRCs checked); the Examples
are then read again and checked again as they are given. A Parquet shard's
Examples are its batches, each rebuilt from its rows as the Example bytes
of that batch (transforms/parquet_shards.py), so every reader reads both
formats alike. All readers get their Examples from one function
(`serialized_batches`), so they refuse the same things. A run that wrote
no rows reads as an empty dataset.

Order: shards in listed order, batches in file order; with `shuffle`, the
shard order is a permutation fixed by (seed, epoch) and batches pass through
a shuffle buffer seeded by the same. DataLoader workers and distributed
ranks each read one contiguous slice of that sequence. `read_order` owns
that order and the readers' resumable position in it.
"""

import collections
import itertools
import json
import os
import re
from typing import Iterator, NamedTuple

from apache_beam.io.filesystems import FileSystems

from sftbeam.pipeline import read_order
from sftbeam.pipeline.options import OPTIONS_BY_NAME, shown
from sftbeam.transforms import (example_codec, filenames, pack,
                                parquet_shards, schema)
from sftbeam.transforms.paths import file_size, is_remote
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


def _is_count(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _all(mapping, names, predicate) -> bool:
  return isinstance(mapping, dict) and all(
      predicate(mapping.get(name)) for name in names)


_COUNTS = ('lines', 'blank_lines', 'records_in', 'records_written',
           'records_rejected', 'records_truncated', 'chat_records',
           'assistant_turns', 'records_with_special_token_text',
           'batches_written', 'real_tokens', 'stored_tokens',
           'supervised_tokens')


def _counts_ok(counts) -> bool:
  """Whether `counts` is the counts section transforms/stats.py writes."""
  return (_all(counts, _COUNTS, _is_count) and
          isinstance(counts.get('reconciled'), bool) and
          _all(counts.get('rejected_by_reason'),
               counts.get('rejected_by_reason', ()), _is_count) and
          isinstance(counts.get('buckets'), dict) and
          all(_all(bucket, ('batches', 'records'), _is_count)
              for bucket in counts['buckets'].values()) and
          (counts.get('padding_efficiency') is None or
           _is_number(counts['padding_efficiency'])) and
          (counts.get('packing') is None or (
              _all(counts['packing'], ('packed_rows', 'examples_per_row_max'),
                   _is_count) and
              _is_number(counts['packing'].get('examples_per_row_mean')))))


# Each section of dataset_info.json that a reader, `stats`, `inspect` or
# the summary uses: (key, check, what the check wants).
_SECTIONS = (
    ('sftbeam_version', lambda v: isinstance(v, str), 'a string'),
    ('layout', lambda v: v in schema.LAYOUTS,
     f'one of {", ".join(schema.LAYOUTS)}'),
    ('tokenizer', lambda v: _all(v, ('name', 'backend', 'backend_reason'),
                                 lambda text: isinstance(text, str)),
     'a mapping with the strings name, backend and backend_reason'),
    ('config', lambda v: isinstance(v, dict), 'a mapping'),
    ('bucket_boundaries', OPTIONS_BY_NAME['boundaries'].check,
     OPTIONS_BY_NAME['boundaries'].requirement),
    ('counts', _counts_ok, 'the counts of docs/output.md'),
    ('shards', lambda v: isinstance(v, list), 'a list'),
)


def _section_problem(info: dict):
  """What is wrong with the first malformed section of `info`, or None."""
  for key, check, wanted in _SECTIONS:
    if not check(info.get(key)):
      return f'"{key}" must be {wanted}; got {shown(info.get(key))}'
  packed = info['layout'] == 'packed'
  if not (_is_count(info.get('pack_length')) if packed
          else info.get('pack_length') is None):
    return (f'"pack_length" must be {"a count" if packed else "null"} in '
            f'the {info["layout"]} layout; got {shown(info.get("pack_length"))}')
  return None


def _read_json(path: str):
  """The JSON value in the file at `path`, or CorruptOutput."""
  try:
    with FileSystems.open(path) as handle:
      return json.loads(handle.read())
  except RecursionError:
    raise CorruptOutput(f'{path} is damaged: JSON nested too deeply') from None
  except (OSError, ValueError) as error:  # ValueError: not JSON or UTF-8
    raise CorruptOutput(f'{path} is not readable JSON: {error}') from None


def _refuse_split_run(output_dir: str):
  """A run with a validation split wrote two datasets, one directory each:
  IncompleteOutput naming them."""
  splits = [FileSystems.join(output_dir, name) for name in filenames.SPLIT_DIRS
            if FileSystems.exists(FileSystems.join(output_dir, name,
                                                   filenames.INFO))]
  if splits:
    raise IncompleteOutput(
        f'{output_dir} holds the datasets of a run with a validation split: '
        f'read {" or ".join(sorted(splits))}')


def load_dataset_info(output_dir: str) -> dict:
  """The directory's dataset_info.json, checked to exist, to be of a
  schema version this code reads, and to hold every section sftbeam writes
  and reads (IncompleteOutput, CorruptOutput)."""
  output_dir = os.fspath(output_dir)
  path = FileSystems.join(output_dir, filenames.INFO)
  if not FileSystems.exists(path):
    _refuse_split_run(output_dir)
    raise IncompleteOutput(
        f'{output_dir} has no {filenames.INFO}: the run did not finish '
        '(re-run it with --overwrite)')
  info = _read_json(path)
  if not isinstance(info, dict):
    raise CorruptOutput(f'{path} is damaged: it holds {shown(info)}, not a '
                        'JSON object')
  version = info.get('schema_version')
  if version not in schema.SUPPORTED_SCHEMA_VERSIONS:
    raise IncompleteOutput(
        f'{path} has schema version {shown(version)}; this sftbeam reads '
        f'{schema.SUPPORTED_SCHEMA_VERSIONS}: use the sftbeam version that '
        'wrote it, or run the pipeline again')
  problem = _section_problem(info)
  if problem:
    raise CorruptOutput(f'{path} is damaged: {problem}')
  return info


def _check_entry(output_dir: str, entry) -> Shard:
  """One `shards` entry as a Shard, or CorruptOutput saying what is wrong."""
  if not isinstance(entry, dict) or not isinstance(entry.get('name'), str):
    raise CorruptOutput(f'{output_dir}/{filenames.INFO}: shard entry '
                        f'{shown(entry)} has no name')
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
  shards = [_check_entry(output_dir, entry) for entry in info['shards']]
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
    size = file_size(shard.path)
    if size != shard.bytes:
      raise CorruptOutput(f'shard {shard.name} holds {size} '
                          f'bytes; {filenames.INFO} says {shard.bytes}')
  return shards


def _verify_contents(shard: Shard):
  """Reads the whole shard once: sha256, batch count and every CRC."""
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


def serialized_batches(output_dir: str, shuffle=False, seed=0, epoch=0,
                       shuffle_buffer=256, decode=None) -> read_order.Batches:
  """The verified Example bytes of an epoch in the readers' order (module
  doc), each passed through `decode` if given; resumable."""
  order = read_order.Order(shuffle, seed, shuffle_buffer)
  return read_order.Batches(verified_shards(output_dir), order, epoch,
                            shard_records, decode)


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

  The iterator can resume: `state_dict()` says where it is (a JSON-safe
  dict; after the epoch's last batch, the start of the next epoch), and
  `load_state_dict(state)` continues there, in another process too,
  without decoding the batches before it (read_order.Batches).
  """
  return serialized_batches(output_dir, shuffle, seed, epoch, shuffle_buffer,
                            numpy_batch)


def torch_dataset(output_dir: str, *, shuffle: bool = False, seed: int = 0,
                  epoch: int = None, rank: int = 0, world_size: int = 1):
  """A torch IterableDataset of batch dicts of tensors: each pass the next
  epoch (unless `epoch` fixes it), resumable under torchdata's
  StatefulDataLoader (see sftbeam.pipeline.torch_reader); torch is
  imported only here."""
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
