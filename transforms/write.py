"""Writing batches as TFRecord or Parquet shards, and rejected records as
JSONL.

Both go through `fileio.WriteToFiles`, which writes to a temp directory and
moves complete files into place, and which also serves windowed, unbounded
writes (streaming): `WriteToTFRecord` does not.

A batch run writes exactly `num_shards` shards. Each batch goes to one of
`num_shards` slots by a hash of its Example bytes (either format); every
bundle writes one file per slot it has batches for, without a shuffle (on
a local runner one bundle spans the input, so one file per slot).
`JoinSlots` then makes each slot one shard, `batches-SSSSS-of-NNNNN`: it
renames a slot's only file, or joins its files (TFRecord and gzip files
stay valid when concatenated; Parquet files are rewritten row group by row
group, their batches renumbered), or writes an empty shard for a slot that
got no batch.

A file gets its final name only when complete: fileio writes below
`DIR/temp` and moves complete files into place, and JoinSlots joins there
too. A run writes all this in its own work directory, which
pipeline/output_dir.py moves into --output once the run has succeeded.
"""

import concurrent.futures
import functools
import gzip
import os
import zlib
from typing import Callable, NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms.window import GlobalWindows

from sftbeam.transforms import filenames, parquet_shards, tfrecord
from sftbeam.transforms.filenames import shard_name, shard_names, shard_suffix
from sftbeam.transforms.paths import delete_files

OUTPUT_FORMATS = ('tfrecord', 'parquet')
# The --compression values of each format.
SHARD_COMPRESSIONS = {'tfrecord': ('none', 'gzip'),
                      'parquet': ('none', 'snappy', 'gzip', 'zstd')}
_COPY_BYTES = 8 << 20
# A Parquet shard's rows are held until they make a row group this large
# (in memory, uncompressed), or the file ends: a bundle may hold a file
# open per shard (a local run: all of them), so memory stays at most
# num_shards times this, whatever the input's size.
_ROW_GROUP_BYTES = 4 << 20


def _uncompressed_metadata():
  # Compression is done by the sinks, not by file extension, so temp files
  # (which have other names) are compressed the same way.
  return fileio.FileMetadata(mime_type='application/octet-stream',
                             compression_type=CompressionTypes.UNCOMPRESSED)


class TFRecordSink(fileio.FileSink):
  """A fileio sink writing each bytes element as one TFRecord record."""

  def __init__(self, compression: str = 'none'):
    self._compression = compression
    self._handle = None

  def create_metadata(self, destination, full_file_name):
    return _uncompressed_metadata()

  def open(self, fh):
    self._handle = (gzip.GzipFile(fileobj=fh, mode='wb')
                    if self._compression == 'gzip' else fh)

  def write(self, example: bytes):
    tfrecord.write_record(self._handle, example)

  def flush(self):
    # fileio calls flush only right before it closes the file: closing the
    # GzipFile writes the gzip trailer and leaves the underlying file open.
    if self._compression == 'gzip':
      self._handle.close()
    else:
      self._handle.flush()


class ParquetSink(fileio.FileSink):
  """A fileio sink writing each batch (a parquet_shards.ParquetBatch) as
  rows of one Parquet file, numbered 0, 1, ... in order, in row groups of
  whole batches."""

  def __init__(self, compression: str = 'none'):
    self._compression = compression
    self._handle = None
    self._writer = None
    self._held = []  # numbered batch tables not yet in a row group
    self._held_bytes = 0
    self._batches = 0

  def create_metadata(self, destination, full_file_name):
    return _uncompressed_metadata()

  def open(self, fh):
    self._handle, self._writer = fh, None
    self._held, self._held_bytes, self._batches = [], 0, 0

  def write(self, batch: parquet_shards.ParquetBatch):
    self._held.append(parquet_shards.numbered(batch.rows, self._batches))
    self._held_bytes += batch.rows.nbytes
    self._batches += 1
    if self._held_bytes >= _ROW_GROUP_BYTES:
      self._write_held()

  def _write_held(self):
    if self._writer is None:  # the first batch's schema: its pad id
      self._writer = parquet_shards.open_writer(
          self._handle, self._held[0].schema, self._compression)
    parquet_shards.write_batches(self._writer, self._held)
    self._held, self._held_bytes = [], 0

  def flush(self):
    # Called right before fileio closes the file: the footer goes last.
    if self._held:
      self._write_held()
    self._writer.close()


class _ShardFormat(NamedTuple):
  """What writing shards of one --output_format takes."""
  sink: Callable  # () -> fileio.FileSink
  slot_hash: Callable  # element -> int: which slot it goes to
  join: Callable  # (part paths, final path): one shard of a slot's files
  write_empty: Callable  # path: a shard without batches
  describe: Callable  # path -> its dataset_info.json entry


def _concatenate(parts, final: str):
  """TFRecord (and gzip) files joined by concatenating their bytes."""
  with FileSystems.create(
      final, compression_type=CompressionTypes.UNCOMPRESSED) as target:
    for path in parts:
      with FileSystems.open(
          path, compression_type=CompressionTypes.UNCOMPRESSED) as source:
        while block := source.read(_COPY_BYTES):
          target.write(block)


def _write_empty_tfrecord(path: str):
  with FileSystems.create(
      path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    handle.write(gzip.compress(b'') if tfrecord.is_gzip(path) else b'')


def shard_format(output_format: str, compression: str,
                 layout: str) -> _ShardFormat:
  """The sink, slot hash, join, empty shard and description of a format."""
  if output_format == 'parquet':
    return _ShardFormat(
        sink=lambda: ParquetSink(compression),
        slot_hash=lambda batch: batch.example_crc,
        join=functools.partial(parquet_shards.join_parts,
                               compression=compression),
        write_empty=functools.partial(parquet_shards.write_empty,
                                      layout=layout, compression=compression),
        describe=parquet_shards.describe_shard)
  return _ShardFormat(
      sink=lambda: TFRecordSink(compression), slot_hash=zlib.crc32,
      join=_concatenate, write_empty=_write_empty_tfrecord,
      describe=tfrecord.describe_shard)


def _slot_file_naming(suffix: str):
  """fileio naming of the files a slot gets before JoinSlots."""
  def name(window, pane, index, count, compression, destination):
    del window, pane, compression  # batch mode: global window, one pane
    return filenames.slot_file_name(destination, index, count, suffix)
  return name


def _temp_dir_of(output_dir: str) -> str:
  """Where the writers of `output_dir` keep files until complete."""
  return FileSystems.join(output_dir, filenames.TEMP_DIR)


def _fileio_temp_dir(temp_dir: str, step: str) -> StaticValueProvider:
  """fileio's temp directory for `step`, inside `temp_dir`."""
  return StaticValueProvider(str, FileSystems.join(temp_dir, step))


class _JoinSlotFn(beam.DoFn):
  """(slot, [FileResult, ...]) -> the slot's final shard path.

  The slot's files are in `temp_dir`, the shard goes to `output_dir`;
  `join(parts, final)` joins several. Idempotent under retry: when the
  shard is already in place and the slot's files are gone, an earlier
  attempt finished the job.
  """

  def __init__(self, temp_dir: str, output_dir: str, num_shards: int,
               suffix: str, join=_concatenate):
    self._temp_dir = temp_dir
    self._output_dir = output_dir
    self._num_shards = num_shards
    self._suffix = suffix
    self._join = join

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
      self._join(parts, final)
      delete_files(parts)
    yield final


class _DescribeShardsFn(beam.DoFn):
  """Shard path -> its dataset_info.json entry (`describe(path)`).

  The shards of a bundle are described side by side on threads, one per
  core (hashing and reading release the GIL): on a local run, where one
  bundle holds every shard, this is the last wait of the run. Entries
  leave when the bundle ends, in the global window (batch runs only); an
  error describing a shard fails the bundle.
  """

  def __init__(self, describe: Callable):
    self._describe = describe
    self._threads = None
    self._described = None  # Futures of this bundle's entries

  def setup(self):
    self._threads = concurrent.futures.ThreadPoolExecutor(
        len(os.sched_getaffinity(0)), thread_name_prefix='describe')

  def start_bundle(self):
    self._described = []

  def process(self, path: str):
    self._described.append(self._threads.submit(self._describe, path))

  def finish_bundle(self):
    described, self._described = self._described, None
    for entry in described:
      yield GlobalWindows.windowed_value(entry.result())

  def teardown(self):
    if self._threads is not None:
      self._threads.shutdown(cancel_futures=True)


def _with_empty_shards(output_dir: str, num_shards: int, suffix: str,
                       shards: _ShardFormat, written: list) -> list:
  """Every slot's shard entry: `written` (describe entries), plus an empty
  shard for each slot that got no batch (so a run has exactly num_shards
  shards)."""
  entries = list(written)
  missing = set(shard_names(num_shards, suffix)) - {
      entry['name'] for entry in written}
  for name in sorted(missing):
    path = FileSystems.join(output_dir, name)
    shards.write_empty(path)
    entries.append(shards.describe(path))
  return sorted(entries, key=lambda entry: entry['name'])


class WriteBatches(beam.PTransform):
  """Batches -> `num_shards` shards (see the module doc): serialized batch
  Examples as TFRecord shards, or, with `output_format` parquet,
  parquet_shards.ParquetBatch-es of `layout` as Parquet shards.

  Gives the dataset_info.json entry of every final shard (records, bytes,
  sha256: see tfrecord.describe_shard, parquet_shards.describe_shard; each
  shard described in parallel: on several workers, and on threads within
  one) once all are in place.
  """

  def __init__(self, output_dir: str, num_shards: int, compression: str,
               output_format: str = 'tfrecord', layout: str = 'padded'):
    super().__init__()
    self._output_dir = output_dir
    self._num_shards = num_shards
    self._suffix = shard_suffix(compression, output_format)
    self._format = shard_format(output_format, compression, layout)

  def expand(self, batches):
    suffix, shards = self._suffix, self._format
    num_shards = self._num_shards
    temp_dir = _temp_dir_of(self._output_dir)
    return (
        batches
        | 'WriteSlots' >> fileio.WriteToFiles(
            path=temp_dir,
            destination=lambda batch: shards.slot_hash(batch) % num_shards,
            file_naming=_slot_file_naming(suffix),
            temp_directory=_fileio_temp_dir(temp_dir, 'batches'),
            sink=lambda _: shards.sink(),
            shards=num_shards,
            max_writers_per_bundle=num_shards)
        | 'BySlot' >> beam.GroupBy(lambda result: result.destination)
        | 'JoinSlots' >> beam.ParDo(
            _JoinSlotFn(temp_dir, self._output_dir, num_shards, suffix,
                        shards.join))
        | 'DescribeShards' >> beam.ParDo(_DescribeShardsFn(shards.describe))
        | 'CollectShards' >> beam.combiners.ToList()
        | 'AddEmptyShards' >> beam.FlatMap(
            lambda written: _with_empty_shards(
                self._output_dir, num_shards, suffix, shards, written)))


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
        | 'ToJson' >> beam.Map(lambda rejected: rejected.to_json())
        | 'WriteRejectedFiles' >> fileio.WriteToFiles(
            path=self._output_dir,
            file_naming=fileio.default_file_naming(
                filenames.REJECTED_PREFIX, filenames.REJECTED_SUFFIX),
            temp_directory=_fileio_temp_dir(_temp_dir_of(self._output_dir),
                                            'rejected'),
            sink=lambda _: fileio.TextSink(),
            shards=self._num_shards))
