"""Reading a finished sftbeam output directory.

  dataset = read_tf_dataset('out/')            # tf.data, dicts of tensors
  for batch in iter_numpy_batches('out/'):     # numpy, e.g. for PyTorch
      ...

Both accept only a directory whose dataset_info.json exists (it is written
last, so a directory without it is an unfinished or killed run), has a
schema version this code understands, and lists shards that all exist.
"""

import json

from apache_beam.io.filesystems import FileSystems

from sftbeam.transforms import schema


class IncompleteOutput(ValueError):
  """The directory is not a complete sftbeam output this code can read."""


def load_dataset_info(output_dir: str) -> dict:
  path = FileSystems.join(output_dir, schema.INFO_FILE)
  if not FileSystems.exists(path):
    raise IncompleteOutput(
        f'{output_dir} has no {schema.INFO_FILE}: the run did not finish '
        '(re-run it with --overwrite)')
  with FileSystems.open(path) as handle:
    info = json.loads(handle.read())
  version = info.get('schema_version')
  if version not in schema.SUPPORTED_SCHEMA_VERSIONS:
    raise IncompleteOutput(
        f'{path} has schema version {version}; this sftbeam reads '
        f'{schema.SUPPORTED_SCHEMA_VERSIONS}: upgrade sftbeam')
  return info


def shard_paths(output_dir: str, info: dict = None) -> list:
  """The shards dataset_info.json lists, each checked to exist."""
  info = info or load_dataset_info(output_dir)
  paths = [FileSystems.join(output_dir, name) for name in info['shards']]
  missing = [path for path in paths if not FileSystems.exists(path)]
  if missing:
    raise IncompleteOutput(f'{len(missing)} shards listed in '
                           f'{schema.INFO_FILE} are missing, e.g. {missing[0]}')
  return paths


def _compression_type(info: dict) -> str:
  return 'GZIP' if info['config'].get('compression') == 'gzip' else ''


def read_tf_dataset(output_dir: str, shuffle: bool = False, seed: int = None,
                    shuffle_buffer: int = 256):
  """A tf.data.Dataset of batch dicts (see transforms.schema.parse_batch).

  `input_ids`/`labels` int32 [B, L], `response_mask` bool [B, L],
  `prompt_lengths`/`output_lengths` int32 [B], `example_ids` string [B].
  With `shuffle`, shard order and batch order are both shuffled.
  """
  # Imported here: the CLI checks dataset_info.json without TensorFlow.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  info = load_dataset_info(output_dir)
  paths = shard_paths(output_dir, info)
  files = tf.data.Dataset.from_tensor_slices(paths)
  if shuffle:
    files = files.shuffle(len(paths), seed=seed)
  dataset = files.interleave(
      lambda path: tf.data.TFRecordDataset(
          path, compression_type=_compression_type(info)),
      cycle_length=max(1, min(len(paths), 4)),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=not shuffle)
  if shuffle:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)
  layout = info.get('layout', 'padded')
  return dataset.map(lambda serialized: schema.parse_batch(serialized, layout))


def iter_numpy_batches(output_dir: str, shuffle: bool = False,
                       seed: int = None):
  """Yields batch dicts of numpy arrays: same fields as read_tf_dataset,
  with `example_ids` as a list of str. `torch.from_numpy` takes them as they
  are."""
  for batch in read_tf_dataset(output_dir, shuffle, seed).as_numpy_iterator():
    batch = dict(batch)
    batch[schema.ID_FEATURE] = [value.decode('utf-8')
                                for value in batch[schema.ID_FEATURE]]
    yield batch
