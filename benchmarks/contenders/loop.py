"""loop: a plain Python loop implementing the spec per batch of 32.

Read and parse 32 lines, one batched tokenizer `__call__` for the prompts
and one for the outputs, pad to the batch maximum, shift and mask with
numpy, one Example per batch through tf.io.TFRecordWriter. Timed from
opening the input to closing the writer (loading the tokenizer and
importing TensorFlow excluded).

It implements the spec here on purpose, apart from transforms/, so that it
is what a user would write without sftbeam. `SpecWriter` is also the
datasets contender's writer.
"""

import collections
import json
import os
import time

import numpy as np

from contenders.common import SPEC_BATCH, hf_tokenizer, pad_id_of


def spec_arrays(prompt_ids, output_ids, pad_id):
  """The spec on one batch, written out plainly: pad to the batch max, shift,
  mask. Gives input_ids, labels, response_mask, prompt/output lengths."""
  prompt_lengths = np.array([len(ids) for ids in prompt_ids], np.int64)
  output_lengths = np.array([len(ids) for ids in output_ids], np.int64)
  total_lengths = prompt_lengths + output_lengths
  sequences = np.full((len(prompt_ids), total_lengths.max()), pad_id,
                      np.int64)
  for row, (prompt, output) in enumerate(zip(prompt_ids, output_ids)):
    sequences[row, :total_lengths[row]] = list(prompt) + list(output)
  columns = np.arange(sequences.shape[1] - 1)
  response_mask = ((columns >= prompt_lengths[:, None] - 1) &
                   (columns < total_lengths[:, None] - 1))
  return {'input_ids': sequences[:, :-1], 'labels': sequences[:, 1:],
          'response_mask': response_mask.astype(np.int64),
          'prompt_lengths': prompt_lengths, 'output_lengths': output_lengths}


class SpecWriter:
  """Pads, shifts and masks batches per the spec; one Example per batch,
  with the same content as sftbeam's."""

  def __init__(self, path, pad_id):
    import tensorflow as tf  # only in the workers that write
    self._tf = tf
    self._writer = tf.io.TFRecordWriter(path)
    self._pad_id = pad_id
    self.counts = collections.Counter()

  def _ints(self, values):
    return self._tf.train.Feature(
        int64_list=self._tf.train.Int64List(value=values.ravel().tolist()))

  def _example(self, arrays, example_ids) -> bytes:
    train = self._tf.train
    feature = {name: self._ints(values) for name, values in arrays.items()}
    feature['shape'] = self._ints(np.array(arrays['input_ids'].shape))
    feature['example_ids'] = train.Feature(bytes_list=train.BytesList(
        value=[str(example_id).encode('utf-8') for example_id in example_ids]))
    return train.Example(features=train.Features(
        feature=feature)).SerializeToString()

  def write(self, prompt_ids, output_ids, example_ids):
    arrays = spec_arrays(prompt_ids, output_ids, self._pad_id)
    self._writer.write(self._example(arrays, example_ids))
    rows, width = arrays['input_ids'].shape
    self.counts.update(records_written=rows, stored_tokens=rows * width,
                       real_tokens=int((arrays['prompt_lengths'] +
                                        arrays['output_lengths'] - 1).sum()))

  def close(self):
    self._writer.close()


def work(input_path, out_dir, tokenizer_dir):
  """Reads, tokenizes and writes SPEC_BATCH records at a time."""
  tokenizer = hf_tokenizer(tokenizer_dir)
  # Opened before the clock starts: importing TensorFlow takes seconds.
  writer = SpecWriter(os.path.join(out_dir, 'batches.tfrecord'),
                      pad_id_of(tokenizer))
  records = 0
  started = time.perf_counter()

  def flush(batch):
    writer.write(
        tokenizer([record['prompt'] for record in batch])['input_ids'],
        tokenizer([record['output'] for record in batch],
                  add_special_tokens=False)['input_ids'],
        [record['id'] for record in batch])

  batch = []
  with open(input_path, encoding='utf-8') as handle:
    for line in handle:
      batch.append(json.loads(line))
      records += 1
      if len(batch) == SPEC_BATCH:
        flush(batch)
        batch = []
  if batch:
    flush(batch)
  writer.close()
  return dict(writer.counts, timed_s=time.perf_counter() - started,
              records=records)
