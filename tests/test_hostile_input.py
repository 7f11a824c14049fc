"""Hostile input end to end: every bad line is written or rejected, with its
reason, and nothing is lost (docs/bad_input.md).

The hostile file (tests/hostile_cases.py) goes through the real CLI, offline,
with the real embedded tokenizer; rows are read back with tf.data and
checked against transforms.spec_arithmetic on the same tokenizer.
"""

import collections
import json
import os
import re
import tracemalloc

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter

from conftest import beam_test_pipeline, run_sftbeam
from hostile_cases import (BLANK, HUGE_LINE_BYTES, LONG_TEXT, WRITTEN, cases,
                           good, write_file)
from output_rows import record_counts, rejected_lines, rows_by_id
from sftbeam.pipeline.options import DEFAULT_BOUNDARIES, OPTIONS_BY_NAME
from sftbeam.pipeline.readers import load_dataset_info
from sftbeam.transforms import read, spec_arithmetic
from sftbeam.transforms.records import MAX_RAW_CHARS, RecordChunk, Rejected
from sftbeam.pipeline.progress import CountStats
from sftbeam.transforms.stats import rejection_stats
from sftbeam.transforms.tokenize import TokenizeRecords, TokenizeSettings
from sftbeam.transforms.tokenizer_source import EMBEDDED
from token_chunks import pairs_chunk

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

IM_END = 151645  # <|im_end|> in the Qwen vocabulary
# Most of the hostile file is bad on purpose: its runs accept any rejections.
ANY_REJECTED = ('--max_rejected_fraction', '1')
MAX_REJECTED_LINE_BYTES = 8 * MAX_RAW_CHARS  # "a few KB" per rejected line


@pytest.fixture(scope='module')
def hostile(tmp_path_factory):
  """(path, cases) of the hostile file."""
  path = str(tmp_path_factory.mktemp('hostile') / 'hostile.jsonl')
  all_cases = cases()
  write_file(path, all_cases)
  return path, all_cases


def run(input_path, output_dir, *flags):
  return run_sftbeam('run', '--config', 'configs/local.yaml', '--input',
                     input_path, '--output', str(output_dir), *flags,
                     network=False)


@pytest.fixture(scope='module')
def default_run(hostile, tmp_path_factory):
  """Output dir of the hostile file run with the defaults (but
  ANY_REJECTED)."""
  output_dir = str(tmp_path_factory.mktemp('hostile-default'))
  result = run(hostile[0], output_dir, *ANY_REJECTED)
  assert result.returncode == 0, result.stderr
  assert 'Traceback' not in result.stderr
  return output_dir


def expected_written(all_cases) -> dict:
  return {case.record[0]: case.record[1:] for case in all_cases
          if case.expect == WRITTEN}


def check_row(row, prompt, output, tokenizer, boundaries=DEFAULT_BOUNDARIES,
              special_tokens_in_text='special'):
  """One written row equals transforms.spec_arithmetic's, padded to its
  bucket."""
  reference = spec_arithmetic.tokenize_prompt_and_output(
      [prompt], [output], tokenizer,
      special_tokens_in_text=special_tokens_in_text)
  real = reference['input_ids'].shape[1]
  width = len(row['input_ids'])
  assert width == min(b for b in boundaries if b >= real)
  for name in ('input_ids', 'labels', 'response_mask'):
    assert row[name][:real] == reference[name][0].tolist(), name
  pad = tokenizer.pad_token_id
  assert row['labels'][real:] == [pad] * (width - real)
  assert row['input_ids'][real + 1:] == [pad] * (width - real - 1)
  assert not any(row['response_mask'][real:])
  assert row['output_lengths'] == int(reference['response_mask'].sum())


def test_hostile_file_holds_every_case(hostile, qwen):
  path, all_cases = hostile
  with open(path, 'rb') as handle:
    assert sum(1 for _ in handle) == len(all_cases)
  assert os.path.getsize(path) > HUGE_LINE_BYTES
  long_ids = qwen(LONG_TEXT, add_special_tokens=False)['input_ids']
  # Thousands of tokens; long-prompt/long-output fit, too-long (3x) not.
  assert 2000 < len(long_ids) < DEFAULT_BOUNDARIES[-1] - 10
  assert 3 * len(long_ids) > DEFAULT_BOUNDARIES[-1]


def test_counts_reconcile(hostile, default_run):
  _, all_cases = hostile
  expect = collections.Counter(case.expect for case in all_cases)
  counts = load_dataset_info(default_run)['counts']
  rejected = {reason: count for reason, count in expect.items()
              if reason not in (WRITTEN, BLANK)}
  assert counts['lines'] == len(all_cases)
  assert counts['blank_lines'] == expect[BLANK]
  assert counts['records_written'] == expect[WRITTEN]
  assert counts['rejected_by_reason'] == rejected
  # Input lines = written rows + rejected rows + blank lines.
  assert counts['lines'] == (counts['records_written'] +
                             counts['records_rejected'] +
                             counts['blank_lines'])
  assert counts['records_in'] == counts['lines'] - counts['blank_lines']
  assert counts['reconciled'] is True
  assert counts['records_truncated'] == 0


def test_each_rejected_line_carries_its_reason(hostile, default_run):
  path, all_cases = hostile
  expected = {(number, case.expect)
              for number, case in enumerate(all_cases, start=1)
              if case.expect not in (WRITTEN, BLANK)}
  assert rejected_lines(default_run) == expected
  for name in load_dataset_info(default_run)['rejected_files']:
    with open(os.path.join(default_run, name), encoding='utf-8') as handle:
      for line in handle:
        assert json.loads(line)['source'].endswith(os.path.basename(path))


def test_rejected_copies_are_capped(hostile, default_run):
  _, all_cases = hostile
  huge_line_number = [case.name for case in all_cases].index('huge-line') + 1
  huge_line = all_cases[huge_line_number - 1].line
  for name in load_dataset_info(default_run)['rejected_files']:
    with open(os.path.join(default_run, name), 'rb') as handle:
      for line in handle:
        assert len(line) < MAX_REJECTED_LINE_BYTES
        record = json.loads(line)
        if record['line_number'] == huge_line_number:
          assert record['raw'].startswith('{"id": "huge", "prompt": "aaa')
          assert len(record['raw']) <= MAX_RAW_CHARS
          assert record['message'].startswith(f'{len(huge_line)} bytes')


def test_good_records_around_bad_ones_are_written_correctly(
    hostile, default_run, qwen):
  rows = rows_by_id(default_run)
  expected = expected_written(hostile[1])
  assert set(rows) == set(expected)
  for example_id, (prompt, output) in expected.items():
    check_row(rows[example_id], prompt, output, qwen)


def test_special_token_text_maps_to_special_ids_by_default(default_run):
  """The spec's tokenizer(text) maps `<|im_end|>` to its id; so does the
  default run, and it says so."""
  row = rows_by_id(default_run)['im-end']
  assert IM_END in row['input_ids']
  assert row['labels'].count(IM_END) == 2  # prompt and output
  counts = load_dataset_info(default_run)['counts']
  assert counts['records_with_special_token_text'] == 1


def test_special_tokens_in_text_text_and_max_rejected_fraction(
    hostile, tmp_path, qwen):
  """One run checks two options: special-token text kept as text, and the
  exit 1 when more than --max_rejected_fraction of the input is rejected."""
  path, all_cases = hostile
  result = run(path, tmp_path, '--special_tokens_in_text', 'text',
               '--max_rejected_fraction', '0.05')
  assert result.returncode == 1, result.stderr
  errors = [line for line in result.stderr.splitlines()
            if line.startswith('sftbeam: error:')]
  assert len(errors) == 1 and '--max_rejected_fraction 0.05' in errors[0]
  assert 'Traceback' not in result.stderr
  # The outputs stay for inspection, complete.
  counts = load_dataset_info(str(tmp_path))['counts']
  assert counts['reconciled'] is True
  assert counts['records_with_special_token_text'] == 1
  assert re.search(r'with special-token text +1 \(kept as text\)',
                   result.stdout)
  rows = rows_by_id(str(tmp_path))
  written = expected_written(all_cases)
  assert set(rows) == set(written)
  prompt, output = written['im-end']
  check_row(rows['im-end'], prompt, output, qwen,
            special_tokens_in_text='text')
  row = rows['im-end']
  assert IM_END not in row['input_ids'] + row['labels']
  assert len(qwen('<|im_end|>', split_special_tokens=True,
                  add_special_tokens=False)['input_ids']) > 1


WRONG_FIELDS = '{"instruction": "Say hi.", "response": "Hi."}\n'
SHAREGPT = ('{"messages": [{"from": "human", "value": "Hi"}, '
            '{"from": "gpt", "value": "Hello"}]}\n')


@pytest.mark.parametrize('text, message', [
    (WRONG_FIELDS * 5,
     'nothing written: all 5 records were rejected (missing_field 5); the '
     'records lack the fields --prompt_field and --output_field name (now '
     '"prompt" and "output"): pass the names of yours; a conversation needs '
     'a "messages" list of {role, content} (docs/chat.md); every rejected '
     'line is in {output}/rejected-*.jsonl (outputs kept)'),
    (SHAREGPT * 3 + 'not json\n',
     'nothing written: all 4 records were rejected (invalid_messages 3, '
     'invalid_json 1); a conversation needs "messages": [{"role": "user", '
     '"content": "..."}, {"role": "assistant", "content": "..."}] '
     '(docs/chat.md); every rejected line is in {output}/rejected-*.jsonl '
     '(outputs kept)'),
    ('{"prompt": "Hi", "output": "Hello"}\n' + WRONG_FIELDS * 2,
     '66.7% of the records were rejected, more than --max_rejected_fraction '
     '0.5 (missing_field 2); the records lack the fields'),
    ('\n \n', 'nothing written: the input holds no record (no line, or '
     'blank ones)'),
], ids=['wrong-fields', 'sharegpt-messages', 'two-thirds-rejected',
        'only-blank-lines'])
def test_a_run_that_writes_little_or_nothing_fails_saying_why(
    tmp_path, text, message):
  """The default max_rejected_fraction (0.5) fails a run that rejects most
  records, with the commonest reasons and the hint that fits."""
  input_path = tmp_path / 'in.jsonl'
  input_path.write_text(text, encoding='utf-8')
  output_dir = str(tmp_path / 'out')
  result = run(str(input_path), output_dir)
  assert result.returncode == 1, result.stderr
  [line] = result.stderr.splitlines()
  assert line.startswith('sftbeam: error: ' + message.replace(
      '{output}', output_dir))
  assert load_dataset_info(output_dir)['counts']['reconciled']


def test_a_run_that_writes_nothing_does_not_replace_a_complete_run(tmp_path):
  good = tmp_path / 'good.jsonl'
  good.write_text('{"prompt": "Hi", "output": "Hello"}\n', encoding='utf-8')
  output_dir = str(tmp_path / 'out')
  assert run(str(good), output_dir).returncode == 0
  before = rows_by_id(output_dir)
  wrong = tmp_path / 'wrong.jsonl'
  wrong.write_text(WRONG_FIELDS * 3, encoding='utf-8')
  result = run(str(wrong), output_dir, '--overwrite')
  assert result.returncode == 1, result.stderr
  [line] = result.stderr.splitlines()
  assert line.endswith(f'; the earlier run in {output_dir} is kept and this '
                       'one discarded (pass another --output to keep it)')
  assert rows_by_id(output_dir) == before
  assert load_dataset_info(output_dir)['counts']['records_in'] == 1


def test_same_input_and_config_give_identical_rows(hostile, default_run,
                                                   tmp_path):
  """Rows are a pure function of record and config; batching may differ."""
  result = run(hostile[0], tmp_path, *ANY_REJECTED)
  assert result.returncode == 0, result.stderr
  assert rows_by_id(str(tmp_path)) == rows_by_id(default_run)
  assert rejected_lines(str(tmp_path)) == rejected_lines(default_run)
  assert record_counts(str(tmp_path)) == record_counts(default_run)


def test_reader_memory_is_bounded_by_max_line_bytes(hostile):
  """The 50 MB line never sits in memory whole: the reader keeps at most
  max_line_bytes (+1) of a line plus one read block."""
  max_line_bytes = OPTIONS_BY_NAME['max_line_bytes'].default
  assert HUGE_LINE_BYTES > 4 * max_line_bytes
  tracemalloc.start()
  try:
    with open(hostile[0], 'rb') as handle:
      longest = max(total for _, total in read.iter_lines(handle,
                                                          max_line_bytes))
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert longest > HUGE_LINE_BYTES
  assert peak < 3 * (max_line_bytes + read._READ_BLOCK_BYTES)  # pylint: disable=protected-access


# ------------------------------------------------------------- truncation

SHORT = 'Answer briefly.'
TRUNCATION_CASES = [
    good('fits', SHORT, 'Yes.'),
    good('long-output', SHORT, LONG_TEXT),
    good('long-prompt', LONG_TEXT, 'Yes.'),
    good('both-long', LONG_TEXT, LONG_TEXT),
]
BOUNDARIES = (16, 32, 64)
MAX_SEQ_LEN = 64
# What each mode does with fits, long-output, long-prompt, both-long.
TRUNCATION_OUTCOMES = {
    'none': (WRITTEN, 'too_long', 'too_long', 'too_long'),
    'output_right': (WRITTEN, WRITTEN, 'prompt_too_long', 'prompt_too_long'),
    'prompt_left': (WRITTEN, 'output_too_long', WRITTEN, 'output_too_long'),
}


def truncated_ids(prompt, output, mode, tokenizer):
  """The ids a truncated record must keep, computed plainly."""
  prompt_ids = tokenizer(prompt)['input_ids']
  output_ids = tokenizer(output, add_special_tokens=False)['input_ids']
  room = MAX_SEQ_LEN + 1  # tokens of prompt + output
  if mode == 'output_right':
    return prompt_ids, output_ids[:room - len(prompt_ids)]
  return prompt_ids[len(prompt_ids) + len(output_ids) - room:], output_ids


@pytest.mark.parametrize('mode', sorted(TRUNCATION_OUTCOMES))
def test_truncation_modes_end_to_end(mode, tmp_path, qwen):
  input_path = str(tmp_path / 'in.jsonl')
  write_file(input_path, TRUNCATION_CASES)
  output_dir = tmp_path / 'out'
  result = run(input_path, output_dir, *ANY_REJECTED, '--truncation', mode,
               '--boundaries', ','.join(map(str, BOUNDARIES)),
               '--max_seq_len', str(MAX_SEQ_LEN))
  assert result.returncode == 0, result.stderr
  outcomes = dict(zip((case.name for case in TRUNCATION_CASES),
                      TRUNCATION_OUTCOMES[mode]))
  truncated = [name for name, outcome in outcomes.items()
               if outcome == WRITTEN and name != 'fits']

  counts = load_dataset_info(str(output_dir))['counts']
  assert counts['records_truncated'] == len(truncated)
  assert re.search(rf'truncated \(written\) +{len(truncated)}\n',
                   result.stdout)
  assert counts['reconciled'] is True
  assert rejected_lines(str(output_dir)) == {
      (number, outcomes[case.name])
      for number, case in enumerate(TRUNCATION_CASES, start=1)
      if outcomes[case.name] != WRITTEN}

  rows = rows_by_id(str(output_dir))
  assert set(rows) == {name for name, outcome in outcomes.items()
                       if outcome == WRITTEN}
  check_row(rows['fits'], SHORT, 'Yes.', qwen, BOUNDARIES)
  for case in TRUNCATION_CASES:
    if case.name in truncated:
      prompt_ids, output_ids = truncated_ids(*case.record[1:], mode, qwen)
      expected = spec_arithmetic.pad_shift_mask(
          pairs_chunk([prompt_ids], [output_ids]), qwen.pad_token_id,
          width=MAX_SEQ_LEN)
      row = rows[case.name]
      assert len(prompt_ids) + len(output_ids) - 1 == MAX_SEQ_LEN
      assert row['input_ids'] == expected['input_ids'][0].tolist()
      assert row['labels'] == expected['labels'][0].tolist()
      assert row['response_mask'] == expected['response_mask'][0].tolist()
      assert row['prompt_lengths'] == len(prompt_ids)
      assert row['output_lengths'] == len(output_ids)



# ------------------------------------------------- tokenizer failures

def test_a_failing_record_does_not_fail_its_batch():
  """A batch the tokenizer raises on is retried record by record: only the
  record it fails on is rejected (tokenizer_error). A lone surrogate makes
  the real tokenizer raise (the parser rejects those earlier; here the
  record is built directly)."""
  settings = TokenizeSettings(tokenizer=EMBEDDED, max_seq_len=32)
  dofn = TokenizeRecords(settings)
  dofn.setup()
  records = RecordChunk.empty('f')
  for number, (example_id, prompt) in enumerate(
      [('a', 'fine'), ('b', 'bad \ud800'), ('c', 'fine too')], start=1):
    records.add(number, example_id, b'{}', prompt, 'out')
  written, rejected = [], []
  for value in dofn.process(records):
    tag = getattr(value, 'tag', None)
    if tag == TokenizeRecords.REJECTED:
      rejected.append(value.value)
    elif tag is None:
      written.extend(value.example_ids)
  assert written == ['a', 'c']
  assert [(r.line_number, r.reason) for r in rejected] == [
      (2, 'tokenizer_error')]
  assert 'Error: ' in rejected[0].message  # the exception's class and text


def test_each_rejection_reason_has_a_beam_counter():
  rejected = [Rejected('f', number, reason, 'why', '{}') for number, reason
              in enumerate(['invalid_json', 'too_long', 'invalid_json'])]
  root = beam_test_pipeline()
  _ = (root | beam.Create(rejected) | beam.Map(rejection_stats)
       | beam.ParDo(CountStats()))
  result = root.run()
  result.wait_until_finish()
  counters = {counter.key.metric.name: counter.committed for counter in
              result.metrics().query(MetricsFilter())['counters']}
  assert counters['rejected/invalid_json'] == 2
  assert counters['rejected/too_long'] == 1
