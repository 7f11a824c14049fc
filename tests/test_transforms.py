"""Each DoFn and PTransform alone: called directly, and in a TestPipeline."""

import io
import json
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import (FixedWindows, IntervalWindow,
                                           TimestampedValue)
from apache_beam.utils.windowed_value import WindowedValue

from conftest import beam_test_pipeline
from fake_tokenizer import WordIdTokenizer
from sftbeam.transforms import schema
from sftbeam.transforms import tokenize as tokenize_module
from sftbeam.transforms.batch import BatchByBucket, _BatchWithinBundleFn
from sftbeam.transforms.pad import PadBatches, batch_stats
from sftbeam.transforms.parse import FieldNames, ParseLines, content_id
from sftbeam.transforms.read import ReadLineChunks, iter_lines
from sftbeam.transforms.records import LineChunk, Record, Rejected, TokenizedRecord
from sftbeam.transforms.stats import SumStatsFn, summarize
from sftbeam.transforms.tokenize import (TokenizeAndBucket, TokenizeSettings,
                                 bucket_of, fit_to_length)
from sftbeam.transforms.tokenizer_source import EMBEDDED
from sftbeam.transforms.write import TFRecordSink, WriteBatches

FIELDS = FieldNames()
GOOD = b'{"prompt": "What is 2+2?", "output": "4", "id": "q1"}'


def _outputs(dofn, element):
  """(main outputs, {tag: tagged outputs}) of one direct process() call."""
  main, tagged = [], {}
  for value in dofn.process(element):
    if isinstance(value, beam.pvalue.TaggedOutput):
      tagged.setdefault(value.tag, []).append(value.value)
    else:
      main.append(value)
  return main, tagged


# ---------------------------------------------------------------- reading

def test_iter_lines_strips_newlines_and_caps_long_lines():
  data = b'a\r\nbb\n' + b'x' * 50 + b'\nlast'
  lines = list(iter_lines(io.BytesIO(data), max_line_bytes=10))
  assert lines == [(b'a', 1), (b'bb', 2), (b'x' * 10, 50), (b'last', 4)]


def test_iter_lines_long_line_across_blocks(monkeypatch):
  monkeypatch.setattr('sftbeam.transforms.read._READ_BLOCK_BYTES', 4)
  lines = list(iter_lines(io.BytesIO(b'0123456789abc\nok\n'), 5))
  assert lines == [(b'01234', 13), (b'ok', 2)]


def test_read_line_chunks_in_pipeline(tmp_path):
  for name, count in (('a.jsonl', 5), ('b.jsonl', 2)):
    (tmp_path / name).write_bytes(b''.join(b'%d\n' % i for i in range(count)))
  with beam_test_pipeline() as root:
    chunks = root | ReadLineChunks([str(tmp_path / '*.jsonl')], 2, 100)
    sizes = chunks | beam.Map(
        lambda chunk: (os.path.basename(chunk.source), len(chunk.lines)))
    assert_that(sizes, equal_to([('a.jsonl', 2), ('a.jsonl', 2),
                                 ('a.jsonl', 1), ('b.jsonl', 2)]))


# ---------------------------------------------------------------- parsing

def test_parse_lines_directly():
  chunk = LineChunk('f.jsonl', [(1, GOOD, len(GOOD)), (2, b'  ', 2),
                                (3, b'[1]', 3), (4, b'\xff', 1)])
  main, tagged = _outputs(ParseLines(FIELDS, 1000), chunk)
  assert [record.example_id for record in main[0]] == ['q1']
  assert [(r.line_number, r.reason) for r in tagged['rejected']] == [
      (3, 'not_an_object'), (4, 'invalid_utf8')]
  assert tagged['stats'] == [{'lines': 4, 'blank_lines': 1}]


def test_parse_gives_content_ids_and_custom_fields():
  line = b'{"q": "Hi", "a": "Yo"}'
  chunk = LineChunk('f', [(7, line, len(line))])
  main, _ = _outputs(ParseLines(FieldNames('q', 'a', 'key'), 1000), chunk)
  record = main[0][0]
  assert (record.prompt, record.output) == ('Hi', 'Yo')
  assert record.example_id == content_id('Hi', 'Yo')
  assert len(record.example_id) == 16
  line = b'{"q": "Hi", "a": "Yo", "key": ""}'
  main, _ = _outputs(ParseLines(FieldNames('q', 'a', 'key'), 1000),
                     LineChunk('f', [(8, line, len(line))]))
  assert main[0][0].example_id == content_id('Hi', 'Yo')


def test_parse_lines_in_pipeline():
  chunk = LineChunk('f', [(1, GOOD, len(GOOD)), (2, b'{', 1)])
  with beam_test_pipeline() as root:
    parsed = (root | beam.Create([chunk])
              | beam.ParDo(ParseLines(FIELDS, 1000)).with_outputs(
                  'rejected', 'stats', main='records'))
    assert_that(parsed.records | 'Ids' >> beam.Map(
        lambda records: [r.example_id for r in records]),
                equal_to([['q1']]), label='Records')
    assert_that(parsed.rejected | 'Reasons' >> beam.Map(lambda r: r.reason),
                equal_to(['invalid_json']), label='Rejected')


# ------------------------------------------------------------- tokenizing

SETTINGS = TokenizeSettings(tokenizer=EMBEDDED, boundaries=(4, 8, 16),
                            max_seq_len=16)


def _record(prompt, output, example_id='r'):
  return Record(example_id, prompt, output, 'f', 1, '{}')


@pytest.fixture(scope='module')
def tokenize_fn():
  dofn = TokenizeAndBucket(SETTINGS)
  dofn.setup()
  return dofn


def test_tokenize_and_bucket_directly(tokenize_fn, qwen):
  main, tagged = _outputs(tokenize_fn, [
      _record('Hello, world!', 'Hi', 'a'),
      _record('Hello', 'word ' * 40, 'b')])
  [(bucket, tokenized)] = main
  prompt_ids = qwen('Hello, world!')['input_ids']
  output_ids = qwen('Hi', add_special_tokens=False)['input_ids']
  assert list(tokenized.prompt_ids) == prompt_ids
  assert list(tokenized.output_ids) == output_ids
  assert bucket == bucket_of(len(prompt_ids) + len(output_ids) - 1, (4, 8, 16))
  assert [(r.reason, r.line_number) for r in tagged['rejected']] == [
      ('too_long', 1)]
  assert tagged['stats'] == [{'truncated': 0}]


def test_tokenize_and_bucket_in_pipeline(qwen):
  with beam_test_pipeline() as root:
    keyed = (root | beam.Create([[_record('a b c', 'd', 'x')]])
             | beam.ParDo(TokenizeAndBucket(SETTINGS)).with_outputs(
                 'rejected', 'stats', main='keyed'))
    length = len(qwen('a b c')['input_ids']) + len(
        qwen('d', add_special_tokens=False)['input_ids']) - 1
    assert_that(keyed.keyed | beam.Map(lambda kv: (kv[0], kv[1].example_id)),
                equal_to([(bucket_of(length, (4, 8, 16)), 'x')]))


def _numbered_records(count, prefix):
  """Records that all fit SETTINGS' max_seq_len."""
  return [_record(f'prompt {number}', 'word ' * (1 + number % 9),
                  f'{prefix}-{number}') for number in range(count)]


def test_run_ahead_gives_the_same_outputs_in_their_own_windows():
  """With run_ahead, slices of earlier lists come out later (during later
  process() calls or in finish_bundle) but in their own window and
  timestamp, in order, and nothing is lost or repeated."""
  lists = [_numbered_records(700, f'list{index}') for index in range(12)]
  plain = TokenizeAndBucket(SETTINGS)
  plain.setup()
  expected = [_outputs(plain, records)[0] for records in lists]
  ahead = TokenizeAndBucket(SETTINGS, run_ahead=True)
  ahead.setup()
  ahead.start_bundle()
  by_window = {index: [] for index in range(len(lists))}
  def collect(value, current_window):
    if isinstance(value, beam.pvalue.TaggedOutput):
      return
    if isinstance(value, WindowedValue):
      (window,) = value.windows
      assert value.timestamp == window.start
      by_window[int(window.start)].append(value.value)
    else:
      by_window[current_window].append(value)
  for index, records in enumerate(lists):
    window = IntervalWindow(index, index + 1)
    outputs = list(ahead.process(records, window=window, timestamp=index))
    for value in outputs:
      collect(value, index)
  assert sum(map(len, by_window.values())) < sum(map(len, expected))
  for value in ahead.finish_bundle():
    collect(value, None)
  assert [by_window[index] for index in range(len(lists))] == expected


def test_run_ahead_keeps_windows_in_a_pipeline():
  window_seconds = 10
  lists = [_numbered_records(600, f'list{index}') for index in range(12)]

  def id_and_window(keyed_record, window=beam.DoFn.WindowParam):
    return keyed_record[1].example_id, int(window.start)

  with beam_test_pipeline() as root:
    keyed = (root
             | beam.Create([TimestampedValue(records, index * window_seconds)
                            for index, records in enumerate(lists)])
             | beam.WindowInto(FixedWindows(window_seconds))
             | beam.ParDo(TokenizeAndBucket(SETTINGS, run_ahead=True))
             .with_outputs('rejected', 'stats', main='keyed'))
    assert_that(keyed.keyed | beam.Map(id_and_window),
                equal_to([(record.example_id, index * window_seconds)
                          for index, records in enumerate(lists)
                          for record in records]))


def test_threads_share_only_a_rust_tokenizer(monkeypatch):
  """A Python tokenizer may change its settings during a call, so it gets
  one tokenizing thread; the Rust backend is shared by `threads` of them,
  by default one per core."""
  rust = TokenizeAndBucket(SETTINGS)
  rust.setup()
  three = TokenizeAndBucket(SETTINGS._replace(threads=3))
  three.setup()
  monkeypatch.setattr(tokenize_module, 'load_tokenizer',
                      lambda *args: WordIdTokenizer())
  python_only = TokenizeAndBucket(SETTINGS._replace(threads=3))
  python_only.setup()
  cores = len(os.sched_getaffinity(0))
  # pylint: disable=protected-access
  assert rust._tokenizing_threads._max_workers == cores
  assert three._tokenizing_threads._max_workers == 3
  assert python_only._tokenizing_threads._max_workers == 1
  main, _ = _outputs(python_only, [_record('w1 w2', 'w3 w4 w5', 'w')])
  assert [list(record.output_ids) for _, record in main] == [[3, 4, 5]]


def test_bucket_of_picks_smallest_boundary_at_least_length():
  assert bucket_of(1, (4, 8)) == 4
  assert bucket_of(4, (4, 8)) == 4
  assert bucket_of(5, (4, 8)) == 8


@pytest.mark.parametrize('mode, expected', [
    ('output_right', ([1, 2, 3], [4, 5], True)),
    ('prompt_left', ([2, 3], [4, 5, 6], True)),
])
def test_fit_to_length_truncates(mode, expected):
  # max_seq_len 4 allows 5 tokens in prompt + output.
  assert fit_to_length([1, 2, 3], [4, 5, 6], 4, mode) == expected


# ---------------------------------------------------------------- batching

def _tokenized(example_id, prompt, output):
  return TokenizedRecord(example_id, np.array(prompt, np.int32),
                         np.array(output, np.int32), False)


def test_batch_by_bucket_keeps_partial_batches():
  elements = [(8, 'a'), (8, 'b'), (8, 'c'), (16, 'd')]
  with beam_test_pipeline() as root:
    batches = (root | beam.Create(elements) | BatchByBucket(2)
               | beam.Map(lambda kv: (kv[0], len(list(kv[1])))))
    assert_that(batches, equal_to([(8, 2), (8, 1), (16, 1)]))


@pytest.mark.parametrize('within_bundle', [False, True])
def test_batch_by_bucket_both_strategies_in_pipeline(within_bundle):
  elements = [(8, i) for i in range(5)] + [(16, 9)]
  with beam_test_pipeline() as root:
    batches = (root | beam.Create(elements)
               | BatchByBucket(2, within_bundle=within_bundle)
               | beam.Map(lambda kv: (kv[0], len(list(kv[1])))))
    assert_that(batches, equal_to([(8, 2), (8, 2), (8, 1), (16, 1)]))


def test_batch_within_bundle_directly_flushes_partials_at_bundle_end():
  dofn = _BatchWithinBundleFn(2)
  dofn.start_bundle()
  full = [out for element in [(8, 'a'), (16, 'b'), (8, 'c')]
          for out in dofn.process(element)]
  assert full == [(8, ['a', 'c'])]
  partial = [windowed.value for windowed in dofn.finish_bundle()]
  assert partial == [(16, ['b'])]


def _parse(serialized):
  return {name: value.numpy() for name, value in
          schema.parse_batch(tf.constant(serialized)).items()}


def test_pad_batches_directly_to_bucket_width():
  dofn = PadBatches('bucket', pad_id=0)
  dofn.setup()
  main, tagged = _outputs(dofn, (8, [_tokenized('a', [1, 2], [3]),
                                     _tokenized('b', [4], [5, 6, 7])]))
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
      'bucket/8/batches': 1, 'real_tokens': 5, 'stored_tokens': 16}]


def test_pad_batches_in_pipeline_to_longest():
  with beam_test_pipeline() as root:
    shapes = (root | beam.Create([(8, [_tokenized('a', [1, 2], [3])])])
              | beam.ParDo(PadBatches('longest', pad_id=0))
              | beam.Map(lambda s: _parse(s)['input_ids'].shape))
    assert_that(shapes, equal_to([(1, 2)]))


def test_pad_batches_resolves_pad_id_from_tokenizer():
  dofn = PadBatches('longest', tokenizer=EMBEDDED)
  dofn.setup()
  main, _ = _outputs(dofn, (8, [_tokenized('a', [1, 2], [3]),
                                _tokenized('b', [1], [3])]))
  assert _parse(main[0])['labels'][1].tolist() == [3, 151643]


# ------------------------------------------------------- writing and stats

def test_tfrecord_sink_gzip_round_trip(tmp_path):
  path = tmp_path / 'x.tfrecord.gz'
  with open(path, 'wb') as handle:
    sink = TFRecordSink('gzip')
    sink.open(handle)
    sink.write(b'one')
    sink.write(b'two')
    sink.flush()
  records = tf.data.TFRecordDataset(str(path), compression_type='GZIP')
  assert [r.numpy() for r in records] == [b'one', b'two']


def test_write_batches_in_pipeline(tmp_path):
  with beam_test_pipeline() as root:
    results = (root | beam.Create([b'a', b'b', b'c'])
               | WriteBatches(str(tmp_path), num_shards=1, compression='none'))
    assert_that(results | beam.Map(lambda entry: (entry['name'],
                                                  entry['records'])),
                equal_to([('batches-00000-of-00001.tfrecord', 3)]))
  written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
  assert written == ['batches-00000-of-00001.tfrecord']
  records = tf.data.TFRecordDataset([str(tmp_path / n) for n in written])
  assert sorted(r.numpy() for r in records) == [b'a', b'b', b'c']


def test_write_batches_numbers_every_shard(tmp_path):
  with beam_test_pipeline() as root:
    _ = (root | beam.Create([b'%d' % i for i in range(40)])
         | WriteBatches(str(tmp_path), num_shards=3, compression='gzip'))
  written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
  assert written == [f'batches-{i:05d}-of-00003.tfrecord.gz' for i in range(3)]
  records = tf.data.TFRecordDataset([str(tmp_path / n) for n in written],
                                    compression_type='GZIP')
  assert sorted(int(r.numpy()) for r in records) == list(range(40))


def test_sum_stats_directly_and_in_pipeline():
  fn = SumStatsFn()
  accumulator = fn.add_input(fn.create_accumulator(), {'lines': 2})
  accumulator = fn.merge_accumulators([accumulator, fn.add_input(
      fn.create_accumulator(), {'lines': 3, 'rejected/too_long': 1})])
  assert fn.extract_output(accumulator) == {'lines': 5, 'rejected/too_long': 1}
  with beam_test_pipeline() as root:
    total = (root | beam.Create([{'a': 1}, {'a': 2, 'b': 1}])
             | beam.CombineGlobally(SumStatsFn()))
    assert_that(total, equal_to([{'a': 3, 'b': 1}]))


def test_summarize_reconciles():
  stats = {'lines': 5, 'blank_lines': 1, 'rejected/invalid_json': 1,
           **batch_stats(8, {'input_ids': np.zeros((3, 8)),
                             'prompt_lengths': np.array([1, 2, 3]),
                             'output_lengths': np.array([1, 1, 1])})}
  counts = summarize(stats)
  assert counts['records_in'] == 4
  assert counts['reconciled']
  assert counts['buckets'] == {'8': {'records': 3, 'batches': 1}}
  assert counts['padding_efficiency'] == pytest.approx(6 / 24)
  assert not summarize(dict(stats, lines=6))['reconciled']


def test_rejected_to_json_keeps_reason_and_source():
  rejected = Rejected('f.jsonl', 3, 'invalid_json', 'boom', '{')
  assert json.loads(rejected.to_json()) == {
      'source': 'f.jsonl', 'line_number': 3, 'reason': 'invalid_json',
      'message': 'boom', 'raw': '{'}
