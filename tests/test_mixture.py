"""Mixtures and the validation split without a pipeline: the hash, the
weight arithmetic, choosing exactly round(F * n) records (ties included),
per-source counts that reconcile, and a mixture file's errors (exit 2, one
line, before any work). End-to-end runs: tests/test_mixture_end_to_end.py.
"""

import collections
import math
import os
import random

import numpy as np
import pytest

from sftbeam.pipeline import cli
from sftbeam.pipeline.mixture import MixtureError, load_mixture
from sftbeam.transforms import stats
from sftbeam.transforms.mixture import (Boundary, Source, copy_count, copy_id,
                                        find_boundary, goes_to_validation,
                                        split_key, token_counts, unit_hash,
                                        validation_count)
from sftbeam.transforms.parse import FieldNames
from conftest import dofn_outputs
from sftbeam.transforms.records import LineChunk, TokenChunk
from sftbeam.transforms.sources import ParseAndTokenizeSources
from sftbeam.transforms.tokenize import TokenizeSettings
from sftbeam.transforms.tokenizer_source import EMBEDDED
from test_cli_errors import assert_one_line_error


def test_unit_hash_is_stable_and_in_unit_interval():
  value = unit_hash('copy', 0, 'gsm8k', '17')
  assert 0 <= value < 1
  # Not Python's hash(): the same in another process, on any machine.
  assert value == unit_hash('copy', 0, 'gsm8k', '17')
  others = {unit_hash('copy', seed, name, record)
            for seed, name, record in [(1, 'gsm8k', '17'), (0, 'alpaca', '17'),
                                       (0, 'gsm8k', '18'),
                                       (0, 'gsm8k', '1\x007')]}
  assert value not in others and len(others) == 4
  assert unit_hash('split', 0, 'gsm8k', '17') != value


def test_unit_hash_is_roughly_uniform():
  values = [unit_hash('split', 3, 'src', str(i)) for i in range(20000)]
  counts = np.histogram(values, bins=10, range=(0, 1))[0]
  assert counts.min() > 1800 and counts.max() < 2200


@pytest.mark.parametrize('weight', [0, 0.25, 1, 1.5, 2, 2.75])
def test_copy_count_is_whole_part_plus_one_below_the_fraction(weight):
  ids = [str(i) for i in range(4000)]
  whole, fraction = math.floor(weight), weight - math.floor(weight)
  counts = [copy_count(weight, 0, 'src', record) for record in ids]
  extra = sum(unit_hash('copy', 0, 'src', record) < fraction
              for record in ids)
  assert sum(counts) == whole * len(ids) + extra
  assert set(counts) <= {whole, whole + 1}
  if fraction:
    assert abs(extra / len(ids) - fraction) < 0.03


def test_copy_ids_number_the_extra_copies():
  assert [copy_id('gsm8k:7', copy) for copy in (1, 2, 3)] == [
      'gsm8k:7', 'gsm8k:7~2', 'gsm8k:7~3']


@pytest.mark.parametrize('fraction, records, expected', [
    (0.1, 300, 30), (0.1, 25, 2), (0.5, 5, 2), (0.5, 7, 4), (0.0, 9, 0),
    (0.99, 1, 1), (0.3, 0, 0)])
def test_validation_count_is_pythons_round(fraction, records, expected):
  assert validation_count(fraction, records) == expected


def _chunk(ids, sequences):
  return TokenChunk.from_sequences(
      ids, sequences, [[False] + [True] * (len(seq) - 1) for seq in sequences])


SOURCE = Source('src', ('x',), 1.0, FieldNames(), 'src:')


def _keys(chunk):
  return [split_key(SOURCE, 0, chunk, i) for i in range(len(chunk))]


def _split(keys, fraction):
  """How many records go to validation, and how many are left tied."""
  boundary = find_boundary(keys, fraction)
  decided = collections.Counter(goes_to_validation(key, boundary)
                                for key in keys)
  return boundary, decided


@pytest.mark.parametrize('fraction', [0.0, 0.05, 0.1, 0.33, 0.5, 0.9])
def test_exactly_round_f_n_records_go_to_validation(fraction):
  chunk = _chunk([f'src:{i}' for i in range(201)],
                 [[i, i + 1, i + 2] for i in range(201)])
  boundary, decided = _split(_keys(chunk), fraction)
  assert decided[True] == validation_count(fraction, 201)
  assert decided[None] == 0 and (boundary is None) == (decided[True] == 0)


def test_records_sharing_an_id_are_told_apart_by_their_tokens():
  # Every record has id "same": only their tokens order them.
  chunk = _chunk(['src:same'] * 10, [[i, 7] for i in range(10)])
  keys = _keys(chunk)
  assert len(set(keys)) == 10
  _, decided = _split(keys, 0.3)
  assert decided[True] == 3 and decided[None] == 0


def test_alike_records_at_the_boundary_are_left_to_settle():
  # Four identical records (same id, same tokens) and six others: where
  # the boundary falls inside the identical ones, some must go and some
  # stay, which only a group of them can settle.
  chunk = _chunk(['src:dup'] * 4 + [f'src:{i}' for i in range(6)],
                 [[1, 2]] * 4 + [[i, 9] for i in range(6)])
  keys = _keys(chunk)
  for fraction in np.arange(0.05, 1.0, 0.1):
    boundary, decided = _split(keys, fraction)
    wanted = validation_count(fraction, 10)
    tied = decided[None]
    assert decided[True] <= wanted <= decided[True] + tied
    if tied:
      assert boundary.alike == tied == 4
      assert decided[True] + boundary.taken == wanted


def test_the_choice_does_not_depend_on_order():
  chunk = _chunk([f'src:{i}' for i in range(50)],
                 [[i, 1] for i in range(50)])
  keys = _keys(chunk)
  shuffled = list(keys)
  random.Random(4).shuffle(shuffled)
  assert find_boundary(keys, 0.2) == find_boundary(shuffled, 0.2)


def test_goes_to_validation_by_boundary():
  boundary = Boundary((0.5, 'b'), 1, 2)
  assert goes_to_validation((0.4, 'z'), boundary) is True
  assert goes_to_validation((0.5, 'c'), boundary) is False
  assert goes_to_validation((0.5, 'b'), boundary) is None
  assert goes_to_validation((0.5, 'b'), boundary._replace(alike=1)) is True
  assert goes_to_validation((0.0, 'a'), None) is False


def test_token_counts_are_those_of_the_rows():
  chunk = TokenChunk.from_sequences(
      ['a', 'b'], [[1, 2, 3, 4], [5, 6]],
      [[False, False, True, True], [True, True]])
  # Rows are length - 1; learned: response_mask = supervised[1:].
  assert token_counts(chunk) == (3 + 1, 2 + 1)


def test_per_source_counts_reconcile():
  summed = collections.Counter()
  for part in (
      stats.per_source({'lines': 10, 'blank_lines': 1, 'rejected/x': 2},
                       'a'),
      stats.split_stats('a', 'train', records=5, examples=9, dropped=0,
                        copies=4, tokens=90, learned_tokens=40),
      stats.sent_to_validation(stats.split_stats(
          'a', 'validation', records=2, examples=2, dropped=0, copies=0,
          tokens=20, learned_tokens=8)),
      {'records_written': 9}):
    summed.update(part)
  counts = stats.summarize(dict(summed))
  source = counts['by_source']['a']
  assert (source['records_in'], source['records_written'],
          source['records_validation'], source['copies'],
          source['records_rejected'], source['tokens']) == (9, 5, 2, 4, 2, 90)
  assert source['reconciled'] and counts['reconciled']
  summed['source/a/lines'] += 1
  assert not stats.summarize(dict(summed))['by_source']['a']['reconciled']


def _write(tmp_path, text):
  path = tmp_path / 'mix.yaml'
  path.write_text(text)
  return str(path)


def test_a_mixture_file_gives_its_sources(tmp_path):
  path = _write(tmp_path, (
      'sources:\n'
      '  - {name: gsm8k, input: g/*.jsonl, weight: 2}\n'
      '  - {name: alpaca, input: [a.parquet, b.jsonl], weight: 0.5,\n'
      '     prompt_field: instruction}\n'
      '  - {name: chat-1.x, input: c.jsonl}\n'))
  gsm8k, alpaca, chat = load_mixture(path, FieldNames('p', 'o', 'i'))
  assert gsm8k == Source('gsm8k', ('g/*.jsonl',), 2.0,
                         FieldNames('p', 'o', 'i'), 'gsm8k:')
  assert alpaca.input == ('a.parquet', 'b.jsonl') and alpaca.weight == 0.5
  assert alpaca.fields == FieldNames('instruction', 'o', 'i')
  assert chat.weight == 1.0 and chat.id_prefix == 'chat-1.x:'


@pytest.mark.parametrize('text, message', [
    ('sources: [\n', 'is not valid YAML'),
    ('- 1\n', 'must hold a mapping with one key, "sources"'),
    ('sources: []\n', '"sources" must be a non-empty list'),
    ('sources: [{name: a, input: x}]\nextra: 1\n', 'one key, "sources"'),
    ('sources: [{name: a, input: x, wieght: 2}]\n', 'unknown key "wieght"'),
    ('sources: [{name: a, input: x, weight: -1}]\n',
     'weight must be a number >= 0; got -1'),
    ('sources: [{name: a, input: x, weight: .nan}]\n', 'weight must be'),
    ('sources: [{name: a, input: x, weight: "2"}]\n', 'weight must be'),
    ('sources: [{name: a, input: x}, {name: a, input: y}]\n',
     'two sources are named "a"'),
    ('sources: [{name: "a:b", input: x}]\n', 'no ":", "~" or "/"'),
    ('sources: [{name: "a~b", input: x}]\n', 'name must be'),
    ('sources: [{name: "../a", input: x}]\n', 'name must be'),
    ('sources: [{name: a}]\n', 'input must be a glob or a non-empty list'),
    ('sources: [{name: a, input: []}]\n', 'input must be a glob'),
    ('sources: [{name: a, input: x, id_field: 3}]\n',
     'must be non-empty strings'),
])
def test_a_bad_mixture_file_is_one_line_exit_2(tmp_path, capsys, text,
                                               message):
  output = tmp_path / 'out'
  code = cli.main(['run', '--mixture', _write(tmp_path, text), '--output',
                   str(output)])
  captured = capsys.readouterr()
  assert_one_line_error(code, captured.out, captured.err, message)
  assert not os.path.exists(output)
  with pytest.raises(MixtureError, match=message.split(';')[0][:20]):
    load_mixture(_write(tmp_path, text), FieldNames())


@pytest.mark.parametrize('argv, message', [
    (['--input', 'x.jsonl'], '--mixture and --input both set'),
    (['--streaming', '--input_topic', 'projects/my-project/topics/sft'],
     '--mixture is for batch runs'),
])
def test_mixture_refusals(tmp_path, capsys, argv, message):
  path = _write(tmp_path, 'sources: [{name: a, input: x}]\n')
  code = cli.main(['run', '--mixture', path, '--output',
                   str(tmp_path / 'out'), *argv])
  captured = capsys.readouterr()
  assert_one_line_error(code, captured.out, captured.err, message)


@pytest.mark.parametrize('argv, message', [
    (['--validation_fraction', '1'],
     'validation_fraction must be at least 0 and below 1'),
    (['--validation_fraction', '0.1', '--streaming', '--input_topic',
      'projects/my-project/topics/sft'], '--validation_fraction is for batch runs'),
    (['--validation_fraction', '0.1', '--chat_rows', 'per_turn'],
     'chat_rows per_turn with validation_fraction'),
    (['--seed', '-1'], 'seed must be a non-negative integer'),
])
def test_split_option_refusals(tmp_path, capsys, argv, message):
  if '--streaming' not in argv:
    argv = ['--input', 'x.jsonl', *argv]
  code = cli.main(['run', '--output', str(tmp_path / 'out'), *argv])
  captured = capsys.readouterr()
  assert_one_line_error(code, captured.out, captured.err, message)


def test_a_missing_mixture_input_is_refused_before_any_work(tmp_path, capsys):
  path = _write(tmp_path, f'sources: [{{name: a, input: {tmp_path}/no*.jsonl}}]\n')
  code = cli.main(['run', '--mixture', path, '--output',
                   str(tmp_path / 'out')])
  captured = capsys.readouterr()
  assert_one_line_error(code, captured.out, captured.err, 'matches no file')



def test_a_file_of_two_sources_is_refused_before_any_work(tmp_path, capsys):
  """A file both sources' globs match would be read twice under two
  names: refused at start, naming it and both sources."""
  (tmp_path / 'both.jsonl').write_text('{"prompt": "p", "output": "o"}\n')
  path = _write(tmp_path, f'sources: [{{name: a, input: {tmp_path}/*.jsonl}}, '
                f'{{name: b, input: {tmp_path}/both.jsonl}}]\n')
  code = cli.main(['run', '--mixture', path, '--output',
                   str(tmp_path / 'out')])
  captured = capsys.readouterr()
  assert_one_line_error(code, captured.out, captured.err,
                        'is an input of two sources, a and b')
  assert not (tmp_path / 'out').exists()


def test_each_chunk_is_parsed_with_its_sources_fields(tmp_path):
  """ParseAndTokenizeSources, directly: a chunk of source b's file is read
  with b's field names and its ids get b's prefix; a rejection counts as
  b's."""
  (tmp_path / 'a.jsonl').write_text('')
  (tmp_path / 'b.jsonl').write_text('')
  sources = [Source('a', (str(tmp_path / 'a.jsonl'),), id_prefix='a:'),
             Source('b', (str(tmp_path / 'b.jsonl'),),
                    fields=FieldNames('q', 'r', 'key'), id_prefix='b:')]
  step = ParseAndTokenizeSources(
      sources, TokenizeSettings(tokenizer=EMBEDDED, max_seq_len=64), 1000,
      'auto')
  step.setup()
  chunk = LineChunk(str(tmp_path / 'b.jsonl'), [
      (1, b'{"q": "hi", "r": "there", "key": "x"}', 100),
      (2, b'{"prompt": "p", "output": "o"}', 100)])
  main, tagged = dofn_outputs(step, chunk)
  [(name, tokens)] = main
  assert name == 'b' and tokens.example_ids == ['b:x']
  [rejected] = tagged[ParseAndTokenizeSources.REJECTED]
  stats = collections.Counter()
  for part in tagged[ParseAndTokenizeSources.STATS]:
    stats.update(part)
  assert stats[f'source/b/rejected/{rejected.reason}'] == 1
  assert not [key for key in stats if key.startswith('source/a/')]
