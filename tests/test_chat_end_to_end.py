"""Chat records end to end: the CLI, the real tokenizer and its template.

Every written row of gsm8k_chat.jsonl (4,108 conversations) and of
bfcl_tool_calls.jsonl (1,000 tool-calling conversations, in whole and
per_turn rows) equals the references of tests/test_chat.py, written apart
from the code they check; the bundled chat sample, mixed with
prompt/output records, ends as rows or as rejections with the reason each
record's id names, and its long conversation is cut to fit by dropping
whole turns.
"""

import json
import os

import pytest

from conftest import ROOT, SAMPLE, run_sftbeam, shared_data
from output_rows import rows_by_id
from sftbeam.pipeline.readers import load_dataset_info
from test_chat import (SAMPLE_REJECTIONS, reference_per_turn,
                       reference_whole)

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

CHAT_SAMPLE = os.path.join(ROOT, 'examples', 'chat_sample.jsonl')


def run(input_paths, output_dir, *flags):
  return run_sftbeam('run', '--config', 'configs/local.yaml', '--input',
                     *input_paths, '--output', str(output_dir), '--pad_to',
                     'longest', *flags, network=False, check=True).stdout


def check_row(row, ids, flags):
  """A written row against a conversation's (ids, supervised flags)."""
  length = len(ids) - 1
  assert row['input_ids'][:length] == ids[:-1]
  assert row['labels'][:length] == ids[1:]
  assert row['response_mask'][:length] == flags[1:]
  assert not any(row['response_mask'][length:])
  first = flags.index(True)
  assert (row['prompt_lengths'], row['output_lengths']) == (
      first, len(ids) - first)


def _records(name):
  with open(shared_data(name), encoding='utf-8') as handle:
    return {record['id']: record for record in map(json.loads, handle)}


def test_gsm8k_chat_rows_equal_the_reference(tmp_path, qwen):
  records = _records('gsm8k_chat.jsonl')
  stdout = run([shared_data('gsm8k_chat.jsonl')], tmp_path)
  rows = rows_by_id(str(tmp_path))
  assert set(rows) == set(records)
  for example_id, record in records.items():
    [(ids, flags)] = reference_whole(qwen, record)
    check_row(rows[example_id], ids, flags)
  counts = load_dataset_info(str(tmp_path))['counts']
  assert counts['chat_records'] == len(records)
  assert counts['assistant_turns'] == sum(
      message['role'] == 'assistant' for record in records.values()
      for message in record['messages'])
  assert counts['supervised_tokens'] == sum(
      sum(row['response_mask']) for row in rows.values())
  assert counts['reconciled'] and 'chat records' in stdout


@pytest.mark.parametrize('chat_rows', ('whole', 'per_turn'))
def test_bfcl_rows_equal_the_reference(chat_rows, tmp_path, qwen):
  """Every tool-calling conversation is written, tools and calls in its
  row, its calls learned; per_turn ids are "<id>#<message index>"."""
  records = _records('bfcl_tool_calls.jsonl')
  stdout = run([shared_data('bfcl_tool_calls.jsonl')], tmp_path,
               '--chat_rows', chat_rows)
  rows = rows_by_id(str(tmp_path))
  expected = {}
  for example_id, record in records.items():
    if chat_rows == 'whole':
      [expected[example_id]] = reference_whole(qwen, record)
    else:
      [expected[f'{example_id}#{len(record["messages"]) - 1}']] = (
          reference_per_turn(qwen, record))
  assert set(rows) == set(expected)
  for example_id, (ids, flags) in expected.items():
    check_row(rows[example_id], ids, flags)
  counts = load_dataset_info(str(tmp_path))['counts']
  calls = sum(len(record['messages'][-1]['tool_calls'])
              for record in records.values())
  assert (counts['records_written'], counts['examples_written'],
          counts['tool_calls_learned'], counts['records_rejected']) == (
              1000, 1000, calls, 0)
  assert f'{calls} tool calls' in stdout


def test_per_turn_rows_count_records_and_examples(tmp_path, qwen):
  """A conversation with two learned answers is one record written, two
  examples; --chat_template_kwargs reaches the template."""
  path = tmp_path / 'in.jsonl'
  record = {'id': 'r', 'messages': [
      {'role': 'user', 'content': 'Hi!'},
      {'role': 'assistant', 'content': 'Hello.', 'reasoning_content': 'Greet.'},
      {'role': 'user', 'content': '2+2?'},
      {'role': 'assistant', 'content': '4', 'reasoning_content': 'Add.'}]}
  path.write_text(json.dumps(record) + '\n', encoding='utf-8')
  run([str(path)], tmp_path / 'out', '--chat_rows', 'per_turn',
      '--chat_template_kwargs', '{"enable_thinking": true}')
  counts = load_dataset_info(str(tmp_path / 'out'))['counts']
  assert (counts['records_in'], counts['records_written'],
          counts['examples_written'], counts['reasoning_turns_learned'],
          counts['reconciled']) == (1, 1, 2, 2, True)
  rows = rows_by_id(str(tmp_path / 'out'))
  for (ids, flags), suffix in zip(reference_per_turn(
      qwen, record, run_kwargs={'enable_thinking': True}), ('#1', '#3')):
    check_row(rows['r' + suffix], ids, flags)


def test_chat_sample_mixed_with_prompt_output_records(tmp_path):
  """input_format auto reads both kinds from the same run."""
  run([CHAT_SAMPLE, SAMPLE], tmp_path, '--truncation', 'prompt_left',
      '--max_seq_len', '1024', '--boundaries', '512,1024')
  info = load_dataset_info(str(tmp_path))
  counts = info['counts']
  assert counts['reconciled']
  with open(CHAT_SAMPLE, encoding='utf-8') as handle:
    sample = [json.loads(line) for line in handle]
  rejected = {(os.path.basename(source), number): reason
              for (source, number), reason in _rejections(tmp_path).items()}
  for number, record in enumerate(sample, start=1):
    reason = rejected.get(('chat_sample.jsonl', number))
    assert reason == SAMPLE_REJECTIONS.get(record['id']), record['id']
  rows = rows_by_id(str(tmp_path))
  long_row = rows['long-many-turns']
  assert len(long_row['input_ids']) <= 1024
  assert counts['records_truncated'] >= 1
  # Prompt/output records of the sample are written beside the chat ones
  # (those whose output alone is over 1024 tokens: output_too_long). Of its
  # 306 records 5 are rejected when parsed, so 301 reach the tokenizer.
  chat_ids = {record['id'] for record in sample}
  prompt_output_rows = [example_id for example_id in rows
                        if example_id not in chat_ids]
  too_long = sum(1 for (source, _), reason in rejected.items()
                 if source == 'sample.jsonl' and reason == 'output_too_long')
  assert len(prompt_output_rows) + too_long == 301


def _rejections(output_dir):
  found = {}
  for name in load_dataset_info(str(output_dir))['rejected_files']:
    with open(os.path.join(output_dir, name), encoding='utf-8') as handle:
      for line in handle:
        record = json.loads(line)
        found[(record['source'], record['line_number'])] = record['reason']
  return found


def test_messages_format_without_a_chat_template_exits_2(tmp_path):
  """A tokenizer without a chat template cannot read chat records."""
  tokenizer = tmp_path / 'tokenizer'
  tokenizer.mkdir()
  from sftbeam.transforms.tokenizer_source import embedded_tokenizer_dir
  for name in os.listdir(embedded_tokenizer_dir()):
    source = os.path.join(embedded_tokenizer_dir(), name)
    with open(source, 'rb') as handle:
      data = handle.read()
    if name == 'tokenizer_config.json':
      config = json.loads(data)
      config.pop('chat_template', None)
      data = json.dumps(config).encode()
    (tokenizer / name).write_bytes(data)
  result = run_sftbeam('run', '--input', CHAT_SAMPLE, '--output',
                       str(tmp_path / 'out'), '--tokenizer', str(tokenizer),
                       '--input_format', 'messages', network=False)
  assert result.returncode == 2
  assert 'has no chat template' in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('template, says', [
    ('{% for m in messages %}{{ m.content }}', 'does not compile: line 1'),
    ("{{ raise_exception('no') }}", 'fails on a plain conversation'),
    ('{% for m in messages %}{{ m.content }}\n{% endfor %}',
     'writes no special token after'),
])
def test_an_unusable_chat_template_exits_2(template, says, tmp_path):
  path = tmp_path / 'template.jinja'
  path.write_text(template, encoding='utf-8')
  result = run_sftbeam('run', '--input', CHAT_SAMPLE, '--output',
                       str(tmp_path / 'out'), '--chat_template', str(path),
                       network=False)
  assert result.returncode == 2, result.stderr
  assert says in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'out').exists()

