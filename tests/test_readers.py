"""The readers verify what they read (docs/safety.md) and need no
TensorFlow (docs/reading.md): end to end on the CLI's output for
examples/sample.jsonl, each case tampering with a copy of it."""

import collections
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from conftest import ROOT, SAMPLE, run_sftbeam
from output_rows import rows_by_id
from sftbeam.readers import (CorruptOutput, IncompleteOutput,
                             iter_numpy_batches, load_dataset_info,
                             read_tf_dataset, torch_dataset)
from sftbeam.transforms import example_codec, filenames, schema
from sftbeam.transforms.tfrecord import (describe_shard, iter_records,
                                         masked_crc32c, write_record)

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow


def run(output_dir, *flags, input_path=SAMPLE):
  run_sftbeam('run', '--config', os.path.join(ROOT, 'configs/local.yaml'),
              '--input', input_path, '--output', str(output_dir), *flags,
              network=False, check=True)
  return str(output_dir)


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  return run(tmp_path_factory.mktemp('readers') / 'out')


@pytest.fixture
def output(finished, tmp_path):
  """A fresh copy of the finished run, to tamper with."""
  return str(shutil.copytree(finished, tmp_path / 'out'))


def info_of(output_dir):
  with open(os.path.join(output_dir, filenames.INFO)) as handle:
    return json.load(handle)


def rewrite_info(output_dir, change):
  info = info_of(output_dir)
  change(info)
  with open(os.path.join(output_dir, filenames.INFO), 'w') as handle:
    json.dump(info, handle)


def shard_path(output_dir, index):
  return os.path.join(output_dir, info_of(output_dir)['shards'][index]['name'])


def read_numpy(output_dir):
  return list(iter_numpy_batches(str(output_dir)))


def read_tf(output_dir):
  return list(read_tf_dataset(str(output_dir)).as_numpy_iterator())


def read_torch(output_dir):
  return list(torch_dataset(str(output_dir)))


READERS = [read_numpy, read_tf, read_torch]


def test_the_writer_describes_every_shard(finished):
  import tensorflow as tf
  info = info_of(finished)
  assert info['schema_version'] == 2
  assert info['layout'] == 'padded' and info['pack_length'] is None
  for entry in info['shards']:
    with open(os.path.join(finished, entry['name']), 'rb') as handle:
      content = handle.read()
    records = sum(1 for _ in tf.data.TFRecordDataset(
        os.path.join(finished, entry['name'])))
    assert entry == {'name': entry['name'], 'records': records,
                     'bytes': len(content),
                     'sha256': hashlib.sha256(content).hexdigest()}
  assert sum(entry['records'] for entry in info['shards']) == (
      info['counts']['batches_written'])


def test_numpy_decoder_equals_tensorflow_parsing_on_real_output(finished):
  import tensorflow as tf
  for entry in info_of(finished)['shards']:
    for record in iter_records(os.path.join(finished, entry['name'])):
      batch = example_codec.decode_batch(record)
      parsed = example_codec.parse_batch(tf.constant(record))
      for name in schema.MATRIX_FEATURES + schema.ROW_FEATURES:
        np.testing.assert_array_equal(batch[name], parsed[name].numpy())
      assert batch['example_ids'] == [
          value.decode() for value in parsed['example_ids'].numpy()]


def test_all_readers_give_the_same_batches(finished):
  numpy_batches = read_numpy(finished)
  assert numpy_batches[0]['input_ids'].dtype == np.int64
  assert numpy_batches[0]['response_mask'].dtype == np.bool_
  assert isinstance(numpy_batches[0]['example_ids'][0], str)
  for other in (read_tf(finished), read_torch(finished)):
    assert len(other) == len(numpy_batches)
    for ours, theirs in zip(numpy_batches, other):
      for name in ('input_ids', 'labels', 'response_mask', 'prompt_lengths'):
        np.testing.assert_array_equal(ours[name], np.asarray(theirs[name]))


def test_cli_readers_and_workers_import_no_tensorflow(finished):
  """In a fresh interpreter: the CLI, the numpy reader reading, and what a
  worker imports (the graph's transforms); torch only with torch_dataset."""
  code = '\n'.join([
      'import sys',
      'import sftbeam.pipeline.cli, sftbeam.pipeline.batch, sftbeam.readers',
      'from sftbeam.readers import iter_numpy_batches',
      f'assert list(iter_numpy_batches({finished!r}))',
      'heavy = ("tensorflow", "torch", "matplotlib")',
      'print(sorted(m for m in heavy if m in sys.modules))',
      'from sftbeam.readers import torch_dataset',
      f'assert len(list(torch_dataset({finished!r})))',
      'print(sorted(m for m in heavy if m in sys.modules))'])
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, check=True)
  assert result.stdout.split('\n')[:2] == ['[]', "['torch']"]


# ---------------------------------------------------------- verification

def copy_outside(output_dir, index, target):
  shutil.copy(shard_path(output_dir, index), target)
  return str(target)


@pytest.mark.parametrize('reader', READERS)
@pytest.mark.parametrize('listed', ['../{name}', '{outside}', 'sub/{name}',
                                    'gs://bucket/{name}', 'dataset_info.json',
                                    'batches-*.tfrecord'])
def test_shards_outside_the_directory_are_refused(output, tmp_path, reader,
                                                  listed):
  name = info_of(output)['shards'][0]['name']
  outside = copy_outside(output, 0, tmp_path / name)  # a real shard, outside
  os.mkdir(os.path.join(output, 'sub'))
  copy_outside(output, 0, os.path.join(output, 'sub', name))
  listed = listed.format(name=name, outside=outside)
  rewrite_info(output, lambda info: info['shards'][0].update(name=listed))
  with pytest.raises(CorruptOutput, match='not a shard file name'):
    reader(output)


@pytest.mark.parametrize('reader', READERS)
def test_a_link_out_of_the_directory_is_refused(output, tmp_path, reader):
  path = shard_path(output, 1)
  outside = shutil.move(path, tmp_path / 'elsewhere.tfrecord')
  os.symlink(outside, path)
  with pytest.raises(CorruptOutput, match='link out of'):
    reader(output)


@pytest.mark.parametrize('reader', READERS)
def test_a_shard_listed_twice_is_refused(output, reader):
  rewrite_info(output, lambda info: info['shards'].append(info['shards'][2]))
  with pytest.raises(CorruptOutput, match='more than once'):
    reader(output)


def cut_at_record_boundary(path):
  """Drops the shard's last record; every record left is whole."""
  records = list(iter_records(path))
  with open(path, 'wb') as handle:
    for record in records[:-1]:
      write_record(handle, record)


def reorder_records(path):
  """Same records, same size, other order: only the sha256 can tell."""
  records = list(iter_records(path))
  with open(path, 'wb') as handle:
    for record in records[::-1]:
      write_record(handle, record)


def flip_a_byte(path):
  with open(path, 'r+b') as handle:
    handle.seek(100)
    byte = handle.read(1)
    handle.seek(100)
    handle.write(bytes([byte[0] ^ 0x20]))


def one_more_record(output_dir):
  rewrite_info(output_dir,
               lambda info: info['shards'][1].update(
                   records=info['shards'][1]['records'] + 1))


@pytest.mark.parametrize('reader', READERS)
@pytest.mark.parametrize('tamper, message', [
    (lambda out: cut_at_record_boundary(shard_path(out, 1)), 'bytes; '),
    (lambda out: os.truncate(shard_path(out, 1), 1000), 'bytes; '),
    (lambda out: reorder_records(shard_path(out, 1)), 'sha256 '),
    (lambda out: flip_a_byte(shard_path(out, 1)), 'byte offset 0: the data '
     'CRC does not match'),
    (one_more_record, 'records '),
])
def test_a_changed_shard_is_refused(output, reader, tamper, message):
  name = info_of(output)['shards'][1]['name']
  tamper(output)
  with pytest.raises(CorruptOutput, match=message) as raised:
    reader(output)
  assert name in str(raised.value)


@pytest.mark.parametrize('announced', [2**30, 2**40])
def test_a_huge_announced_record_is_refused_before_allocating(output,
                                                              announced):
  """A record header (its CRC valid) announcing 1 GiB or 1 TiB, at the end
  of a shard whose listed size is updated to match."""
  path = shard_path(output, 1)
  length = struct.pack('<Q', announced)
  with open(path, 'ab') as handle:
    handle.write(length + struct.pack('<I', masked_crc32c(length)) +
                 b'data' * 100)
  rewrite_info(output, lambda info: info['shards'][1].update(
      bytes=os.path.getsize(path)))
  tracemalloc.start()
  try:
    with pytest.raises(CorruptOutput, match='the header announces') as raised:
      read_numpy(output)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert os.path.basename(path) in str(raised.value)
  assert peak < 64 << 20


def test_no_batch_of_a_changed_shard_is_given(output):
  """Shards before the damaged one are read; none of its batches."""
  shards = info_of(output)['shards']
  reorder_records(shard_path(output, 2))
  given = []
  with pytest.raises(CorruptOutput, match=shards[2]['name']):
    for batch in iter_numpy_batches(output):
      given.append(batch)
  assert len(given) == shards[0]['records'] + shards[1]['records']


@pytest.mark.parametrize('reader', READERS)
def test_a_missing_shard_or_info_is_refused(output, reader):
  os.remove(shard_path(output, 3))
  with pytest.raises(IncompleteOutput, match='missing'):
    reader(output)
  os.remove(os.path.join(output, filenames.INFO))
  with pytest.raises(IncompleteOutput, match='did not finish'):
    reader(output)


def test_another_schema_version_is_refused(output):
  rewrite_info(output, lambda info: info.update(schema_version=1))
  with pytest.raises(IncompleteOutput, match='schema version 1'):
    load_dataset_info(output)


@pytest.mark.parametrize('reader', READERS)
def test_a_run_with_zero_rows_reads_as_empty(tmp_path, reader):
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('not json\n{"prompt": 1}\n', encoding='utf-8')
  output_dir = tmp_path / 'out'
  run_sftbeam('run', '--config', os.path.join(ROOT, 'configs/local.yaml'),
              '--input', str(bad), '--output', str(output_dir),
              network=False)  # exits 1: everything was rejected
  shards = info_of(output_dir)['shards']
  assert len(shards) == 4  # num_shards of configs/local.yaml, all empty
  assert all(entry['records'] == 0 == entry['bytes'] for entry in shards)
  assert reader(output_dir) == []


def test_gzip_shards_read_the_same_and_are_verified(finished, tmp_path):
  gzipped = run(tmp_path / 'gz', '--compression', 'gzip')
  names = [entry['name'] for entry in info_of(gzipped)['shards']]
  assert all(name.endswith('.tfrecord.gz') for name in names)
  assert rows_by_id(gzipped) == rows_by_id(finished)
  assert len(read_tf(gzipped)) == len(read_numpy(finished))
  flip_a_byte(os.path.join(gzipped, names[0]))
  with pytest.raises(CorruptOutput, match=names[0]):
    read_numpy(gzipped)


def test_a_dataloader_worker_raises_the_same_error(output):
  """A shard that still has its listed size is checked by the worker that
  reads it; DataLoader re-raises its CorruptOutput."""
  name = info_of(output)['shards'][1]['name']
  reorder_records(shard_path(output, 1))
  with pytest.raises(CorruptOutput, match=name):
    torch_ids(torch_dataset(output), workers=2)


# ---------------------------------------------------------------- order

def ids_of(batches):
  return [tuple(batch['example_ids']) for batch in batches]


def test_shuffle_is_fixed_by_seed_and_epoch(finished):
  plain = ids_of(read_numpy(finished))
  once = ids_of(iter_numpy_batches(finished, shuffle=True, seed=3))
  assert once == ids_of(iter_numpy_batches(finished, shuffle=True, seed=3))
  assert sorted(once) == sorted(plain) and once != plain
  assert once != ids_of(iter_numpy_batches(finished, shuffle=True, seed=3,
                                           epoch=1))
  assert once != ids_of(iter_numpy_batches(finished, shuffle=True, seed=4))


def test_tf_dataset_reshuffles_each_pass(finished):
  dataset = read_tf_dataset(finished, shuffle=True, seed=3)
  passes = [[tuple(batch['example_ids'])
             for batch in dataset.as_numpy_iterator()] for _ in range(2)]
  assert passes[0] != passes[1] and sorted(passes[0]) == sorted(passes[1])
  as_numpy = [tuple(i.encode() for i in ids) for ids in ids_of(
      iter_numpy_batches(finished, shuffle=True, seed=3, epoch=1))]
  assert passes[1] == as_numpy


# ---------------------------------------------------------------- torch

def torch_ids(dataset, workers=0):
  import torch  # pylint: disable=import-outside-toplevel
  loader = torch.utils.data.DataLoader(dataset, batch_size=None,
                                       num_workers=workers)
  return [tuple(batch['example_ids']) for batch in loader]


def test_torch_batches_are_tensors(finished):
  import torch  # pylint: disable=import-outside-toplevel
  batch = next(iter(torch_dataset(finished)))
  assert batch['input_ids'].dtype == torch.int64
  assert batch['labels'].dtype == torch.int64
  assert batch['response_mask'].dtype == torch.bool
  assert batch['input_ids'].shape == batch['response_mask'].shape


@pytest.mark.parametrize('shuffle', [False, True])
def test_torch_two_workers_two_ranks_read_every_batch_once(finished, shuffle):
  every = collections.Counter(ids_of(read_numpy(finished)))
  per_rank = []
  for rank in range(2):
    dataset = torch_dataset(finished, shuffle=shuffle, seed=5, rank=rank,
                            world_size=2)
    per_rank.append(torch_ids(dataset, workers=2))
    assert len(per_rank[-1]) == len(dataset)
  assert collections.Counter(per_rank[0] + per_rank[1]) == every
  assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1


def test_torch_order_is_fixed_by_seed_and_epoch(finished):
  def order(epoch, seed=5):
    dataset = torch_dataset(finished, shuffle=True, seed=seed, rank=1,
                            world_size=2)
    dataset.set_epoch(epoch)
    return torch_ids(dataset, workers=2)
  first = order(0)
  assert first == order(0)
  assert first != order(1)
  assert first != order(0, seed=6)



@pytest.mark.parametrize('suffix, content', [
    ('.tfrecord', b''), ('.tfrecord.gz', gzip.compress(b''))])
def test_empty_shards_read_as_nothing(finished, tmp_path, suffix, content):
  """A slot that got no batch may be written as an empty shard."""
  name = 'batches-00000-of-00001' + suffix
  (tmp_path / name).write_bytes(content)
  entry = describe_shard(str(tmp_path / name))
  assert entry['records'] == 0
  (tmp_path / filenames.INFO).write_text(json.dumps(
      dict(info_of(finished), shards=[entry])))
  assert read_numpy(tmp_path) == [] and read_torch(tmp_path) == []
