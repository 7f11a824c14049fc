"""Writing batches as TFRecord shards and rejected records as JSONL.

Both go through `fileio.WriteToFiles`, which writes to a temp directory and
moves complete files into place, and which also serves windowed, unbounded
writes (streaming): `WriteToTFRecord` does not.

Everything is written inside the run's own work directory (temp files and
complete files alike); the final names are recorded there
(`transforms.manifest`) before the files are moved to them, so that the run
knows every file it made, even when it is killed.
"""

import gzip
import zlib

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.options.value_provider import StaticValueProvider

from sftbeam.transforms import manifest, schema


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


def _unfinished_naming(suffix: str):
  """fileio naming for shards not yet numbered: one name per destination
  (shard slot) and per file fileio wrote for it."""
  def name(window, pane, index, count, compression, destination):
    del window, pane, compression  # batch mode: global window, one pane
    return (f'{schema.UNFINISHED_SHARD_PREFIX}-{destination:05d}-'
            f'{index:05d}-of-{count:05d}{suffix}')
  return name


def _move_into_place(work_dir: str, output_dir: str, step: str, file_results,
                     final_results):
  """Records the final names in the work directory, then moves the files
  there to them; gives `final_results`."""
  manifest.record_names(work_dir, step,
                        [result.file_name for result in final_results])
  FileSystems.rename(
      [FileSystems.join(work_dir, r.file_name) for r in file_results],
      [FileSystems.join(output_dir, r.file_name) for r in final_results])
  return final_results


def _number_shards(work_dir: str, output_dir: str, suffix: str, file_results):
  """Moves written files to batches-SSSSS-of-NNNNN; gives the new results.

  Shards get their final names only here, after every one is complete, so
  a killed run never leaves a partial set under the names readers use.
  """
  file_results = sorted(file_results, key=lambda result: result.file_name)
  total = len(file_results)
  final = [result._replace(
      file_name=f'{schema.SHARD_PREFIX}-{index:05d}-of-{total:05d}{suffix}',
      shard_index=index, total_shards=total)
           for index, result in enumerate(file_results)]
  return _move_into_place(work_dir, output_dir, 'batches', file_results, final)


def _publish_rejected(work_dir: str, output_dir: str, file_results):
  """Moves the rejected files to the output directory, names unchanged."""
  return _move_into_place(work_dir, output_dir, 'rejected', file_results,
                          file_results)


def _temp_dir(work_dir: str, step: str) -> StaticValueProvider:
  """fileio's temp directory for `step`, inside the run's work directory."""
  return StaticValueProvider(str, FileSystems.join(work_dir, 'temp-' + step))


class WriteBatches(beam.PTransform):
  """Serialized batch Examples -> `batches-SSSSS-of-NNNNN.tfrecord[.gz]`.

  Each batch goes to one of `num_shards` slots by a hash of its bytes; every
  slot is written directly by the bundle that makes its batches (no
  shuffle), then all files are numbered at once. A runner with many bundles
  may write more than one file per slot. Gives the FileResults of the
  final shards.

  `work_dir` is the run's work directory (see transforms.manifest); None:
  a new one, recorded nowhere.
  """

  def __init__(self, output_dir: str, num_shards: int, compression: str,
               work_dir: str = None):
    super().__init__()
    self._output_dir = output_dir
    self._num_shards = num_shards
    self._compression = compression
    self._work_dir = work_dir or manifest.new_work_dir(output_dir)

  def expand(self, serialized_batches):
    suffix = shard_suffix(self._compression)
    num_shards = self._num_shards
    work_dir = self._work_dir
    return (
        serialized_batches
        | 'WriteShards' >> fileio.WriteToFiles(
            path=work_dir,
            destination=lambda batch: zlib.crc32(batch) % num_shards,
            file_naming=_unfinished_naming(suffix),
            temp_directory=_temp_dir(work_dir, 'batches'),
            sink=lambda _: TFRecordSink(self._compression),
            shards=num_shards,
            max_writers_per_bundle=num_shards)
        | 'CollectShards' >> beam.combiners.ToList()
        | 'NumberShards' >> beam.FlatMap(
            lambda results: _number_shards(work_dir, self._output_dir, suffix,
                                           results)))


class WriteRejected(beam.PTransform):
  """Rejected records -> `rejected-SSSSS-of-NNNNN.jsonl`, one JSON a line.

  Gives the FileResults of the written files (none when nothing was
  rejected). `work_dir` as for WriteBatches.
  """

  def __init__(self, output_dir: str, num_shards: int = 1,
               work_dir: str = None):
    super().__init__()
    self._output_dir = output_dir
    self._num_shards = num_shards
    self._work_dir = work_dir or manifest.new_work_dir(output_dir)

  def expand(self, rejected):
    work_dir = self._work_dir
    return (
        rejected
        | 'ToJson' >> beam.Map(lambda record: record.to_json())
        | 'WriteRejectedFiles' >> fileio.WriteToFiles(
            path=work_dir,
            file_naming=fileio.default_file_naming(schema.REJECTED_PREFIX,
                                                   schema.REJECTED_SUFFIX),
            temp_directory=_temp_dir(work_dir, 'rejected'),
            sink=lambda _: fileio.TextSink(),
            shards=self._num_shards)
        | 'CollectRejected' >> beam.combiners.ToList()
        | 'PublishRejected' >> beam.FlatMap(
            lambda results: _publish_rejected(work_dir, self._output_dir,
                                              results)))
