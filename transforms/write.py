"""Writing batches as TFRecord shards and rejected records as JSONL.

Both go through `fileio.WriteToFiles`, which writes to a temp directory and
moves complete files into place, and which also serves windowed, unbounded
writes (streaming): `WriteToTFRecord` does not.

A batch run writes exactly `num_shards` shards. Each batch goes to one of
`num_shards` slots by a hash of its bytes; every bundle writes one file per
slot it has batches for, without a shuffle (on a local runner one bundle
spans the input, so one file per slot). `JoinSlots` then makes each slot
one shard, `batches-SSSSS-of-NNNNN`: it renames a slot's only file, or
joins its files (TFRecord and gzip files stay valid when concatenated), or
writes an empty shard for a slot that got no batch.

A file gets its final name only when complete: fileio writes below
`DIR/temp` and moves complete files into place, and JoinSlots joins there
too. A run writes all this in its own work directory, which
pipeline/output_dir.py moves into --output once the run has succeeded.
"""

import gzip
import zlib

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider

from sftbeam.transforms import filenames
from sftbeam.transforms.filenames import shard_name, shard_names, shard_suffix
from sftbeam.transforms.paths import delete_files
from sftbeam.transforms.tfrecord import (describe_shard, is_gzip,
                                         write_record)


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


def _slot_file_naming(suffix: str):
  """fileio naming of the files a slot gets before JoinSlots."""
  def name(window, pane, index, count, compression, destination):
    del window, pane, compression  # batch mode: global window, one pane
    return filenames.slot_file_name(destination, index, count, suffix)
  return name


def _temp_dir_of(output_dir: str) -> str:
  """Where the writers of `output_dir` keep files until complete."""
  return FileSystems.join(output_dir, 'temp')


def _fileio_temp_dir(temp_dir: str, step: str) -> StaticValueProvider:
  """fileio's temp directory for `step`, inside `temp_dir`."""
  return StaticValueProvider(str, FileSystems.join(temp_dir, step))


_COPY_BYTES = 8 << 20


class _JoinSlotFn(beam.DoFn):
  """(slot, [FileResult, ...]) -> the slot's final shard path.

  The slot's files are in `temp_dir`, the shard goes to `output_dir`.
  Idempotent under retry: when the shard is already in place and the
  slot's files are gone, an earlier attempt finished the job.
  """

  def __init__(self, temp_dir: str, output_dir: str, num_shards: int,
               suffix: str):
    self._temp_dir = temp_dir
    self._output_dir = output_dir
    self._num_shards = num_shards
    self._suffix = suffix

  def process(self, slot_files):
    slot, results = slot_files
    final = FileSystems.join(
        self._output_dir, shard_name(slot, self._num_shards, self._suffix))
    parts = sorted(FileSystems.join(self._temp_dir, result.file_name)
                   for result in results)
    present = [path for path in parts if FileSystems.exists(path)]
    if not present and FileSystems.exists(final):
      yield final
      return
    if len(parts) == 1:
      FileSystems.rename(parts, [final])
    else:
      with FileSystems.create(
          final, compression_type=CompressionTypes.UNCOMPRESSED) as target:
        for path in parts:
          with FileSystems.open(
              path, compression_type=CompressionTypes.UNCOMPRESSED) as source:
            while block := source.read(_COPY_BYTES):
              target.write(block)
      delete_files(parts)
    yield final


def _with_empty_shards(output_dir: str, num_shards: int, compression: str,
                       written: list) -> list:
  """Every slot's shard entry: `written` (describe_shard entries), plus an
  empty shard for each slot that got no batch (so a run has exactly
  num_shards shards)."""
  entries = list(written)
  missing = set(shard_names(num_shards, compression)) - {
      entry['name'] for entry in written}
  for name in sorted(missing):
    path = FileSystems.join(output_dir, name)
    with FileSystems.create(
        path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
      handle.write(gzip.compress(b'') if is_gzip(name) else b'')
    entries.append(describe_shard(path))
  return sorted(entries, key=lambda entry: entry['name'])


class WriteBatches(beam.PTransform):
  """Serialized batch Examples -> `num_shards` shards (see the module doc).

  Gives the dataset_info.json entry of every final shard (records, bytes,
  sha256: see tfrecord.describe_shard; each shard described in parallel)
  once all are in place.
  """

  def __init__(self, output_dir: str, num_shards: int, compression: str):
    super().__init__()
    self._output_dir = output_dir
    self._num_shards = num_shards
    self._compression = compression

  def expand(self, serialized_batches):
    suffix = shard_suffix(self._compression)
    num_shards = self._num_shards
    temp_dir = _temp_dir_of(self._output_dir)
    return (
        serialized_batches
        | 'WriteSlots' >> fileio.WriteToFiles(
            path=temp_dir,
            destination=lambda batch: zlib.crc32(batch) % num_shards,
            file_naming=_slot_file_naming(suffix),
            temp_directory=_fileio_temp_dir(temp_dir, 'batches'),
            sink=lambda _: TFRecordSink(self._compression),
            shards=num_shards,
            max_writers_per_bundle=num_shards)
        | 'BySlot' >> beam.GroupBy(lambda result: result.destination)
        | 'JoinSlots' >> beam.ParDo(
            _JoinSlotFn(temp_dir, self._output_dir, num_shards, suffix))
        | 'DescribeShards' >> beam.Map(describe_shard)
        | 'CollectShards' >> beam.combiners.ToList()
        | 'AddEmptyShards' >> beam.FlatMap(
            lambda written: _with_empty_shards(
                self._output_dir, num_shards, self._compression, written)))


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
            file_naming=fileio.default_file_naming(
                filenames.REJECTED_PREFIX, filenames.REJECTED_SUFFIX),
            temp_directory=_fileio_temp_dir(_temp_dir_of(self._output_dir),
                                            'rejected'),
            sink=lambda _: fileio.TextSink(),
            shards=self._num_shards))
