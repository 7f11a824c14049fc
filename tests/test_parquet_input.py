"""Parquet input: a row reads as the record its JSON line gives.

Records chosen here are written twice, as JSON lines and by pyarrow as
Parquet (several row groups; Arrow fills the struct fields a row lacks with
nulls; tools and tool-call arguments as JSON strings), and must give the
same records, rejections and rows. Then the edges: row numbers across row
groups and chunks, Parquet's compressions, strings that are not UTF-8,
column types JSON lacks, and files cut short.
"""

import json
import os
import subprocess

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from conftest import SAMPLE, beam_test_pipeline, dofn_outputs, run_sftbeam
from output_rows import record_counts, rows_by_id
from sftbeam.pipeline import cli
from sftbeam.pipeline.readers import load_dataset_info
from sftbeam.transforms.parse import (FieldNames, ParseLines, ParseRows,
                                      record_columns)
from sftbeam.transforms.read import CorruptInputError
from sftbeam.transforms.read_input import ReadInput
from sftbeam.transforms.read_parquet import RowGroup, ReadRowGroupFn
from sftbeam.transforms.records import LineChunk, RowChunk

FIELDS = FieldNames()

WEATHER = {'type': 'function', 'function': {
    'name': 'get_weather', 'description': 'Current weather in a city.',
    'parameters': {'type': 'object', 'properties': {
        'city': {'type': 'string', 'description': 'City name'},
        'unit': {'type': 'string', 'enum': ['celsius', 'fahrenheit']}},
                   'required': ['city']}}}
CURRENCY = {'type': 'function', 'function': {
    'name': 'convert_currency',
    'description': 'Convert an amount between currencies.',
    'parameters': {'type': 'object', 'properties': {
        'amount': {'type': 'number'}, 'from': {'type': 'string'},
        'to': {'type': 'string'}}, 'required': ['amount', 'from', 'to']}}}


def user(text):
  return {'role': 'user', 'content': text}


def assistant(text, **keys):
  return {'role': 'assistant', 'content': text, **keys}


def call(name, arguments, **keys):
  """A tool call, its arguments as a JSON string."""
  return {**keys, 'type': 'function', 'function': {
      'name': name, 'arguments': json.dumps(arguments, ensure_ascii=False)}}


# Prompt/output records and conversations in one file: Arrow gives every
# row every column and every message every key any message has (the
# others null), and the tools' parameters every property of any tool.
MIXED = [
    {'id': 'po-1', 'prompt': 'What is 2+2?', 'output': 'It is 4.'},
    {'prompt': 'Name a prime number.', 'output': 'Seven.'},
    {'id': 'chat-tools', 'tools': [WEATHER, CURRENCY], 'messages': [
        user('Weather in Lisbon, and what is 50 EUR in USD?'),
        assistant(None, tool_calls=[
            call('get_weather', {'city': 'Lisbon', 'unit': 'celsius'},
                 id='c1'),
            call('convert_currency', {'amount': 50, 'from': 'EUR',
                                      'to': 'USD'})]),
        {'role': 'tool', 'content': '{"temp_c": 18}', 'tool_call_id': 'c1'},
        {'role': 'tool', 'content': '54.10', 'name': 'convert_currency'},
        assistant('18 C in Lisbon; 50 EUR is 54.10 USD.')]},
    {'id': 'bad-role', 'messages': [{'role': 'robot', 'content': 'beep'},
                                    assistant('boop')]},
    {'id': 'chat-reasoning', 'chat_template_kwargs': {'enable_thinking': True},
     'messages': [{'role': 'system', 'content': 'Be brief.'},
                  user('Is 91 prime?'),
                  assistant('No: 91 = 7 x 13.',
                            reasoning_content='Try 7: 7 x 13 = 91.')]},
    {'id': 'po-empty', 'prompt': 'Say nothing.', 'output': '   '},
    {'id': 'chat-weight', 'messages': [
        user('Draft a title.'), assistant('Title', weight=0),
        user('Better?'), assistant('A Better Title', weight=1)]},
    {'id': 'chat-kwargs', 'chat_template_kwargs': {'enable_thinking': False},
     'messages': [user('Hi!'), assistant('Hello.')]},
]
# TRL's prompt/completion conversations, `tools` a column of JSON strings
# (the JSON lines hold the tools themselves).
TRL = [
    {'id': 'trl-plain', 'prompt': [user('Hi')],
     'completion': [assistant('Hello!')]},
    {'id': 'trl-tools', 'tools': [WEATHER], 'prompt': [
        user('Is it raining in Bergen right now?')],
     'completion': [assistant('', tool_calls=[
         call('get_weather', {'city': 'Bergen'}, id='call_1')])]},
    {'id': 'trl-bad', 'prompt': [user('Hi')], 'completion': [user('Hm?')]},
]


def write_jsonl(path, records):
  with open(path, 'w', encoding='utf-8') as handle:
    for record in records:
      handle.write(json.dumps(record, ensure_ascii=False) + '\n')


def parquet_table(records, tools_as_json=False) -> pa.Table:
  """The records as pyarrow converts them: one struct type for all (keys
  of every record, in order of first appearance), absent keys null."""
  if tools_as_json:
    records = [dict(record, tools=json.dumps(record['tools']))
               if 'tools' in record else record for record in records]
  return pa.Table.from_struct_array(pa.array(records))


def write_inputs(directory):
  """MIXED and TRL as JSON lines and as Parquet (row groups of 2 rows, zstd
  and gzip): {'jsonl': [paths], 'parquet': [paths]}."""
  directory.mkdir()
  paths = {'jsonl': [], 'parquet': []}
  for name, records, codec in (('mixed', MIXED, 'zstd'), ('trl', TRL, 'gzip')):
    write_jsonl(directory / f'{name}.jsonl', records)
    pq.write_table(parquet_table(records, tools_as_json=name == 'trl'),
                   directory / f'{name}.parquet', row_group_size=2,
                   compression=codec)
    paths['jsonl'].append(str(directory / f'{name}.jsonl'))
    paths['parquet'].append(str(directory / f'{name}.parquet'))
  return paths


def parsed_records(outputs):
  """(records as comparable tuples, rejections as (number, reason,
  message)) of ParseLines or ParseRows outputs."""
  main, tagged = outputs
  records = [(number, example_id, prompt, output, conversation)
             for chunk in main
             for number, example_id, prompt, output, conversation in zip(
                 chunk.numbers, chunk.example_ids, chunk.prompts,
                 chunk.outputs, chunk.conversations)]
  rejected = [(r.line_number or r.row_number, r.reason, r.message)
              for r in tagged.get('rejected', [])]
  return records, rejected


@pytest.mark.parametrize('records, tools_as_json', [(MIXED, False),
                                                    (TRL, True)],
                         ids=['mixed', 'trl'])
def test_a_row_parses_as_its_json_line(records, tools_as_json):
  """Same records (ids, texts, conversations), same rejections."""
  lines = [json.dumps(record).encode() for record in records]
  line_chunk = LineChunk('f', [(number, line, len(line))
                               for number, line in enumerate(lines, 1)])
  rows = parquet_table(records, tools_as_json).to_batches()[0]
  from_lines = parsed_records(dofn_outputs(ParseLines(FIELDS, 1 << 20),
                                           line_chunk))
  from_rows = parsed_records(dofn_outputs(ParseRows(FIELDS),
                                          RowChunk('f', 1, rows, 0)))
  assert from_rows == from_lines
  assert from_rows[1]  # a bad row is among them


def test_a_rejected_row_names_its_row_and_shows_it_as_json():
  rows = parquet_table(MIXED).to_batches()[0]
  _, tagged = dofn_outputs(ParseRows(FIELDS), RowChunk('data.parquet', 11,
                                                       rows, 0))
  by_reason = {r.reason: json.loads(r.to_json()) for r in tagged['rejected']}
  bad_role = by_reason['invalid_messages']
  assert (bad_role['source'], bad_role['row_number']) == ('data.parquet', 14)
  assert 'line_number' not in bad_role
  # The row as the JSON line it reads as: no null-filled keys.
  assert json.loads(bad_role['raw']) == MIXED[3]
  assert tagged['stats'] == [{'rows': len(MIXED), 'input_bytes': 0}]


def test_a_string_that_is_not_utf8_rejects_its_row_only():
  prompts = pa.array([b'fine', b'bad \xff', b'fine too'],
                     pa.binary()).view(pa.string())
  rows = pa.record_batch({'prompt': prompts, 'output': ['a', 'b', 'c']})
  main, tagged = dofn_outputs(ParseRows(FIELDS), RowChunk('f', 1, rows, 0))
  assert main[0].prompts == ['fine', 'fine too']
  [rejected] = tagged['rejected']
  assert (rejected.row_number, rejected.reason) == (2, 'invalid_utf8')
  assert json.loads(rejected.raw) == {'prompt': 'bad \ufffd', 'output': 'b'}


def test_a_later_rejection_shows_the_row_too():
  """A record rejected after parsing (by the tokenizer step) shows its row
  and row number from the chunk it kept."""
  rows = parquet_table(MIXED).to_batches()[0]
  [records], _ = dofn_outputs(ParseRows(FIELDS), RowChunk('f', 1, rows, 0))
  index = records.example_ids.index('chat-kwargs')
  rejected = records.subset([index]).reject(0, 'too_long', 'L = 9 > 8')
  assert (rejected.row_number, rejected.line_number) == (8, None)
  assert json.loads(rejected.raw) == MIXED[7]


@pytest.mark.slow
def test_row_numbers_count_over_row_groups_and_chunks(tmp_path):
  """Row groups of 3, chunks of 2: every row once, numbered in its file;
  each of Parquet's compressions reads the same."""
  table = pa.table({'prompt': [f'p{i}' for i in range(7)],
                    'output': [f'o{i}' for i in range(7)],
                    'unread': list(range(7))})
  for codec in ('none', 'snappy', 'gzip', 'zstd'):
    pq.write_table(table, tmp_path / f'{codec}.parquet', row_group_size=3,
                   compression=codec)
  with beam_test_pipeline() as root:
    chunks = root | ReadInput([str(tmp_path / '*.parquet')], 2, 100,
                              record_columns(FIELDS))
    rows = chunks | beam.FlatMap(lambda chunk: [
        (os.path.basename(chunk.source), chunk.first_row_number + index,
         prompt, chunk.rows.num_rows <= 2, chunk.rows.schema.names)
        for index, prompt in enumerate(
            chunk.rows.column('prompt').to_pylist())])
    assert_that(rows, equal_to([
        (f'{codec}.parquet', number, f'p{number - 1}', True,
         ['prompt', 'output'])
        for codec in ('none', 'snappy', 'gzip', 'zstd')
        for number in range(1, 8)]))


@pytest.mark.parametrize('data_type', [pa.binary(), pa.timestamp('s'),
                                       pa.list_(pa.decimal128(5, 2))],
                         ids=['binary', 'timestamp', 'decimals'])
def test_a_read_column_of_a_type_json_lacks_fails_the_run(data_type,
                                                          tmp_path):
  """Only the columns a record reads are checked (`unread` is binary)."""
  values = pa.array([None], data_type)
  path = tmp_path / 'f.parquet'
  pq.write_table(pa.table({'prompt': values, 'output': ['o'],
                           'unread': pa.array([b'x'])}), path)
  group = RowGroup(str(path), 0, 1, 0)
  with pytest.raises(CorruptInputError, match=f'{path}: column "prompt"'):
    list(ReadRowGroupFn(record_columns(FIELDS), 10).process(group))
  pq.write_table(pa.table({'prompt': ['p'], 'output': ['o'],
                           'unread': values}), path)
  [chunk] = ReadRowGroupFn(record_columns(FIELDS), 10).process(group)
  assert chunk.rows.schema.names == ['prompt', 'output']


def one_error_line(code, stderr) -> str:
  assert 'Traceback' not in stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr[-3000:]
  assert lines[0].startswith('sftbeam: error: ')
  return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize('cut', [0, 0.5, 0.999], ids=['empty', 'half',
                                                      'footer'])
def test_a_parquet_file_cut_short_fails_the_run(cut, tmp_path, capsys):
  """Exit 1, one line naming the file; no output left."""
  path = tmp_path / 'cut.parquet'
  pq.write_table(parquet_table(MIXED), path, row_group_size=2)
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * cut)])
  code = cli.main(['run', '--input', str(path), '--output',
                   str(tmp_path / 'out')])
  line = one_error_line(code, capsys.readouterr().err)
  assert code == 1
  assert str(path) in line and 'cut short or corrupt' in line
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.slow
def test_parquet_input_gives_the_rows_of_its_json_lines(tmp_path):
  """Through the installed CLI, offline: the records as Parquet and as
  JSON lines, each beside the sample's JSON lines in one run, give the
  same row per example id, the same rejections and counts."""
  paths = write_inputs(tmp_path / 'in')
  outputs = {}
  for kind, inputs in paths.items():
    outputs[kind] = str(tmp_path / kind)
    run_sftbeam('run', '--config', 'configs/local.yaml', '--input', *inputs,
                SAMPLE, '--output', outputs[kind], network=False, check=True)
  assert rows_by_id(outputs['parquet']) == rows_by_id(outputs['jsonl'])
  assert {'chat-tools', 'trl-tools', 'po-1'} <= set(rows_by_id(
      outputs['parquet']))
  assert record_counts(outputs['parquet']) == record_counts(outputs['jsonl'])
  rejected = {kind: rejections(output) for kind, output in outputs.items()}
  assert rejected['parquet'] == rejected['jsonl']
  assert ('mixed', 4, 'invalid_messages') in rejected['parquet']
  counts = load_dataset_info(outputs['parquet'])['counts']
  assert counts['rows'] == len(MIXED) + len(TRL)
  assert counts['reconciled']


def rejections(output_dir) -> set:
  """{(file stem, line or row number, reason)} of a run's rejections."""
  found = set()
  for name in load_dataset_info(output_dir)['rejected_files']:
    with open(os.path.join(output_dir, name), encoding='utf-8') as handle:
      for line in handle:
        record = json.loads(line)
        stem = os.path.splitext(os.path.basename(record['source']))[0]
        number = record.get('line_number', record.get('row_number'))
        found.add((stem, number, record['reason']))
  return found
