"""Benchmark: the size of a run's shards in each output format, and reading
them back.

Run from the project root:

  .venv/bin/python benchmarks/output_sizes.py [--workdir /tmp/sftbeam-sizes]

Input: the shared prompt/output records (../shared/data: gsm8k_train,
gsm8k_test, alpaca_5000; --inputs to choose others). For each layout
(padded, packed with --pack_length 2048) and each output format and
compression (tfrecord none and gzip; parquet none, snappy, gzip and zstd)
one `sftbeam run` (configs/local.yaml, the default options otherwise)
writes WORKDIR/out-LAYOUT-FORMAT-COMPRESSION, and then:
  shard MB       the shards' bytes, as dataset_info.json lists them
  bytes/token    shard bytes / real tokens (prompt + output - 1 a record)
  x tfrecord     shard bytes / those of the same layout's plain TFRecord run
  run s          the run's wall time (the summary's), records in -> shards
  read s         one pass of iter_numpy_batches over the run, verification
                 included (the fastest of --repeat passes, warm cache)
Then the same records written as one Parquet file (by pyarrow, snappy, row
groups of 10,000) are run as input (padded, tfrecord): `input parquet`
beside `input jsonl`, the same run's time from JSON lines.

Prints one markdown table; --json writes every number.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from sftbeam.pipeline.readers import iter_numpy_batches, load_dataset_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
SOURCE_FILES = ('gsm8k_train.jsonl', 'gsm8k_test.jsonl', 'alpaca_5000.jsonl')
SFTBEAM = os.path.join(os.path.dirname(sys.executable), 'sftbeam')
FORMATS = (('tfrecord', 'none'), ('tfrecord', 'gzip'), ('parquet', 'none'),
           ('parquet', 'snappy'), ('parquet', 'gzip'), ('parquet', 'zstd'))
LAYOUT_FLAGS = {'padded': [], 'packed': ['--layout', 'packed',
                                         '--pack_length', '2048']}


def run(inputs, output_dir, flags) -> float:
  """Runs sftbeam; gives the wall time its summary prints."""
  result = subprocess.run(
      [SFTBEAM, 'run', '--config', os.path.join(ROOT, 'configs/local.yaml'),
       '--input', *inputs, '--output', output_dir, '--overwrite', *flags],
      capture_output=True, text=True, check=True)
  return float(re.search(r'wall time\s+([\d.]+) s', result.stdout).group(1))


def read_seconds(output_dir: str, repeat: int) -> float:
  """The fastest of `repeat` full passes of iter_numpy_batches."""
  best = float('inf')
  for _ in range(repeat):
    started = time.perf_counter()
    for _ in iter_numpy_batches(output_dir):
      pass
    best = min(best, time.perf_counter() - started)
  return best


def measure(inputs, workdir: str, layout: str, output_format: str,
            compression: str, repeat: int) -> dict:
  output_dir = os.path.join(workdir,
                            f'out-{layout}-{output_format}-{compression}')
  wall = run(inputs, output_dir, LAYOUT_FLAGS[layout] + [
      '--output_format', output_format, '--compression', compression])
  info = load_dataset_info(output_dir)
  shard_bytes = sum(entry['bytes'] for entry in info['shards'])
  return {'layout': layout, 'format': output_format,
          'compression': compression, 'shard_bytes': shard_bytes,
          'real_tokens': info['counts']['real_tokens'],
          'batches': info['counts']['batches_written'],
          'run_s': wall, 'read_s': read_seconds(output_dir, repeat)}


def parquet_input(inputs, workdir: str) -> str:
  """The prompt/output records of `inputs` as one Parquet file."""
  records = []
  for path in inputs:
    with open(path, encoding='utf-8') as handle:
      records += [json.loads(line) for line in handle if line.strip()]
  path = os.path.join(workdir, 'records.parquet')
  pq.write_table(pa.Table.from_struct_array(pa.array(records)), path,
                 row_group_size=10_000)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--inputs', nargs='+', default=[
      os.path.join(SHARED_DATA, name) for name in SOURCE_FILES])
  parser.add_argument('--workdir', default='/tmp/sftbeam-sizes')
  parser.add_argument('--repeat', type=int, default=3)
  parser.add_argument('--json', help='write the numbers here')
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  rows = [measure(args.inputs, args.workdir, layout, output_format,
                  compression, args.repeat)
          for layout in LAYOUT_FLAGS for output_format, compression in FORMATS]
  print('| layout | format | compression | shard MB | bytes/token | '
        'x tfrecord | run s | read s |')
  print('|---|---|---|---|---|---|---|---|')
  for row in rows:
    plain = next(other['shard_bytes'] for other in rows
                 if other['layout'] == row['layout'] and
                 other['format'] == 'tfrecord' and
                 other['compression'] == 'none')
    print(f'| {row["layout"]} | {row["format"]} | {row["compression"]} | '
          f'{row["shard_bytes"] / 1e6:.1f} | '
          f'{row["shard_bytes"] / row["real_tokens"]:.2f} | '
          f'{row["shard_bytes"] / plain:.2f} | {row["run_s"]:.1f} | '
          f'{row["read_s"]:.2f} |')
  inputs = {'jsonl': run(args.inputs, os.path.join(args.workdir, 'out-in'),
                         []),
            'parquet': run([parquet_input(args.inputs, args.workdir)],
                           os.path.join(args.workdir, 'out-in'), [])}
  print(f'\ninput jsonl: {inputs["jsonl"]:.1f} s, input parquet: '
        f'{inputs["parquet"]:.1f} s (the same records, padded, tfrecord)')
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as handle:
      json.dump({'outputs': rows, 'input_run_s': inputs}, handle, indent=2)


if __name__ == '__main__':
  main()
