"""transforms/write.py: the TFRecord sink, and WriteBatches (exactly
num_shards shards)."""

import os

import apache_beam as beam
import pytest
from apache_beam.io import fileio
from apache_beam.testing.util import assert_that, equal_to

from conftest import beam_test_pipeline
from sftbeam.transforms import tfrecord
from sftbeam.transforms.write import (TFRecordSink, WriteBatches,
                                     _DescribeShardsFn, _JoinSlotFn)


def test_tfrecord_sink_gzip_round_trip(tmp_path):
  path = tmp_path / 'x.tfrecord.gz'
  with open(path, 'wb') as handle:
    sink = TFRecordSink('gzip')
    sink.open(handle)
    sink.write(b'one')
    sink.write(b'two')
    sink.flush()
  # The TF-free reader: test_tfrecord.py holds it to TensorFlow's framing.
  assert list(tfrecord.iter_records(str(path))) == [b'one', b'two']


@pytest.mark.slow
def test_write_batches_in_pipeline(tmp_path):
  import tensorflow as tf
  with beam_test_pipeline() as root:
    results = (root | beam.Create([b'a', b'b', b'c'])
               | WriteBatches(str(tmp_path), num_shards=1, compression='none'))
    assert_that(results | beam.Map(lambda entry: (entry['name'],
                                                  entry['records'])),
                equal_to([('batches-00000-of-00001.tfrecord', 3)]))
  written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
  assert written == ['batches-00000-of-00001.tfrecord']
  records = tf.data.TFRecordDataset([str(tmp_path / n) for n in written])
  assert sorted(r.numpy() for r in records) == [b'a', b'b', b'c']


@pytest.mark.slow
def test_write_batches_numbers_every_shard(tmp_path):
  import tensorflow as tf
  with beam_test_pipeline() as root:
    _ = (root | beam.Create([b'%d' % i for i in range(40)])
         | WriteBatches(str(tmp_path), num_shards=3, compression='gzip'))
  written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
  assert written == [f'batches-{i:05d}-of-00003.tfrecord.gz' for i in range(3)]
  records = tf.data.TFRecordDataset([str(tmp_path / n) for n in written],
                                    compression_type='GZIP')
  assert sorted(int(r.numpy()) for r in records) == list(range(40))


@pytest.mark.slow
def test_write_batches_writes_exactly_num_shards_files(tmp_path):
  """A slot without a batch gets an empty shard; a slot written by several
  bundles is joined into one shard."""
  import tensorflow as tf
  with beam_test_pipeline() as root:
    _ = (root | beam.Create([b'only one batch'])
         | WriteBatches(str(tmp_path), num_shards=3, compression='none'))
  written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
  assert written == [f'batches-{i:05d}-of-00003.tfrecord' for i in range(3)]
  assert sorted(p.stat().st_size for p in tmp_path.iterdir()) [:2] == [0, 0]
  records = tf.data.TFRecordDataset([str(tmp_path / n) for n in written])
  assert [r.numpy() for r in records] == [b'only one batch']


def test_join_slot_concatenates_files_and_survives_a_retry(tmp_path):
  parts = []
  for index, payloads in enumerate([[b'a', b'b'], [b'c']]):
    name = f'part-{index}.tfrecord'
    with open(tmp_path / name, 'wb') as handle:
      sink = TFRecordSink('none')
      sink.open(handle)
      for payload in payloads:
        sink.write(payload)
      sink.flush()
    parts.append(fileio.FileResult(name, index, 2, None, None, 1))
  join = _JoinSlotFn(str(tmp_path), str(tmp_path), 4, '.tfrecord')
  [final] = list(join.process((1, parts)))
  assert os.path.basename(final) == 'batches-00001-of-00004.tfrecord'
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'batches-00001-of-00004.tfrecord']
  assert list(tfrecord.iter_records(final)) == [b'a', b'b', b'c']
  assert list(join.process((1, parts))) == [final]  # a retry: already done


def _shards(tmp_path, count):
  paths = []
  for index in range(count):
    path = str(tmp_path / f'shard-{index}.tfrecord')
    with open(path, 'wb') as handle:
      for record in range(index + 1):
        tfrecord.write_record(handle, b'record %d' % record)
    paths.append(path)
  return paths


def test_describe_shards_gives_each_shard_described_when_the_bundle_ends(
    tmp_path):
  """Described on threads, the entries are describe_shard's, one a shard,
  all at the bundle's end; a damaged shard fails the bundle."""
  paths = _shards(tmp_path, 5)
  describe = _DescribeShardsFn(tfrecord.describe_shard)
  describe.setup()
  describe.start_bundle()
  for path in paths:
    assert list(describe.process(path) or []) == []
  entries = [value.value for value in describe.finish_bundle()]
  assert entries == [tfrecord.describe_shard(path) for path in paths]
  assert [entry['records'] for entry in entries] == [1, 2, 3, 4, 5]
  with open(paths[2], 'r+b') as handle:
    handle.seek(-1, os.SEEK_END)
    handle.write(b'X')  # the last record's data CRC no longer matches
  describe.start_bundle()
  for path in paths:
    describe.process(path)
  with pytest.raises(tfrecord.CorruptRecord, match='shard-2'):
    list(describe.finish_bundle())
  describe.teardown()


@pytest.mark.slow
def test_describe_shards_in_pipeline(tmp_path):
  paths = _shards(tmp_path, 3)
  with beam_test_pipeline() as root:
    entries = (root | beam.Create(paths)
               | beam.ParDo(_DescribeShardsFn(tfrecord.describe_shard)))
    assert_that(entries, equal_to([tfrecord.describe_shard(path)
                                   for path in paths]))
