"""Parquet output (--output_format parquet): one row per example (or per
packed row), listed and checksummed like TFRecord shards, read back by
every reader as the same batches, and readable without sftbeam.

The unit tests write batches with parquet_shards and read them back as the
Example bytes the TFRecord writer writes for the same arrays; the end to
end ones compare a run of each format on the same input, batch for batch.
"""

import hashlib
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, SAMPLE, run_sftbeam
from output_rows import rows_by_id
from sftbeam.pipeline import cli
from sftbeam.readers import (CorruptOutput, iter_numpy_batches,
                             load_dataset_info, read_tf_dataset,
                             torch_dataset)
from sftbeam.transforms import example_codec, filenames, pack, schema
from sftbeam.transforms import parquet_shards, write
from sftbeam.transforms.spec_arithmetic import pad_shift_mask
from token_chunks import pairs_chunk

CHUNK = pairs_chunk([[1, 2], [5], [8, 9, 10]], [[3, 4], [6, 7], [11]],
                    ['a', 'b', 'c'])
PAD_ID = 99


def batch_arrays(layout: str, width=None) -> tuple:
  """(arrays, example ids) of a small batch of `layout`."""
  if layout == 'packed':
    arrays = pack.packed_arrays(CHUNK, [np.array([0, 1]), np.array([2])], 6,
                                PAD_ID)
    return arrays, arrays['example_ids']
  return pad_shift_mask(CHUNK, PAD_ID, width), CHUNK.example_ids


def write_shard(path, layout, batches_per_row_group, compression='none'):
  """A shard of copies of the small batch, in row groups of
  `batches_per_row_group` (a list of counts) batches; gives the Examples
  the TFRecord writer writes for them."""
  arrays, example_ids = batch_arrays(layout, 8)
  table = parquet_shards.rows_table(arrays, example_ids, layout, PAD_ID)
  number = 0
  with open(path, 'wb') as handle:
    writer = parquet_shards.open_writer(handle, table.schema, compression)
    for count in batches_per_row_group:
      parquet_shards.write_batches(writer, [
          parquet_shards.numbered(table, number + index)
          for index in range(count)])
      number += count
    writer.close()
  return [example_codec.serialize_batch(arrays, example_ids, layout)] * number


@pytest.mark.parametrize('layout', sorted(schema.LAYOUTS))
@pytest.mark.parametrize('compression', ['none', 'snappy', 'gzip', 'zstd'])
def test_a_shard_reads_back_as_the_examples_of_its_batches(layout,
                                                           compression,
                                                           tmp_path):
  path = str(tmp_path / 'batches-00000-of-00001.parquet')
  examples = write_shard(path, layout, [2, 1, 3], compression)
  assert list(parquet_shards.batch_examples(path)) == examples
  assert list(parquet_shards.batch_examples(path, 2, 4)) == examples[2:4]
  entry = parquet_shards.describe_shard(path)
  rows_per_batch = 3 if layout == 'padded' else 2
  with open(path, 'rb') as handle:
    content = handle.read()
  assert entry == {'name': os.path.basename(path), 'records': 6,
                   'rows': 6 * rows_per_batch, 'bytes': len(content),
                   'sha256': hashlib.sha256(content).hexdigest()}


def test_padded_rows_are_the_spec_rows_without_padding():
  """Each example's row up to prompt + output - 1, and its batch's width;
  the batch rebuilt from its rows is the padded batch, for a width of
  the longest row too."""
  for width in (8, None):
    arrays, example_ids = batch_arrays('padded', width)
    table = parquet_shards.rows_table(arrays, example_ids, 'padded', PAD_ID)
    rows = table.to_pylist()
    for index, row in enumerate(rows):
      length = row['prompt_length'] + row['output_length'] - 1
      assert row['input_ids'] == arrays['input_ids'][index][:length].tolist()
      assert row['labels'] == arrays['labels'][index][:length].tolist()
      assert row['response_mask'] == (
          arrays['response_mask'][index][:length].tolist())
      assert row['batch_width'] == arrays['input_ids'].shape[1]
    rebuilt = parquet_shards._padded_arrays(table, PAD_ID)
    for name in schema.MATRIX_FEATURES + schema.ROW_FEATURES:
      np.testing.assert_array_equal(rebuilt[name], arrays[name])
      assert rebuilt[name].dtype == arrays[name].dtype


def test_the_sink_numbers_batches_in_row_groups_of_whole_batches(
    monkeypatch, tmp_path):
  """Rows held up to the row group size (here about two batches), then
  written as one row group; the file reads back batch for batch."""
  arrays, example_ids = batch_arrays('padded', 8)
  batch = parquet_shards.parquet_batch(arrays, example_ids, 'padded', PAD_ID)
  monkeypatch.setattr(write, '_ROW_GROUP_BYTES', 2 * batch.rows.nbytes)
  path = str(tmp_path / 'batches-00000-of-00001.parquet')
  sink = write.ParquetSink('snappy')
  with open(path, 'wb') as handle:
    sink.open(handle)
    for _ in range(5):
      sink.write(batch)
    sink.flush()
  parquet_file = pq.ParquetFile(path)
  assert [parquet_file.metadata.row_group(index).num_rows
          for index in range(parquet_file.num_row_groups)] == [6, 6, 3]
  assert pq.read_table(path).column('batch').to_pylist() == [
      number for number in range(5) for _ in range(3)]
  assert list(parquet_shards.batch_examples(path)) == [
      example_codec.serialize_batch(arrays, example_ids)] * 5
  assert batch.example_crc == zlib.crc32(
      example_codec.serialize_batch(arrays, example_ids))


def test_the_files_of_a_slot_join_into_one_shard_renumbered(tmp_path):
  parts = [str(tmp_path / f'part{index}.parquet') for index in range(3)]
  examples = []
  for path, counts in zip(parts, ([1, 2], [1], [2, 2])):
    examples += write_shard(path, 'padded', counts, 'zstd')
  final = str(tmp_path / 'batches-00000-of-00001.parquet')
  parquet_shards.join_parts(parts, final, 'zstd')
  assert list(parquet_shards.batch_examples(final)) == examples
  assert parquet_shards.describe_shard(final)['records'] == 8
  assert pq.ParquetFile(final).metadata.num_row_groups == 5
  assert pq.ParquetFile(final).metadata.row_group(0).column(
      1).compression == 'ZSTD'


def test_an_empty_shard_has_the_columns_and_no_batch(tmp_path):
  path = str(tmp_path / 'batches-00000-of-00001.parquet')
  parquet_shards.write_empty(path, 'packed', 'none')
  assert parquet_shards.describe_shard(path)['records'] == 0
  assert list(parquet_shards.batch_examples(path)) == []
  assert pq.read_table(path).column_names == list(
      schema.PARQUET_COLUMNS['packed'])


def test_pages_carry_checksums_that_find_a_flipped_byte(tmp_path):
  """Any reader that checks page CRCs (pyarrow's
  page_checksum_verification) finds a byte flipped in a page."""
  path = str(tmp_path / 'batches-00000-of-00001.parquet')
  write_shard(path, 'padded', [3])
  chunk = pq.ParquetFile(path).metadata.row_group(0).column(2)
  data = bytearray(open(path, 'rb').read())
  data[chunk.data_page_offset + chunk.total_compressed_size - 1] ^= 0x55
  with open(path, 'wb') as handle:
    handle.write(bytes(data))
  pq.read_table(path)  # unchecked, the damage passes
  with pytest.raises(OSError, match='CRC'):
    pq.read_table(path, page_checksum_verification=True)


@pytest.mark.parametrize('change, message', [
    (lambda table: table.set_column(0, 'batch', pa.array(
        [0, 0, 0, 2, 2, 2], pa.int32())), 'not numbered 0, 1'),
    (lambda table: table.drop_columns(['batch']), 'first column'),
])
def test_a_shard_numbered_otherwise_is_refused(change, message, tmp_path):
  path = str(tmp_path / 'batches-00000-of-00001.parquet')
  write_shard(path, 'padded', [2])
  pq.write_table(change(pq.read_table(path)), path)
  with pytest.raises(parquet_shards.CorruptParquetShard, match=message):
    parquet_shards.describe_shard(path)


def test_a_batch_across_row_groups_is_refused(tmp_path):
  path = str(tmp_path / 'batches-00000-of-00001.parquet')
  write_shard(path, 'padded', [2])
  pq.write_table(pq.read_table(path), path, row_group_size=4)
  with pytest.raises(parquet_shards.CorruptParquetShard,
                     match='spans two row groups'):
    parquet_shards.describe_shard(path)


@pytest.mark.parametrize('flags, message', [
    (['--output_format', 'parquet', '--streaming', '--input_topic',
      'projects/my-project/topics/records'],
     'streaming run writes TFRecord'),
    (['--output_format', 'tfrecord', '--compression', 'zstd'],
     'compression zstd does not apply to output_format tfrecord'),
])
def test_refused_format_combinations_are_config_errors(flags, message,
                                                       capsys, tmp_path):
  args = ['run', '--output', str(tmp_path / 'out'), *flags]
  if '--streaming' not in flags:
    args += ['--input', SAMPLE]
  assert cli.main(args) == 2
  assert message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'out')


# ------------------------------------------------------------ end to end

def run(output_dir, *flags):
  run_sftbeam('run', '--config', os.path.join(ROOT, 'configs/local.yaml'),
              '--input', SAMPLE, '--output', str(output_dir), *flags,
              network=False, check=True)
  return str(output_dir)


@pytest.fixture(scope='module', params=['padded', 'packed'])
def runs(request, tmp_path_factory):
  """{format: output dir} of one run of the sample per format."""
  directory = tmp_path_factory.mktemp(request.param)
  flags = ['--layout', request.param, '--pack_length', '1024']
  return {'tfrecord': run(directory / 'tfrecord', *flags),
          'parquet': run(directory / 'parquet', *flags, '--output_format',
                         'parquet', '--compression', 'zstd')}


def same_batches(ours, theirs):
  assert len(ours) == len(theirs) > 0
  for one, other in zip(ours, theirs):
    assert one.keys() == other.keys()
    for name, value in one.items():
      if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(value, other[name])
        assert value.dtype == other[name].dtype
      else:
        assert value == other[name]


@pytest.mark.slow
def test_every_reader_gives_the_tfrecord_runs_batches(runs):
  """Batch for batch, in the same order, plain and shuffled."""
  for shuffle in (False, True):
    same_batches(list(iter_numpy_batches(runs['parquet'], shuffle=shuffle,
                                         seed=1)),
                 list(iter_numpy_batches(runs['tfrecord'], shuffle=shuffle,
                                         seed=1)))
  as_numpy = lambda batches: [{name: np.asarray(value) if not isinstance(
      value, (list, int)) else value for name, value in batch.items()}
                              for batch in batches]
  same_batches(as_numpy(torch_dataset(runs['parquet'], shuffle=True)),
               as_numpy(torch_dataset(runs['tfrecord'], shuffle=True)))
  same_batches(list(read_tf_dataset(runs['parquet']).as_numpy_iterator()),
               list(read_tf_dataset(runs['tfrecord']).as_numpy_iterator()))
  if load_dataset_info(runs['parquet'])['layout'] == 'padded':
    assert rows_by_id(runs['parquet']) == rows_by_id(runs['tfrecord'])


@pytest.mark.slow
def test_parquet_shards_are_listed_and_checksummed(runs):
  info = load_dataset_info(runs['parquet'])
  assert [entry['name'] for entry in info['shards']] == [
      f'batches-0000{slot}-of-00004.parquet' for slot in range(4)]
  for entry in info['shards']:
    path = os.path.join(runs['parquet'], entry['name'])
    with open(path, 'rb') as handle:
      assert entry['sha256'] == hashlib.sha256(handle.read()).hexdigest()
    assert entry['rows'] == pq.ParquetFile(path).metadata.num_rows
  assert set(info['features']) == set(schema.PARQUET_COLUMNS[info['layout']])
  assert sum(entry['records'] for entry in info['shards']) == (
      info['counts']['batches_written'])
  tfrecord_info = load_dataset_info(runs['tfrecord'])
  assert info['counts'] == tfrecord_info['counts']


@pytest.mark.slow
def test_a_changed_parquet_shard_is_refused(runs, tmp_path):
  output = str(tmp_path / 'out')
  subprocess.run(['cp', '-r', runs['parquet'], output], check=True)
  entry = load_dataset_info(output)['shards'][1]
  path = os.path.join(output, entry['name'])
  table = pq.read_table(path)
  pq.write_table(table.slice(0, table.num_rows - 1), path)
  with pytest.raises(CorruptOutput, match=entry['name']):
    list(iter_numpy_batches(output))


@pytest.mark.slow
def test_inspect_and_stats_read_parquet_output(runs, capsys):
  batch = next(iter_numpy_batches(runs['parquet']))
  example_id = batch['example_ids'][-1]
  shown = {}
  for kind, output in runs.items():
    assert cli.main(['inspect', output, '--id', example_id]) == 0
    assert cli.main(['stats', output]) == 0
    # The same text, but for the directory's and the shards' names.
    shown[kind] = capsys.readouterr().out.replace(output, 'OUT').replace(
        '.parquet', '.tfrecord')
  assert shown['parquet'] == shown['tfrecord']
  assert f'example {example_id}: prompt' in shown['parquet']


WITHOUT_SFTBEAM = """
import json, sys
import duckdb, pyarrow.parquet as pq
from datasets import load_dataset
files, cache = sys.argv[1:-1], sys.argv[-1]
assert not any(name.startswith('sftbeam') for name in sys.modules)
table = pq.read_table(files)
loaded = load_dataset('parquet', data_files=files, split='train',
                      cache_dir=cache)
listing = ', '.join(repr(name) for name in files)
queried = duckdb.sql(f'SELECT * FROM read_parquet([{listing}])').fetchall()
print(json.dumps({'pyarrow': table.to_pylist(),
                  'datasets': loaded.to_list(),
                  'duckdb': [list(row) for row in queried],
                  'columns': table.column_names}))
"""


@pytest.mark.slow
def test_pyarrow_datasets_and_duckdb_read_the_rows(runs, tmp_path):
  """In a fresh interpreter without sftbeam: every row, per example id the
  row the readers give, up to its length (padded) or whole (packed)."""
  info = load_dataset_info(runs['parquet'])
  files = [os.path.join(runs['parquet'], entry['name'])
           for entry in info['shards']]
  result = subprocess.run(
      [sys.executable, '-c', WITHOUT_SFTBEAM, *files, str(tmp_path)],
      capture_output=True, text=True, check=True,
      env=dict(os.environ, HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1'))
  read = json.loads(result.stdout)
  columns = read['columns']
  assert columns == list(schema.PARQUET_COLUMNS[info['layout']])
  duckdb_rows = [dict(zip(columns, row)) for row in read['duckdb']]
  for rows in (read['datasets'], duckdb_rows):
    assert sorted(rows, key=json.dumps) == sorted(read['pyarrow'],
                                                  key=json.dumps)
  expected = reader_rows(runs['tfrecord'])
  assert len(read['pyarrow']) == len(expected)
  for row in read['pyarrow']:
    if info['layout'] == 'padded':
      key = (row['example_id'],)
      length = row['prompt_length'] + row['output_length'] - 1
    else:
      key, length = tuple(row['example_ids']), info['pack_length']
    for name, values in expected[key].items():
      assert row[name] == values[:length]


def reader_rows(output_dir) -> dict:
  """{example ids of a row: {matrix feature: the row}} of every row the
  readers give (a padded row holds one example, a packed row several)."""
  rows = {}
  for batch in iter_numpy_batches(output_dir):
    per_row = batch.get('examples_per_row', np.ones(len(batch['input_ids']),
                                                    np.int64))
    ends = np.cumsum(per_row)
    for row, (end, count) in enumerate(zip(ends, per_row)):
      key = tuple(batch['example_ids'][end - count:end])
      rows[key] = {name: batch[name][row].tolist()
                   for name in schema.LAYOUTS['packed'].matrix
                   if name in batch}
  return rows


@pytest.mark.slow
def test_overwrite_replaces_a_run_of_the_other_format(tmp_path):
  """The manifest names Parquet shards like TFRecord ones: each format's
  run replaces the other's files, and nothing of it is left."""
  output = str(tmp_path / 'out')
  run(output, '--output_format', 'parquet')
  run(output, '--overwrite')
  names = os.listdir(output)
  assert not any(name.endswith('.parquet') for name in names)
  run(output, '--overwrite', '--output_format', 'parquet')
  names = os.listdir(output)
  assert not any(filenames.SHARD_SUFFIX in name for name in names)
  assert len(list(iter_numpy_batches(output))) > 0
