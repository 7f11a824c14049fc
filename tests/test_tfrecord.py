"""The TFRecord framing against TensorFlow's, and damage it must report."""

import gzip
import hashlib
import io
import os
import struct
import tracemalloc

import pytest

from sftbeam.transforms import tfrecord

RECORDS = [b'', b'one', b'x' * 70000, bytes(range(256))]


def write_file(path, records=RECORDS, compress=False):
  opener = gzip.open if compress else open
  with opener(path, 'wb') as handle:
    for record in records:
      tfrecord.write_record(handle, record)
  return str(path)


def record_offsets(records):
  """Byte offset of each record in a plain file of these records."""
  offsets, offset = [], 0
  for record in records:
    offsets.append(offset)
    offset += 16 + len(record)
  return offsets


@pytest.mark.slow
@pytest.mark.parametrize('compress', [False, True])
def test_tensorflow_reads_what_we_write(tmp_path, compress):
  import tensorflow as tf
  path = write_file(tmp_path / ('a.tfrecord' + '.gz' * compress),
                    compress=compress)
  dataset = tf.data.TFRecordDataset(
      path, compression_type='GZIP' if compress else '')
  assert [record.numpy() for record in dataset] == RECORDS


@pytest.mark.slow
@pytest.mark.parametrize('compress', [False, True])
def test_we_read_what_tensorflow_writes(tmp_path, compress):
  import tensorflow as tf
  path = str(tmp_path / ('a.tfrecord' + '.gz' * compress))
  options = tf.io.TFRecordOptions(compression_type='GZIP' if compress else '')
  with tf.io.TFRecordWriter(path, options) as writer:
    for record in RECORDS:
      writer.write(record)
  assert list(tfrecord.iter_records(path)) == RECORDS


def test_describe_shard(tmp_path):
  path = write_file(tmp_path / 'batches-1.tfrecord')
  with open(path, 'rb') as handle:
    content = handle.read()
  assert tfrecord.describe_shard(path) == {
      'name': 'batches-1.tfrecord', 'records': len(RECORDS),
      'bytes': len(content), 'sha256': hashlib.sha256(content).hexdigest()}


def test_describe_gzip_shard_hashes_the_stored_bytes(tmp_path):
  path = write_file(tmp_path / 'batches-1.tfrecord.gz', compress=True)
  with open(path, 'rb') as handle:
    content = handle.read()
  description = tfrecord.describe_shard(path)
  assert description['records'] == len(RECORDS)
  assert description['bytes'] == len(content) == os.path.getsize(path)
  assert description['sha256'] == hashlib.sha256(content).hexdigest()


@pytest.mark.parametrize('compress', [False, True])
@pytest.mark.parametrize('block', [1, 7, 4096])
def test_describe_shard_reading_in_blocks(tmp_path, monkeypatch, compress,
                                          block):
  """describe_shard hashes a block at a time and serves the record walk
  from it: with blocks of 1, 7 and 4096 bytes every record and CRC crosses
  block ends somewhere, and the description and the damage found stay."""
  monkeypatch.setattr(tfrecord, '_READ_CHUNK', block)
  records = RECORDS + [os.urandom(10000), b'z' * 4097]
  path = write_file(tmp_path / ('a.tfrecord' + '.gz' * compress), records,
                    compress)
  with open(path, 'rb') as handle:
    content = handle.read()
  assert tfrecord.describe_shard(path) == {
      'name': os.path.basename(path), 'records': len(records),
      'bytes': len(content), 'sha256': hashlib.sha256(content).hexdigest()}
  if not compress:
    flip_byte(path, record_offsets(records)[4] + 12 + 9999)
    with pytest.raises(tfrecord.CorruptRecord, match='record 4 .*data CRC'):
      tfrecord.describe_shard(path)


def flip_byte(path, offset):
  with open(path, 'r+b') as handle:
    handle.seek(offset)
    byte = handle.read(1)
    handle.seek(offset)
    handle.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize('where, problem', [
    (0, 'length CRC'),      # in the length
    (8, 'length CRC'),      # in the length's CRC
    (12 + 3, 'data CRC'),   # in the data
    (12 + 70000 + 2, 'data CRC'),  # in the data's CRC
])
def test_a_flipped_byte_names_file_record_and_offset(tmp_path, where,
                                                     problem):
  path = write_file(tmp_path / 'a.tfrecord')
  offset = record_offsets(RECORDS)[2]
  flip_byte(path, offset + where)
  with pytest.raises(tfrecord.CorruptRecord) as raised:
    list(tfrecord.iter_records(path))
  message = str(raised.value)
  assert path in message and problem in message
  assert f'record 2 at byte offset {offset}:' in message


@pytest.mark.parametrize('keep', [5, 12 + 1, 16 + 3 + 12 + 100])
def test_a_cut_file_names_file_and_offset(tmp_path, keep):
  path = write_file(tmp_path / 'a.tfrecord')
  offset = record_offsets(RECORDS)[1]
  os.truncate(path, offset + keep)
  records = tfrecord.iter_records(path)
  assert next(records) == RECORDS[0]
  with pytest.raises(tfrecord.CorruptRecord, match='cut short') as raised:
    list(records)
  assert path in str(raised.value)
  record, offset = (1, offset) if keep < 16 + 3 else (2, offset + 16 + 3)
  assert f'record {record} at byte offset {offset}:' in str(raised.value)


def test_a_cut_at_a_record_boundary_passes_the_framing(tmp_path):
  """Only dataset_info.json's counts can tell (see test_readers)."""
  path = write_file(tmp_path / 'a.tfrecord')
  os.truncate(path, record_offsets(RECORDS)[2])
  assert list(tfrecord.iter_records(path)) == RECORDS[:2]
  assert tfrecord.describe_shard(path)['records'] == 2


@pytest.mark.parametrize('damage', ['cut', 'flip', 'trailing'])
def test_damaged_gzip_names_the_file(tmp_path, damage):
  path = write_file(tmp_path / 'a.tfrecord.gz', compress=True)
  size = os.path.getsize(path)
  if damage == 'cut':
    os.truncate(path, size // 2)
  elif damage == 'flip':
    flip_byte(path, size // 2)
  else:
    with open(path, 'ab') as handle:
      handle.write(b'junk after the gzip stream')
  with pytest.raises(tfrecord.CorruptRecord) as raised:
    tfrecord.describe_shard(path)
  assert path in str(raised.value)


def forged_header(length: int) -> bytes:
  """A record header announcing `length` data bytes, its CRC valid."""
  length_bytes = struct.pack('<Q', length)
  return length_bytes + struct.pack('<I', tfrecord.masked_crc32c(length_bytes))


@pytest.mark.parametrize('compress', [False, True])
@pytest.mark.parametrize('announced, problem', [
    (2**30, r'only \d+ bytes are left in the file|ends inside the record'),
    (2**40, 'more than a record can hold'),
])
def test_a_huge_announced_length_is_refused_before_allocating(
    tmp_path, compress, announced, problem):
  """A damaged header with a valid CRC announcing 1 GiB or 1 TiB: refused
  with the file and offset named, reading at most a few MB."""
  content = io.BytesIO()
  for record in RECORDS[:2]:
    tfrecord.write_record(content, record)
  offset = len(content.getvalue())
  content.write(forged_header(announced) + b'some data' * 100)
  path = tmp_path / ('a.tfrecord' + ('.gz' if compress else ''))
  path.write_bytes(gzip.compress(content.getvalue()) if compress
                   else content.getvalue())
  tracemalloc.start()
  try:
    with pytest.raises(tfrecord.CorruptRecord, match=problem) as raised:
      list(tfrecord.iter_records(str(path)))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert f'{path}: record 2 at ' in str(raised.value)
  assert f'offset {offset}: ' in str(raised.value)
  assert peak < 16 << 20


@pytest.mark.slow
def test_masked_crc_matches_tensorflow_framing(tmp_path):
  """The first 12 bytes TensorFlow writes: length and its masked CRC."""
  import tensorflow as tf
  path = str(tmp_path / 'a.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    writer.write(b'abc')
  with open(path, 'rb') as handle:
    content = handle.read()
  assert int.from_bytes(content[8:12], 'little') == tfrecord.masked_crc32c(
      content[:8])
  assert int.from_bytes(content[-4:], 'little') == tfrecord.masked_crc32c(
      b'abc')
