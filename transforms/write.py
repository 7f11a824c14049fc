"""Writing batches as TFRecord shards and rejected records as JSONL.

Both go through `fileio.WriteToFiles`, which writes to a temp directory and
moves complete files into place, and which also serves windowed, unbounded
writes (streaming): `WriteToTFRecord` does not.
"""

import gzip
import zlib

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from sftbeam.transforms import schema
from sftbeam.transforms.tfrecord import describe_shard, write_record


class TFRecordSink(fileio.FileSink):
  """A fileio sink writing each bytes element as one TFRecord record."""

  def __init__(self, compression: str = 'none'):
    self._compression = compression
    self._handle = None

  def create_metadata(self, destination, full_file_name):
    # Compression is done here, not by file extension, so temp files (which
    # have other names) are compressed the same way.
    return fileio.FileMetadata(mime_type='application/octet-stream',
                               compression_type=CompressionTypes.UNCOMPRESSED)

  def open(self, fh):
    self._handle = (gzip.GzipFile(fileobj=fh, mode='wb')
                    if self._compression == 'gzip' else fh)

  def write(self, record: bytes):
    write_record(self._handle, record)

  def flush(self):
    # fileio calls flush only right before it closes the file: closing the
    # GzipFile writes the gzip trailer and leaves the underlying file open.
    if self._compression == 'gzip':
      self._handle.close()
    else:
      self._handle.flush()


def shard_suffix(compression: str) -> str:
  return schema.SHARD_SUFFIX + ('.gz' if compression == 'gzip' else '')


def _unfinished_naming(suffix: str):
  """fileio naming for shards not yet numbered: one name per destination
  (shard slot) and per file fileio wrote for it."""
  def name(window, pane, index, count, compression, destination):
    del window, pane, compression  # batch mode: global window, one pane
    return (f'{schema.UNFINISHED_SHARD_PREFIX}-{destination:05d}-'
            f'{index:05d}-of-{count:05d}{suffix}')
  return name


def _number_shards(output_dir: str, suffix: str, described):
  """Renames written files to batches-SSSSS-of-NNNNN.

  Takes (FileResult, describe_shard entry) pairs; gives the entries under
  their new names. Shards get their final names only here, after every one
  is complete, so a killed run never leaves a partial set under the names
  readers use.
  """
  described = sorted(described, key=lambda pair: pair[0].file_name)
  total = len(described)
  final = [dict(entry, name=f'{schema.SHARD_PREFIX}-{index:05d}-of-'
                f'{total:05d}{suffix}')
           for index, (_, entry) in enumerate(described)]
  FileSystems.rename(
      [FileSystems.join(output_dir, result.file_name)
       for result, _ in described],
      [FileSystems.join(output_dir, entry['name']) for entry in final])
  return final


class WriteBatches(beam.PTransform):
  """Serialized batch Examples -> `batches-SSSSS-of-NNNNN.tfrecord[.gz]`.

  Each batch goes to one of `num_shards` slots by a hash of its bytes; every
  slot is written directly by the bundle that makes its batches (no
  shuffle), then each file is described (records, bytes, sha256; in
  parallel) and all are numbered at once. A runner with many bundles may
  write more than one file per slot. Gives the dataset_info.json entries of
  the final shards (see describe_shard).
  """

  def __init__(self, output_dir: str, num_shards: int, compression: str):
    super().__init__()
    self._output_dir = output_dir
    self._num_shards = num_shards
    self._compression = compression

  def expand(self, serialized_batches):
    suffix = shard_suffix(self._compression)
    num_shards = self._num_shards
    output_dir = self._output_dir
    return (
        serialized_batches
        | 'WriteShards' >> fileio.WriteToFiles(
            path=self._output_dir,
            destination=lambda batch: zlib.crc32(batch) % num_shards,
            file_naming=_unfinished_naming(suffix),
            sink=lambda _: TFRecordSink(self._compression),
            shards=num_shards,
            max_writers_per_bundle=num_shards)
        | 'DescribeShards' >> beam.Map(lambda result: (result, describe_shard(
            FileSystems.join(output_dir, result.file_name))))
        | 'CollectShards' >> beam.combiners.ToList()
        | 'NumberShards' >> beam.FlatMap(
            lambda described: _number_shards(output_dir, suffix, described)))


class WriteRejected(beam.PTransform):
  """Rejected records -> `rejected-SSSSS-of-NNNNN.jsonl`, one JSON a line.

  Gives the FileResults of the written files (none when nothing was
  rejected).
  """

  def __init__(self, output_dir: str, num_shards: int = 1):
    super().__init__()
    self._output_dir = output_dir
    self._num_shards = num_shards

  def expand(self, rejected):
    return (
        rejected
        | 'ToJson' >> beam.Map(lambda record: record.to_json())
        | 'WriteRejectedFiles' >> fileio.WriteToFiles(
            path=self._output_dir,
            file_naming=fileio.default_file_naming(schema.REJECTED_PREFIX,
                                                   schema.REJECTED_SUFFIX),
            sink=lambda _: fileio.TextSink(),
            shards=self._num_shards))
