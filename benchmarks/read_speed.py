"""How fast the readers read a finished run, verification included.

  python benchmarks/read_speed.py OUTPUT_DIR [--repeat 3]

Per reader, the fastest of --repeat full passes over the directory (one
process, warm page cache): seconds, batches/s and MB/s of shard bytes.

  verify only       every shard verified as the readers do before its
                    first batch (sha256, count; TFRecord CRCs)
  numpy             iter_numpy_batches: verify each shard, then read and
                    decode its Examples in numpy
  torch             torch_dataset, no DataLoader workers
  tf.data           read_tf_dataset (the same verified records, parsed by
                    TensorFlow); TensorFlow's import is not timed
  tf.data unchecked TFRecordDataset + parse_batch, nothing verified, for
                    comparison (TFRecord output only)

A Parquet run's readers rebuild each batch's Example from its rows
(transforms/parquet_shards.py) before decoding it.
"""

import argparse
import time

from sftbeam.pipeline import readers
from sftbeam.transforms import example_codec, filenames


def _verify_only(output_dir):
  for shard in readers.verified_shards(output_dir):
    for _ in readers.shard_records(shard, 0, 0):  # verifies, reads none
      pass
  return ()


def _tf_unchecked(output_dir):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  paths = [shard.path for shard in readers.verified_shards(output_dir)]
  compression = 'GZIP' if paths and paths[0].endswith('.gz') else ''
  return tf.data.TFRecordDataset(paths, compression_type=compression).map(
      example_codec.parse_batch)


READERS = {
    'verify only': _verify_only,
    'numpy': readers.iter_numpy_batches,
    'torch': readers.torch_dataset,
    'tf.data': readers.read_tf_dataset,
    'tf.data unchecked': _tf_unchecked,
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('output_dir')
  parser.add_argument('--repeat', type=int, default=3)
  args = parser.parse_args()
  shards = readers.verified_shards(args.output_dir)
  total_bytes = sum(shard.bytes for shard in shards)
  batches = sum(shard.records for shard in shards)
  print(f'{args.output_dir}: {batches} batches, {total_bytes / 1e6:.1f} MB '
        f'in {len(shards)} shards')
  import tensorflow  # pylint: disable=import-outside-toplevel,unused-import
  for name, reader in READERS.items():
    if name == 'tf.data unchecked' and any(
        filenames.is_parquet_shard(shard.name) for shard in shards):
      continue
    best = float('inf')
    for _ in range(args.repeat):
      started = time.perf_counter()
      for _ in reader(args.output_dir):
        pass
      best = min(best, time.perf_counter() - started)
    print(f'{name:>18}: {best:6.2f} s, {batches / best:8.0f} batches/s, '
          f'{total_bytes / 1e6 / best:7.1f} MB/s')


if __name__ == '__main__':
  main()
