"""Writing batches as TFRecord shards and rejected records as JSONL.

Both go through `fileio.WriteToFiles`, which writes to a temp directory and
moves complete files into place, and which also serves windowed, unbounded
writes (streaming): `WriteToTFRecord` does not.
"""

import gzip

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.tfrecordio import _TFRecordUtil

from transforms import schema


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
    _TFRecordUtil.write_record(self._handle, record)

  def flush(self):
    # fileio calls flush only right before it closes the file: closing the
    # GzipFile writes the gzip trailer and leaves the underlying file open.
    if self._compression == 'gzip':
      self._handle.close()
    else:
      self._handle.flush()


def shard_suffix(compression: str) -> str:
  return schema.SHARD_SUFFIX + ('.gz' if compression == 'gzip' else '')


class WriteBatches(beam.PTransform):
  """Serialized batch Examples -> `batches-SSSSS-of-NNNNN.tfrecord[.gz]`.

  Gives the FileResults of the written shards.
  """

  def __init__(self, output_dir: str, num_shards: int, compression: str):
    super().__init__()
    self._output_dir = output_dir
    self._num_shards = num_shards
    self._compression = compression

  def expand(self, serialized_batches):
    return serialized_batches | 'WriteShards' >> fileio.WriteToFiles(
        path=self._output_dir,
        file_naming=fileio.default_file_naming(
            schema.SHARD_PREFIX, shard_suffix(self._compression)),
        sink=lambda _: TFRecordSink(self._compression),
        shards=self._num_shards)


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
