"""The padded layout's steps (transforms/padded.py): buckets, batches by
either strategy, and padding, called directly and in a TestPipeline."""

import collections

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

import strategies
from conftest import beam_test_pipeline, dofn_outputs
from hypothesis import given
from hypothesis import strategies as st
from sftbeam.transforms import example_codec
from sftbeam.transforms.batch import BATCHING_STRATEGIES
from sftbeam.transforms.padded import (BatchByBucket, BatchShape,
                                       BucketBatches, PadBatches,
                                       _BatchWithinBundleFn)
from sftbeam.transforms.records import TokenChunk
from sftbeam.transforms.tokenizer_source import EMBEDDED
from token_chunks import pairs_chunk


def test_buckets_pick_smallest_boundary_at_least_model_length():
  # Records of 2, 5 and 6 tokens: model lengths L = 1, 4 and 5.
  chunk = TokenChunk.from_sequences(
      ['a', 'b', 'c'], [[1] * 2, [1] * 5, [1] * 6],
      [[False, True], [False] * 4 + [True], [False] * 5 + [True]])
  assert BatchShape((4, 8), 32).buckets(chunk).tolist() == [4, 4, 8]


def _chunk(*records):
  """A TokenChunk of (example_id, prompt ids, output ids)."""
  example_ids, prompts, outputs = zip(*records)
  return pairs_chunk(prompts, outputs, list(example_ids))


def _lengths_chunk(example_ids, length):
  """Records of `length` tokens each (a 1-token prompt)."""
  return _chunk(*[(i, [1], [2] * (length - 1)) for i in example_ids])


SHAPE = BatchShape((8, 16), batch_size=2)


def _batch_sizes(groups):
  return groups | beam.FlatMap(
      lambda group: [(group.bucket, len(batch)) for batch in group.batches()])


def _batch_ids(groups):
  """(bucket, example ids) of each batch of `groups`, in order."""
  return [(group.bucket, batch.example_ids) for group in groups
          for batch in group.batches()]


@pytest.mark.slow
@pytest.mark.parametrize('batching', BATCHING_STRATEGIES)
def test_batch_by_bucket_both_strategies_in_pipeline(batching):
  chunks = [TokenChunk.concat([_lengths_chunk('abc', 5),
                               _lengths_chunk('d', 12)]),
            _lengths_chunk('ef', 3)]
  with beam_test_pipeline() as root:
    batches = (root | beam.Create(chunks)
               | BatchByBucket(SHAPE, batching))
    assert_that(_batch_sizes(batches),
                equal_to([(8, 2), (8, 2), (8, 1), (16, 1)]))
    assert_that(batches | beam.FlatMap(
        lambda group: group.records.example_ids),
                equal_to(list('abcdef')), label='EveryRecordOnce')


def test_batch_within_bundle_directly_flushes_partials_at_bundle_end():
  dofn = _BatchWithinBundleFn(SHAPE)
  dofn.start_bundle()
  full = list(dofn.process(_lengths_chunk('abcde', 5)))
  assert _batch_ids(full) == [(8, ['a', 'b']), (8, ['c', 'd'])]
  assert len(full) == 1  # one group holds both
  assert not list(dofn.process(_lengths_chunk('x', 12)))
  partial = [windowed.value for windowed in dofn.finish_bundle()]
  assert _batch_ids(partial) == [(8, ['e']), (16, ['x'])]


def test_batch_tokens_gives_each_bucket_a_token_budget():
  shape = BatchShape((8, 16), batch_size=None, batch_tokens=40)
  assert (shape.rows(8), shape.rows(16)) == (5, 2)
  assert BatchShape((64,), None, batch_tokens=10).rows(64) == 1
  dofn = _BatchWithinBundleFn(shape)
  dofn.start_bundle()
  full = list(dofn.process(TokenChunk.concat([
      _lengths_chunk([f's{i}' for i in range(11)], 5),
      _lengths_chunk([f'l{i}' for i in range(5)], 12)])))
  sizes = [(bucket, len(ids)) for bucket, ids in _batch_ids(full)]
  assert sizes == [(8, 5), (8, 5), (16, 2), (16, 2)]
  for bucket, size in sizes:
    assert size * bucket <= 40


def _parse(serialized):
  import tensorflow as tf
  return {name: value.numpy() for name, value in
          example_codec.parse_batch(tf.constant(serialized)).items()}


@pytest.mark.slow
def test_pad_batches_directly_to_bucket_width():
  dofn = PadBatches('bucket', pad_id=0, tokenizer=EMBEDDED, backend='auto')
  dofn.setup()
  main, tagged = dofn_outputs(dofn, BucketBatches(8, 2, _chunk(
      ('a', [1, 2], [3]), ('b', [4], [5, 6, 7]))))
  batch = _parse(main[0])
  assert batch['input_ids'].tolist() == [[1, 2, 3, 0, 0, 0, 0, 0],
                                         [4, 5, 6, 7, 0, 0, 0, 0]]
  assert batch['labels'].tolist() == [[2, 3, 0, 0, 0, 0, 0, 0],
                                      [5, 6, 7, 0, 0, 0, 0, 0]]
  assert batch['response_mask'].astype(int).tolist() == [
      [0, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
  assert batch['example_ids'].tolist() == [b'a', b'b']
  assert tagged['stats'] == [{
      'records_written': 2, 'batches_written': 1, 'bucket/8/records': 2,
      'bucket/8/batches': 1, 'real_tokens': 5, 'stored_tokens': 16,
      'supervised_tokens': 4}]


@pytest.mark.slow
def test_pad_batches_in_pipeline_to_longest():
  with beam_test_pipeline() as root:
    shapes = (root
              | beam.Create([BucketBatches(8, 1, _chunk(('a', [1, 2], [3])))])
              | beam.ParDo(PadBatches('longest', 0, EMBEDDED, 'auto'))
              | beam.Map(lambda s: _parse(s)['input_ids'].shape))
    assert_that(shapes, equal_to([(1, 2)]))


@pytest.mark.slow
def test_pad_batches_resolves_pad_id_from_tokenizer():
  dofn = PadBatches('longest', None, EMBEDDED, 'auto')
  dofn.setup()
  main, _ = dofn_outputs(dofn, BucketBatches(8, 2, _chunk(('a', [1, 2], [3]),
                                                    ('b', [1], [3]))))
  assert _parse(main[0])['labels'][1].tolist() == [3, 151643]


@pytest.mark.parametrize('pad_to', ['bucket', 'longest'])
@pytest.mark.parametrize('output_format', ['tfrecord', 'parquet'])
def test_a_bucket_s_batches_encode_as_each_one_alone(pad_to, output_format):
  """PadBatches gives a group of 3 batches (the last short) exactly what it
  gives each of them as a group of one, and one stats dict that adds up."""
  records = _chunk(*[(f'r{i}', [1] * (1 + i % 3), [2] * (1 + i % 4))
                     for i in range(7)])
  dofn = PadBatches(pad_to, 9, EMBEDDED, 'auto', output_format)
  dofn.setup()
  together, together_stats = dofn_outputs(dofn, BucketBatches(8, 3, records))
  alone, alone_stats = [], collections.Counter()
  for first in (0, 3, 6):
    batch = records.slice(first, min(first + 3, 7))
    main, tagged = dofn_outputs(dofn, BucketBatches(8, 3, batch))
    alone += main
    for stats in tagged['stats']:
      alone_stats.update(stats)
  assert len(together) == 3
  if output_format == 'parquet':
    together = [(batch.example_crc, batch.rows.to_pylist())
                for batch in together]
    alone = [(batch.example_crc, batch.rows.to_pylist()) for batch in alone]
  assert together == alone
  summed = collections.Counter()
  for stats in together_stats['stats']:
    summed.update(stats)
  assert summed == alone_stats


def _reference_batches(shape, chunks):
  """(bucket, ids) of each batch, in emission order, by lists: per chunk,
  each bucket's records join its open batch; full batches leave, the
  open ones at the end in the order their buckets were last touched."""
  open_ids, out = {}, []
  for chunk in chunks:
    buckets = shape.buckets(chunk).tolist()
    for bucket in sorted(set(buckets)):
      ids = open_ids.pop(bucket, []) + [
          i for i, b in zip(chunk.example_ids, buckets) if b == bucket]
      rows = shape.rows(bucket)
      while len(ids) >= rows:
        out.append((bucket, ids[:rows]))
        ids = ids[rows:]
      if ids:
        open_ids[bucket] = ids
  return out + list(open_ids.items())


@strategies.EXAMPLES
@given(st.lists(st.lists(st.integers(2, 20), max_size=12), max_size=6),
       st.integers(1, 4))
def test_batching_within_a_bundle_equals_the_list_reference(lengths, rows):
  shape = BatchShape((4, 8, 20), batch_size=rows)
  chunks, count = [], 0
  for chunk_lengths in lengths:
    if chunk_lengths:
      chunks.append(TokenChunk.concat([
          _lengths_chunk([f'r{count + i}'], length)
          for i, length in enumerate(chunk_lengths)]))
      count += len(chunk_lengths)
  dofn = _BatchWithinBundleFn(shape)
  dofn.start_bundle()
  groups = [group for chunk in chunks for group in dofn.process(chunk)]
  groups += [windowed.value for windowed in dofn.finish_bundle()]
  assert _batch_ids(groups) == _reference_batches(shape, chunks)
  given_records = {record_id: _record(chunk, index) for chunk in chunks
                   for index, record_id in enumerate(chunk.example_ids)}
  for group in groups:  # each record's tokens and flags travel with it
    for index, record_id in enumerate(group.records.example_ids):
      assert _record(group.records, index) == given_records[record_id]


def _record(chunk, index):
  """(tokens, supervised flags, prompt length) of record `index`."""
  start, end = chunk.offsets[index], chunk.offsets[index + 1]
  return (chunk.ids[start:end].tolist(), chunk.supervised[start:end].tolist(),
          int(chunk.prompt_lengths[index]))
