"""`sftbeam inspect` and `sftbeam stats` on a real run of the sample."""

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

from conftest import ROOT, SAMPLE, run_sftbeam
from sftbeam import tokenize_prompt_and_output
from sftbeam.pipeline import cli
from sftbeam.pipeline.summary import summary_lines
from sftbeam.readers import (CorruptOutput, iter_numpy_batches,
                             load_dataset_info)

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

POSITION_LINE = re.compile(r'^ +(\d+) +(\d+) (.*?) +(\d+) (.*?) +([TF])\b')


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp('inspect') / 'out')
  run_sftbeam('run', '--config', os.path.join(ROOT, 'configs/local.yaml'),
              '--input', SAMPLE, '--output', output_dir, network=False,
              check=True)
  return output_dir


def sftbeam(capsys, *args):
  """(exit code, stdout lines, stderr) of the CLI run in this process."""
  code = cli.main(list(args))
  out, err = capsys.readouterr()
  return code, out.splitlines(), err


def positions(lines):
  """(position, input id, label id, mask) of each position line."""
  return [(int(m[1]), int(m[2]), int(m[4]), m[6] == 'T')
          for m in map(POSITION_LINE.match, lines) if m]


def test_inspect_a_record_shows_each_position(capsys, qwen):
  prompt, output = 'Sum:\n\t2  + 2', ' 4'
  code, lines, _ = sftbeam(capsys, 'inspect', '--prompt', prompt, '--output',
                           output, '--append_eos')
  assert code == 0
  expected = tokenize_prompt_and_output([prompt], [output], qwen,
                                        append_eos=True)
  shown = positions(lines)
  assert [p for p, *_ in shown] == list(range(expected['input_ids'].shape[1]))
  assert [i for _, i, _, _ in shown] == expected['input_ids'][0].tolist()
  assert [l for _, _, l, _ in shown] == expected['labels'][0].tolist()
  assert [m for *_, m in shown] == expected['response_mask'][0].tolist()
  text = '\n'.join(lines)
  for visible in ('\\n', '\\t', '␣', '<|im_end|>'):
    assert visible in text
  first = next(line for line in lines if POSITION_LINE.match(line) and
               POSITION_LINE.match(line)[6] == 'T')
  assert first.endswith('<- first output token predicted')
  assert lines[0].startswith('prompt ')


def test_inspect_a_conversation_masks_the_assistant_turns(capsys, qwen):
  messages = [{'role': 'system', 'content': 'Be brief.'},
              {'role': 'user', 'content': 'Hi'},
              {'role': 'assistant', 'content': 'Hello!'},
              {'role': 'user', 'content': '2+2?'},
              {'role': 'assistant', 'content': '4'}]
  code, lines, _ = sftbeam(capsys, 'inspect', '--messages',
                           json.dumps(messages))
  assert code == 0
  shown = positions(lines)
  ids = [i for _, i, _, _ in shown] + [shown[-1][2]]
  assert qwen.decode(ids) == qwen.apply_chat_template(messages,
                                                      tokenize=False)
  learned = [label for _, _, label, mask in shown if mask]
  assert qwen.decode(learned) == (
      'Hello!<|im_end|><think>\n\n</think>\n\n4<|im_end|>')
  code, _, error = sftbeam(capsys, 'inspect', '--messages', json.dumps(
      messages[:2]))
  assert code == 2 and 'no_assistant_turn' in error


def test_inspect_a_tool_calling_record_per_turn(capsys, qwen):
  record = {'tools': [{'type': 'function', 'function': {
      'name': 'weather', 'parameters': {'type': 'object'}}}],
            'messages': [
                {'role': 'user', 'content': 'Oslo?'},
                {'role': 'assistant', 'content': None, 'tool_calls': [
                    {'type': 'function', 'function': {
                        'name': 'weather', 'arguments': {'city': 'Oslo'}}}]},
                {'role': 'tool', 'content': '-3 C'},
                {'role': 'assistant', 'content': 'It is -3 C.'}]}
  code, lines, _ = sftbeam(capsys, 'inspect', '--messages', json.dumps(record),
                           '--chat_rows', 'per_turn')
  assert code == 0
  assert lines[0].startswith('conversation: 2 row(s), 2 assistant turn(s) '
                             'learned, 1 tool call(s), 0 with reasoning')
  assert [line.split(':')[0] for line in lines if line.startswith('row')] == [
      'row#1', 'row#3']


def test_inspect_by_id_and_by_batch_row_show_the_written_row(capsys,
                                                             finished):
  batch = next(iter_numpy_batches(finished))
  rows, width = batch['input_ids'].shape
  row = rows - 1
  example_id = batch['example_ids'][row]
  code, by_id, _ = sftbeam(capsys, 'inspect', finished, '--id', example_id)
  assert code == 0
  code, by_row, _ = sftbeam(capsys, 'inspect', finished, '--batch', '0',
                            '--row', str(row))
  assert code == 0 and by_id == by_row
  # Every position with a real input token (one more than real labels).
  real = int(batch['prompt_lengths'][row] + batch['output_lengths'][row])
  shown = positions(by_id)
  assert len(shown) == min(real, width)
  assert [i for _, i, _, _ in shown] == batch['input_ids'][row][:real].tolist()
  assert [l for _, _, l, _ in shown] == batch['labels'][row][:real].tolist()
  assert [m for *_, m in shown] == batch['response_mask'][row][:real].tolist()
  assert f'example {example_id}: prompt {batch["prompt_lengths"][row]} ' in (
      '\n'.join(by_id))
  if real < width:
    assert by_id[-1] == (f'{real:>5}..{width - 1}: padding (151643 '
                         '<|endoftext|> in input and label, mask F)')


@pytest.mark.parametrize('args, message', [
    (['--id', 'no-such-id'], "no example with id 'no-such-id'"),
    (['--batch', '999', '--row', '0'], 'there is no batch 999'),
    (['--batch', '0', '--row', '999'], 'not 999'),
    (['--id', 'x', '--batch', '0', '--row', '0'], 'needs OUTPUT_DIR with'),
    (['--batch', '0'], 'needs OUTPUT_DIR with'),
    (['--prompt', 'p'], 'needs both texts'),
])
def test_inspect_errors_are_one_line(capsys, finished, args, message):
  code, lines, err = sftbeam(capsys, 'inspect', finished, *args)
  assert code == 2 and not lines
  assert len(err.strip().splitlines()) == 1 and message in err


def test_inspect_refuses_an_unfinished_run(capsys, tmp_path):
  code, _, err = sftbeam(capsys, 'inspect', str(tmp_path), '--id', 'x')
  assert code == 2 and 'did not finish' in err


def histogram_total(lines, title):
  """Sum of the counts in the text histogram under `title`."""
  start = next(i for i, line in enumerate(lines) if line.startswith(title))
  total = 0
  for line in lines[start + 1:]:
    match = re.match(r'^ +\d+-\d+ +(\d+)', line)
    if not match:
      break
    total += int(match[1])
  return total


def test_stats_reports_lengths_buckets_and_rejections(capsys, finished):
  code, lines, _ = sftbeam(capsys, 'stats', finished)
  assert code == 0
  info = load_dataset_info(finished)
  counts = info['counts']
  text = '\n'.join(lines)
  # The summary `sftbeam run` printed, but its wall time.
  summary = summary_lines(info)
  assert lines[1:1 + len(summary)] == summary
  assert [line.split() for line in summary[:3]] == [
      ['records', 'in', str(counts['records_in'])],
      ['written', str(counts['records_written'])],
      ['rejected', str(counts['records_rejected'])]]
  for title in ('prompt tokens', 'output tokens', 'total tokens'):
    assert histogram_total(lines, title) == counts['records_written']
  prompts = np.concatenate([batch['prompt_lengths']
                            for batch in iter_numpy_batches(finished)])
  assert f'prompt tokens: min {prompts.min()}, ' in text
  start = lines.index('per bucket:') + 2
  bucket_rows = {}
  for line in lines[start:]:
    bucket, rows, batches, efficiency = line.split()
    bucket_rows[bucket] = {'records': int(rows), 'batches': int(batches)}
    assert 0 < float(efficiency) <= 1
  assert bucket_rows == counts['buckets']


def test_stats_plot_writes_a_png(capsys, finished, tmp_path):
  path = str(tmp_path / 'stats.png')
  code, lines, _ = sftbeam(capsys, 'stats', finished, '--plot', path)
  assert code == 0 and lines[-1] == f'plot: {path}'
  with open(path, 'rb') as handle:
    content = handle.read()
  assert content.startswith(b'\x89PNG') and len(content) > 20000


def test_stats_plot_without_matplotlib_is_one_clear_line(capsys, finished,
                                                         tmp_path,
                                                         monkeypatch):
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import fails
  path = tmp_path / 'stats.png'
  code, lines, err = sftbeam(capsys, 'stats', finished, '--plot', str(path))
  assert code == 2 and not lines and not path.exists()
  assert err.strip() == ("sftbeam: error: --plot needs matplotlib: pip "
                         "install 'sftbeam[plot]'")


@pytest.fixture(scope='module')
def without_rows(tmp_path_factory):
  """A finished run whose only line was rejected: no batch written."""
  work = tmp_path_factory.mktemp('without-rows')
  bad = work / 'bad.jsonl'
  bad.write_text('not json\n', encoding='utf-8')
  output_dir = str(work / 'out')
  run_sftbeam('run', '--config', os.path.join(ROOT, 'configs/local.yaml'),
              '--input', str(bad), '--output', output_dir, network=False)
  return output_dir


def test_stats_of_a_run_without_rows(capsys, tmp_path, without_rows):
  code, lines, _ = sftbeam(capsys, 'stats', without_rows, '--plot',
                           str(tmp_path / 'empty.png'))
  assert code == 0
  assert 'prompt tokens: none' in lines
  assert ['invalid_json', '1'] in [line.split() for line in lines]
  assert os.path.getsize(tmp_path / 'empty.png') > 10000


def test_inspect_a_batch_of_a_run_without_batches(capsys, without_rows):
  code, lines, err = sftbeam(capsys, 'inspect', without_rows, '--batch', '0',
                             '--row', '0')
  assert code == 2 and not lines
  assert err == (f'sftbeam: error: {without_rows} has 0 batches; there is no '
                 'batch 0\n')


def _without(key):
  def change(text):
    info = json.loads(text)
    del info[key]
    return json.dumps(info)
  return change


def _with(key, value):
  return lambda text: json.dumps(dict(json.loads(text), **{key: value}))


# (case, the file's new text from its text, part of the one-line error)
MALFORMED_INFOS = [
    ('a-list', lambda text: '[]', 'it holds [], not a JSON object'),
    ('cut', lambda text: text[:len(text) // 2], 'is not readable JSON'),
    ('not-utf8', lambda text: '\udcff' + text, 'is not readable JSON'),
    ('no-counts', _without('counts'), '"counts" must be the counts of'),
    ('counts-a-number', _with('counts', 3), '"counts" must be'),
    ('no-tokenizer', _without('tokenizer'), '"tokenizer" must be a mapping'),
    ('empty-boundaries', _with('bucket_boundaries', []),
     '"bucket_boundaries" must be a non-empty'),
    ('unknown-layout', _with('layout', 'rolled'), '"layout" must be one of'),
    ('deep-nesting', lambda text: '{"a": ' + '[' * 100000 + ']' * 100000 + '}',
     'JSON nested too deeply'),
]


@pytest.mark.parametrize('change, message', [case[1:] for case in
                                             MALFORMED_INFOS],
                         ids=[case[0] for case in MALFORMED_INFOS])
def test_a_malformed_dataset_info_is_one_line(capsys, finished, tmp_path,
                                               change, message):
  """stats and inspect exit 2 with one line; the readers raise
  CorruptOutput saying the same."""
  output_dir = str(shutil.copytree(finished, tmp_path / 'out'))
  path = os.path.join(output_dir, 'dataset_info.json')
  with open(path, encoding='utf-8') as handle:
    text = handle.read()
  with open(path, 'w', encoding='utf-8', errors='surrogateescape') as handle:
    handle.write(change(text))
  for command in (['stats', output_dir],
                  ['inspect', output_dir, '--batch', '0', '--row', '0']):
    code, lines, err = sftbeam(capsys, *command)
    assert code == 2 and not lines
    assert err.startswith(f'sftbeam: error: {path} ') and message in err
    assert len(err.splitlines()) == 1 and len(err) < 700
  with pytest.raises(CorruptOutput, match=re.escape(message)):
    next(iter_numpy_batches(output_dir))


def test_stats_refuses_rows_longer_than_the_listed_buckets(capsys, finished,
                                                           tmp_path):
  output_dir = str(shutil.copytree(finished, tmp_path / 'out'))
  rewrite = _with('bucket_boundaries', [16])
  path = os.path.join(output_dir, 'dataset_info.json')
  with open(path, encoding='utf-8') as handle:
    text = rewrite(handle.read())
  with open(path, 'w', encoding='utf-8') as handle:
    handle.write(text)
  code, lines, err = sftbeam(capsys, 'stats', output_dir)
  assert code == 2 and not lines
  assert 'more than the largest bucket boundary in dataset_info.json (16)' in (
      err)


def test_the_installed_command_runs_inspect(tmp_path):
  result = run_sftbeam('inspect', '--prompt', 'Hi', '--output', 'there',
                       network=False, check=True)
  assert positions(result.stdout.splitlines())

