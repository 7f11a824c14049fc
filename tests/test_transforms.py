"""Each DoFn and PTransform alone: called directly, and in a TestPipeline."""

import io
import json
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.testing.util import assert_that, equal_to

from conftest import beam_test_pipeline, dofn_outputs
from sftbeam.transforms.stats import padded_batch_stats
from sftbeam.transforms.parse import (FieldNames, ParseLines, content_id,
                                     record_columns)
from sftbeam.transforms.read import (ListLineRangesFn, ReadLineRangeFn,
                                    iter_lines)
from sftbeam.transforms.read_input import ReadInput
from sftbeam.pipeline.options import MAX_OPTION_CHARS
from sftbeam.transforms.records import (MAX_MESSAGE_CHARS, LineChunk,
                                        RecordChunk, Rejected)
from sftbeam.transforms.stats import SumStatsFn, summarize
from sftbeam.transforms.tokenize import (TokenizeRecords, TokenizeSettings,
                                         fit_lengths)
from sftbeam.transforms.tokenizer_source import EMBEDDED
from sftbeam.transforms.write import TFRecordSink, WriteBatches, _JoinSlotFn

FIELDS = FieldNames()
GOOD = b'{"prompt": "What is 2+2?", "output": "4", "id": "q1"}'


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
    chunks = root | ReadInput([str(tmp_path / '*.jsonl')], 2, 100,
                              record_columns(FIELDS))
    sizes = chunks | beam.Map(
        lambda chunk: (os.path.basename(chunk.source), len(chunk.lines)))
    assert_that(sizes, equal_to([('a.jsonl', 2), ('a.jsonl', 2),
                                 ('a.jsonl', 1), ('b.jsonl', 2)]))


def _lines_read(path: str, ranges: int, monkeypatch, block_bytes: int):
  """Every (line number, bytes, total) of `path` read as `ranges` ranges,
  each range read alone, in range order."""
  monkeypatch.setattr('sftbeam.transforms.read._READ_BLOCK_BYTES',
                      block_bytes)
  metadata = FileMetadata(path, os.path.getsize(path))
  lines = []
  for line_range in ListLineRangesFn(ranges).process(metadata):
    for chunk in ReadLineRangeFn(3, 12).process(line_range):
      lines += chunk.lines
  return lines


@pytest.mark.parametrize('data', [
    b'a\nbb\n\n' + b'x' * 40 + b'\nccc\r\nd\n',
    b'one line without a newline',
    b'\n\n\n\n\n',
    b'x' * 30 + b'\n' + b'y\n' * 7 + b'z' * 25,
])
@pytest.mark.parametrize('ranges', [2, 3, 5, 16, 97])
def test_byte_ranges_read_every_line_once_numbered_as_the_file(
    tmp_path, monkeypatch, data, ranges):
  """Whatever the cuts (inside a line, on a newline, inside a CRLF, in an
  over-long line; more ranges than lines), the ranges give the file's
  lines, each once, with the file's line numbers."""
  path = str(tmp_path / 'in.jsonl')
  with open(path, 'wb') as handle:
    handle.write(data)
  whole = _lines_read(path, 1, monkeypatch, 1 << 20)
  assert [number for number, _, _ in whole] == list(
      range(1, len(whole) + 1))
  for block_bytes in (4, 1 << 20):
    assert _lines_read(path, ranges, monkeypatch, block_bytes) == whole


# ---------------------------------------------------------------- parsing

def test_parse_lines_directly():
  chunk = LineChunk('f.jsonl', [(1, GOOD, len(GOOD)), (2, b'  ', 2),
                                (3, b'[1]', 3), (4, b'\xff', 1)])
  main, tagged = dofn_outputs(ParseLines(FIELDS, 1000), chunk)
  assert main[0].example_ids == ['q1']
  assert [(r.line_number, r.reason) for r in tagged['rejected']] == [
      (3, 'not_an_object'), (4, 'invalid_utf8')]
  assert tagged['stats'] == [{'lines': 4, 'blank_lines': 1,
                              'input_bytes': len(GOOD) + 2 + 3 + 1 + 4}]


def test_parse_gives_content_ids_and_custom_fields():
  line = b'{"q": "Hi", "a": "Yo"}'
  chunk = LineChunk('f', [(7, line, len(line))])
  main, _ = dofn_outputs(ParseLines(FieldNames('q', 'a', 'key'), 1000), chunk)
  records = main[0]
  assert (records.prompts, records.outputs) == (['Hi'], ['Yo'])
  assert records.example_ids == [content_id('Hi', 'Yo')]
  assert len(records.example_ids[0]) == 16
  line = b'{"q": "Hi", "a": "Yo", "key": ""}'
  main, _ = dofn_outputs(ParseLines(FieldNames('q', 'a', 'key'), 1000),
                     LineChunk('f', [(8, line, len(line))]))
  assert main[0].example_ids == [content_id('Hi', 'Yo')]


def test_rejection_messages_are_capped_whatever_the_field_name():
  """A field name as long as an option may be (4096 characters) is not
  repeated whole in every rejection; neither is a message made later."""
  fields = FieldNames(prompt='p' * MAX_OPTION_CHARS)
  chunk = LineChunk('f', [(1, GOOD, len(GOOD))])
  _, tagged = dofn_outputs(ParseLines(fields, 1000), chunk)
  [rejected] = tagged['rejected']
  assert rejected.reason == 'missing_field'
  whole = f'no "{fields.prompt}" field'
  assert rejected.message == (whole[:MAX_MESSAGE_CHARS] + f'...['
                              f'{len(whole) - MAX_MESSAGE_CHARS} more chars]')
  records = RecordChunk.empty('f')
  records.add(2, 'q2', GOOD, 'What is 2+2?', '4')
  later = records.reject(0, 'tokenizer_error', 'x' * 10**6)
  assert later.message.startswith('x' * MAX_MESSAGE_CHARS + '...[')
  assert len(later.message) < MAX_MESSAGE_CHARS + 30


def test_parse_lines_in_pipeline():
  chunk = LineChunk('f', [(1, GOOD, len(GOOD)), (2, b'{', 1)])
  with beam_test_pipeline() as root:
    parsed = (root | beam.Create([chunk])
              | beam.ParDo(ParseLines(FIELDS, 1000)).with_outputs(
                  'rejected', 'stats', main='records'))
    assert_that(parsed.records | 'Ids' >> beam.Map(
        lambda records: records.example_ids),
                equal_to([['q1']]), label='Records')
    assert_that(parsed.rejected | 'Reasons' >> beam.Map(lambda r: r.reason),
                equal_to(['invalid_json']), label='Rejected')


# ------------------------------------------------------------- tokenizing

SETTINGS = TokenizeSettings(tokenizer=EMBEDDED, max_seq_len=16)


def _records(*pairs):
  """A RecordChunk of (example_id, prompt, output) on lines 1, 2, ..."""
  chunk = RecordChunk.empty('f')
  for number, (example_id, prompt, output) in enumerate(pairs, start=1):
    chunk.add(number, example_id, b'{}', prompt, output)
  return chunk


@pytest.fixture(scope='module')
def tokenize_fn():
  dofn = TokenizeRecords(SETTINGS)
  dofn.setup()
  return dofn


def _sequence(chunk, index):
  return chunk.ids[chunk.offsets[index]:chunk.offsets[index + 1]].tolist()


def test_tokenize_records_directly(tokenize_fn, qwen):
  main, tagged = dofn_outputs(tokenize_fn, _records(
      ('a', 'Hello, world!', 'Hi'), ('b', 'Hello', 'word ' * 40),
      ('c', 'Say <|im_end|>', 'ok')))
  [chunk] = main
  prompt_ids = qwen('Hello, world!')['input_ids']
  output_ids = qwen('Hi', add_special_tokens=False)['input_ids']
  assert chunk.example_ids == ['a', 'c']
  assert _sequence(chunk, 0) == prompt_ids + output_ids
  assert chunk.prompt_lengths.tolist()[0] == len(prompt_ids)
  assert chunk.supervised[:chunk.offsets[1]].tolist() == (
      [False] * len(prompt_ids) + [True] * len(output_ids))
  # The default maps special-token text to the special id, as the spec.
  assert qwen.convert_tokens_to_ids('<|im_end|>') in _sequence(chunk, 1)
  assert [(r.reason, r.line_number) for r in tagged['rejected']] == [
      ('too_long', 2)]
  assert tagged['stats'] == [{'truncated': 0,
                              'records_with_special_token_text': 1,
                              'tokenizer_backend/fastokens': 3}]


def test_tokenize_records_in_pipeline(qwen):
  with beam_test_pipeline() as root:
    tokenized = (root | beam.Create([_records(('x', 'a b c', 'd'))])
                 | beam.ParDo(TokenizeRecords(SETTINGS)).with_outputs(
                     'rejected', 'stats', main='chunks'))
    expected = (qwen('a b c')['input_ids'] +
                qwen('d', add_special_tokens=False)['input_ids'])
    assert_that(tokenized.chunks | beam.Map(
        lambda chunk: (chunk.example_ids, chunk.ids.tolist())),
                equal_to([(['x'], expected)]))


def test_tokenize_records_rejects_only_the_record_the_tokenizer_fails_on(
    monkeypatch):
  dofn = TokenizeRecords(SETTINGS)
  dofn.setup()
  encode = dofn._tokenizer.encoder.encode  # pylint: disable=protected-access

  def failing(texts, mode):
    if any('boom' in text for text in texts):
      raise RuntimeError('boom')
    return encode(texts, mode)
  monkeypatch.setattr(dofn._tokenizer.encoder, 'encode', failing)  # pylint: disable=protected-access
  main, tagged = dofn_outputs(dofn, _records(('a', 'fine', 'ok'),
                                         ('b', 'boom', 'x'),
                                         ('c', 'fine too', 'ok')))
  assert main[0].example_ids == ['a', 'c']
  assert [(r.reason, r.message) for r in tagged['rejected']] == [
      ('tokenizer_error', 'RuntimeError: boom')]


@pytest.mark.parametrize('mode, prompt_start, output_end', [
    ('output_right', 0, 2),
    ('prompt_left', 1, 3),
])
def test_fit_lengths_truncates(mode, prompt_start, output_end):
  # max_seq_len 4 allows 5 tokens in prompt + output: 3 + 3 is one over.
  fit = fit_lengths(np.array([3]), np.array([3]), 4, mode)
  assert (fit.prompt_start[0], fit.output_end[0]) == (prompt_start,
                                                       output_end)
  assert fit.truncated.tolist() == [True]
  assert fit.does_not_fit.tolist() == [0]


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


def test_write_batches_writes_exactly_num_shards_files(tmp_path):
  """A slot without a batch gets an empty shard; a slot written by several
  bundles is joined into one shard."""
  with beam_test_pipeline() as root:
    _ = (root | beam.Create([b'only one batch'])
         | WriteBatches(str(tmp_path), num_shards=3, compression='none'))
  written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
  assert written == [f'batches-{i:05d}-of-00003.tfrecord' for i in range(3)]
  assert sorted(p.stat().st_size for p in tmp_path.iterdir()) [:2] == [0, 0]
  records = tf.data.TFRecordDataset([str(tmp_path / n) for n in written])
  assert [r.numpy() for r in records] == [b'only one batch']


def test_join_slot_concatenates_files_and_survives_a_retry(tmp_path):
  parts = []
  for index, payloads in enumerate([[b'a', b'b'], [b'c']]):
    name = f'part-{index}.tfrecord'
    with open(tmp_path / name, 'wb') as handle:
      sink = TFRecordSink('none')
      sink.open(handle)
      for payload in payloads:
        sink.write(payload)
      sink.flush()
    parts.append(fileio.FileResult(name, index, 2, None, None, 1))
  join = _JoinSlotFn(str(tmp_path), str(tmp_path), 4, '.tfrecord')
  [final] = list(join.process((1, parts)))
  assert os.path.basename(final) == 'batches-00001-of-00004.tfrecord'
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'batches-00001-of-00004.tfrecord']
  records = tf.data.TFRecordDataset(final)
  assert [r.numpy() for r in records] == [b'a', b'b', b'c']
  assert list(join.process((1, parts))) == [final]  # a retry: already done


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
           **padded_batch_stats(8, {'input_ids': np.zeros((3, 8)),
                             'response_mask': np.zeros((3, 8), bool),
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
