"""Chat records end to end: the CLI, the real tokenizer and its template.

Every written row of gsm8k_chat.jsonl (4,108 conversations) equals the
reference of docs/chat.md written in tests/test_chat.py, apart from the
code it checks; the bundled chat sample, mixed with prompt/output records,
ends as rows or as rejections with the reason each record's id names, and
its long conversation is cut to fit by dropping whole turns.
"""

import json
import os

import pytest

from conftest import ROOT, SAMPLE, run_sftbeam, shared_data
from output_rows import rows_by_id
from sftbeam.pipeline.readers import load_dataset_info
from test_chat import SAMPLE_REJECTIONS, reference_row, tokenizers_by_mode  # pylint: disable=unused-import

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


def test_gsm8k_chat_rows_equal_the_reference(tmp_path, tokenizers_by_mode):
  path = shared_data('gsm8k_chat.jsonl')
  stdout = run([path], tmp_path)
  with open(path, encoding='utf-8') as handle:
    conversations = {record['id']: record['messages']
                     for record in map(json.loads, handle)}
  rows = rows_by_id(str(tmp_path))
  assert set(rows) == set(conversations)
  for example_id, messages in conversations.items():
    ids, flags = reference_row(messages, tokenizers_by_mode,
                               special_tokens_in_text='special')
    check_row(rows[example_id], ids, flags)
  counts = load_dataset_info(str(tmp_path))['counts']
  assert counts['chat_records'] == len(conversations)
  assert counts['assistant_turns'] == sum(
      message['role'] == 'assistant' for messages in conversations.values()
      for message in messages)
  assert counts['supervised_tokens'] == sum(
      sum(row['response_mask']) for row in rows.values())
  assert counts['reconciled'] and 'chat records' in stdout


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

