"""Mixtures and the validation split, end to end: the real tokenizer, the
real runner, the written shards read back.

Held-out sources built from ../shared/data (gsm8k_test, the end of
alpaca_5000, gsm8k_chat): weights give k*n + count(hash < f) examples,
splits have exactly round(F * n) records per source and are disjoint,
shuffling the input lines and files changes no row and no split
membership, and every source's counts reconcile; in both layouts, with a
Parquet source, a chat source, and the Dataflow dry run.
"""

import contextlib
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, SAMPLE, run_sftbeam, shared_data
from sftbeam.pipeline.readers import (IncompleteOutput, iter_numpy_batches,
                                      load_dataset_info, torch_dataset)
from sftbeam.transforms import schema
from sftbeam.transforms.mixture import (copy_count, copy_id, unit_hash,
                                        validation_count)
from sftbeam.transforms.parse import content_id

pytestmark = pytest.mark.slow

SEED = 7
FRACTION = 0.1
# name: (weight, records that are not rejected)
WEIGHTS = {'gsm8k': 2.5, 'alpaca': 1.0, 'alpaca_pq': 0.5, 'skipped': 0.0,
           'dups': 1.0}


def _lines(name, start, count):
  with open(shared_data(name), encoding='utf-8') as handle:
    return [json.loads(line) for line in handle][start:start + count]


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  """{name: (records that are not rejected, as dicts; input files)} of
  the held-out sources, their files written under a temp directory."""
  base = tmp_path_factory.mktemp('mixture-input')
  gsm8k = [dict(record, id=f'q{i}') for i, record in
           enumerate(_lines('gsm8k_test.jsonl', 0, 300))]
  # alpaca shares gsm8k's ids: the source prefix keeps them apart.
  alpaca = [dict(record, id=f'q{i}') for i, record in
            enumerate(_lines('alpaca_5000.jsonl', 4600, 250))
            if record['output'].strip()]
  parquet_rows = [record for record in _lines('alpaca_5000.jsonl', 4300, 200)
                  if record['output'].strip()]
  skipped = _lines('gsm8k_test.jsonl', 1000, 40)
  dups = [{'id': 'same', 'prompt': 'Say yes.', 'output': 'yes'}] * 10
  files = {}
  for name, records in (('gsm8k', gsm8k), ('alpaca', alpaca), ('skipped', skipped),
                        ('dups', dups)):
    path = base / f'{name}.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    files[name] = [str(path)]
  # A bad line in alpaca: rejected, counted, not in any split.
  with open(files['alpaca'][0], 'a', encoding='utf-8') as handle:
    handle.write('{"id": "bad", "prompt": "no output"}\n')
  table = pa.table({'instruction': [r['prompt'] for r in parquet_rows],
                    'response': [r['output'] for r in parquet_rows]})
  pq.write_table(table, base / 'alpaca.parquet', row_group_size=64)
  files['alpaca_pq'] = [str(base / 'alpaca.parquet')]
  return {'gsm8k': (gsm8k, files['gsm8k']),
          'alpaca': (alpaca, files['alpaca']),
          'alpaca_pq': ([{'prompt': r['prompt'], 'output': r['output']}
                         for r in parquet_rows], files['alpaca_pq']),
          'skipped': (skipped, files['skipped']), 'dups': (dups, files['dups'])}


def _mixture_file(path, files: dict) -> str:
  lines = ['sources:']
  for name, inputs in files.items():
    extra = (', prompt_field: instruction, output_field: response'
             if name == 'alpaca_pq' else '')
    lines.append(f'  - {{name: {name}, input: {json.dumps(inputs)}, '
                 f'weight: {WEIGHTS[name]}{extra}}}')
  path.write_text('\n'.join(lines) + '\n')
  return str(path)


def _run(tmp_path, files, *flags):
  output = tmp_path / 'out'
  run_sftbeam('run', '--mixture', _mixture_file(tmp_path / 'mix.yaml', files),
              '--output', str(output), '--validation_fraction', str(FRACTION),
              '--seed', str(SEED), '--num_shards', '2', *flags, check=True)
  return str(output)


@pytest.fixture(scope='module')
def padded_run(sources, tmp_path_factory):
  return _run(tmp_path_factory.mktemp('padded'),
              {name: files for name, (_, files) in sources.items()})


def _record_id(name, record):
  if 'id' in record:
    return str(record['id'])
  return content_id(record['prompt'], record['output'])


def _ids(output_dir) -> list:
  return [example_id for batch in iter_numpy_batches(output_dir)
          for example_id in batch[schema.ID_FEATURE]]


def _expected_split(sources):
  """{name: (validation record ids, {train example id})} by the rules."""
  expected = {}
  for name, (records, _) in sources.items():
    ids = sorted({_record_id(name, r) for r in records})
    weight = WEIGHTS[name]
    wanted = validation_count(FRACTION, len(records)) if weight else 0
    by_hash = sorted(ids, key=lambda i: unit_hash('split', SEED, name, i))
    validation = set(by_hash[:wanted]) if name != 'dups' else {'same'}
    train = {copy_id(f'{name}:{i}', copy)
             for i in ids if i not in validation or name == 'dups'
             for copy in range(1, copy_count(weight, SEED, name, i) + 1)}
    expected[name] = (validation, train, wanted)
  return expected


def _rows(output_dir) -> dict:
  """{example id: sorted rows (input_ids, labels, response_mask)}; alike
  records share an id."""
  rows = {}
  for batch in iter_numpy_batches(output_dir):
    for index, example_id in enumerate(batch[schema.ID_FEATURE]):
      rows.setdefault(example_id, []).append(tuple(
          tuple(batch[name][index].tolist())
          for name in ('input_ids', 'labels', 'response_mask')))
  return {example_id: sorted(found) for example_id, found in rows.items()}


def _by_source(ids):
  found = {}
  for example_id in ids:
    name, rest = example_id.split(':', 1)
    found.setdefault(name, []).append(rest)
  return found


def test_splits_have_exactly_round_f_n_records_of_the_smallest_hashes(
    padded_run, sources):
  validation = _by_source(_ids(os.path.join(padded_run, 'validation')))
  for name, (expected, _, wanted) in _expected_split(sources).items():
    assert len(validation.get(name, [])) == wanted, name
    if name != 'dups':
      assert set(validation.get(name, [])) == expected, name


def test_weights_give_k_n_plus_the_hashes_below_f(padded_run, sources):
  train = _by_source(_ids(os.path.join(padded_run, 'train')))
  expected = _expected_split(sources)
  for name, (_, wanted_train, wanted) in expected.items():
    found = [f'{name}:{rest}' for rest in train.get(name, [])]
    if name == 'dups':  # ten alike records: one went to validation
      assert len(found) == 9
      continue
    assert sorted(found) == sorted(wanted_train), name
  assert 'skipped' not in train and expected['skipped'][2] == 0


def test_splits_are_disjoint_and_copies_equal_their_record(padded_run):
  train_ids = set(_ids(os.path.join(padded_run, 'train')))
  validation_ids = _ids(os.path.join(padded_run, 'validation'))
  bases = {example_id.split('~')[0] for example_id in train_ids}
  shared = bases & set(validation_ids) - {'dups:same'}
  assert not shared
  rows = {}
  for example_id, found in _rows(os.path.join(padded_run, 'train')).items():
    rows.setdefault(example_id.split('~')[0], set()).update(found)
  assert all(len(variants) == 1 for variants in rows.values())


def test_every_source_reconciles(padded_run, sources):
  train = load_dataset_info(os.path.join(padded_run, 'train'))
  validation = load_dataset_info(os.path.join(padded_run, 'validation'))
  by_source = train['counts']['by_source']
  expected = _expected_split(sources)
  for name, (records, _) in sources.items():
    counts = by_source[name]
    rejected = 1 if name == 'alpaca' else 0
    assert counts['reconciled'], name
    assert counts['records_in'] == len(records) + rejected
    assert counts['records_rejected'] == rejected
    assert counts['records_validation'] == expected[name][2]
    assert counts['examples_written'] == (
        9 if name == 'dups' else len(expected[name][1]))
    assert validation['counts']['by_source'].get(name, {}).get(
        'records_written', 0) == expected[name][2]
  assert train['counts']['reconciled'] and validation['counts']['reconciled']
  for info in (train, validation):
    counts = info['counts']
    assert sum(s['tokens'] for s in counts['by_source'].values()) == (
        counts['real_tokens'])
    assert sum(s['learned_tokens'] for s in counts['by_source'].values()) == (
        counts['supervised_tokens'])
  # Rejected records are written once, in train.
  assert train['rejected_files'] and not validation['rejected_files']
  assert train['split'] == 'train' and [s['name'] for s in train['sources']] \
      == list(sources)


def test_readers_name_the_splits(padded_run):
  with pytest.raises(IncompleteOutput, match='validation split: read .*train'):
    load_dataset_info(padded_run)
  result = run_sftbeam('stats', os.path.join(padded_run, 'train'), check=True)
  assert 'alpaca_pq' in result.stdout and 'learned' in result.stdout
  copy = next(example_id for example_id in _ids(os.path.join(padded_run,
                                                             'train'))
              if example_id.startswith('gsm8k:') and example_id.endswith('~3'))
  result = run_sftbeam('inspect', os.path.join(padded_run, 'train'), '--id',
                       copy, check=True)
  assert f'example {copy}:' in result.stdout
  dataset = torch_dataset(os.path.join(padded_run, 'validation'))
  assert sum(len(batch['input_ids']) for batch in dataset) == len(
      _ids(os.path.join(padded_run, 'validation')))


def test_shuffled_lines_and_files_change_nothing(padded_run, sources,
                                                 tmp_path):
  files = {}
  rng = random.Random(1)
  for name, (_, paths) in sources.items():
    if name == 'alpaca_pq':
      table = pq.read_table(paths[0])
      order = list(range(table.num_rows))
      rng.shuffle(order)
      path = tmp_path / 'shuffled.parquet'
      pq.write_table(table.take(order), path, row_group_size=50)
      files[name] = [str(path)]
      continue
    with open(paths[0], encoding='utf-8') as handle:
      lines = handle.readlines()
    rng.shuffle(lines)
    # Split over two files, given in reverse order.
    halves = [tmp_path / f'{name}-{part}.jsonl' for part in (0, 1)]
    halves[0].write_text(''.join(lines[::2]))
    halves[1].write_text(''.join(lines[1::2]))
    files[name] = [str(halves[1]), str(halves[0])]
  # Other batches, and two worker processes instead of one.
  shuffled = _run(tmp_path, files, '--batch_size', '7',
                  '--direct_num_workers', '2', '--direct_running_mode',
                  'multi_processing')
  for split in ('train', 'validation'):
    assert _rows(os.path.join(shuffled, split)) == _rows(
        os.path.join(padded_run, split)), split


def test_packed_layout_splits_and_weighs_alike(padded_run, sources,
                                                tmp_path):
  packed = _run(tmp_path, {name: files for name, (_, files)
                           in sources.items()}, '--layout', 'packed',
                '--pack_length', '1024')
  for split in ('train', 'validation'):
    assert sorted(_ids(os.path.join(packed, split))) == sorted(
        _ids(os.path.join(padded_run, split)))
    counts = load_dataset_info(os.path.join(packed, split))['counts']
    assert all(s['reconciled'] for s in counts['by_source'].values())
    assert sum(s['tokens'] for s in counts['by_source'].values()) == (
        counts['real_tokens'])


def test_a_chat_source_beside_a_prompt_output_source(tmp_path):
  chat = tmp_path / 'chat.jsonl'
  chat.write_text(''.join(
      json.dumps(record) + '\n'
      for record in _lines('gsm8k_chat.jsonl', 3000, 120)))
  plain = tmp_path / 'plain.jsonl'
  plain.write_text(''.join(
      json.dumps(record) + '\n'
      for record in _lines('gsm8k_test.jsonl', 500, 80)))
  mix = tmp_path / 'mix.yaml'
  mix.write_text(f'sources:\n  - {{name: chat, input: {chat}, weight: 2}}\n'
                 f'  - {{name: plain, input: {plain}}}\n')
  output = tmp_path / 'out'
  run_sftbeam('run', '--mixture', str(mix), '--output', str(output),
              '--validation_fraction', '0.25', check=True)
  train = load_dataset_info(output / 'train')['counts']
  validation = _by_source(_ids(str(output / 'validation')))
  assert len(validation['chat']) == 30 and len(validation['plain']) == 20
  assert train['by_source']['chat']['examples_written'] == 180
  assert train['by_source']['chat']['copies'] == 90
  assert train['chat_records'] == 120 and train['reconciled']


def test_a_mixture_without_a_split_writes_one_dataset(sources, tmp_path):
  mix = _mixture_file(tmp_path / 'mix.yaml', {
      name: files for name, (_, files) in sources.items()
      if name in ('gsm8k', 'alpaca')})
  output = tmp_path / 'out'
  result = run_sftbeam('run', '--mixture', mix, '--output', str(output),
                       check=True)
  counts = load_dataset_info(output)['counts']
  assert counts['records_validation'] == 0 and counts['reconciled']
  assert set(counts['by_source']) == {'gsm8k', 'alpaca'}
  assert 'extra copies written' in result.stdout


def test_the_dataflow_dry_run_builds_the_mixture_job(tmp_path):
  mix = tmp_path / 'mix.yaml'
  mix.write_text('sources:\n'
                 '  - {name: gsm8k, input: "gs://my-bucket/g/*.jsonl", '
                 'weight: 2}\n'
                 '  - {name: alpaca, input: gs://my-bucket/a.parquet}\n')
  with contextlib.chdir(ROOT):  # configs/dataflow.yaml has ./setup.py
    result = run_sftbeam(
        'run', '--config', 'configs/dataflow.yaml', '--mixture', str(mix),
        '--validation_fraction', '0.05', '--output', 'gs://my-bucket/sft/m',
        '--project', 'my-project', '--region', 'europe-west4',
        '--temp_location', 'gs://my-bucket/tmp', '--staging_location',
        'gs://my-bucket/staging', '--dry_run=True', network=False,
        timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  steps = json.loads(result.stdout[result.stdout.index('{'):])['steps']
  for step in ('ReadInput', 'ParseAndTokenizeSources', 'SplitAndCopy',
               'Write[train]', 'Write[validation]'):
    assert step in steps


def test_a_split_of_plain_input_keeps_its_ids(tmp_path):
  plain, split = tmp_path / 'plain', tmp_path / 'split'
  run_sftbeam('run', '--input', SAMPLE, '--output', str(plain), check=True)
  run_sftbeam('run', '--input', SAMPLE, '--output', str(split),
              '--validation_fraction', '0.2', check=True)
  written = load_dataset_info(plain)['counts']['records_written']
  train, validation = (_ids(str(split / name))
                       for name in ('train', 'validation'))
  assert len(validation) == validation_count(0.2, written)
  assert sorted(train + validation) == sorted(_ids(str(plain)))
  counts = load_dataset_info(split / 'train')['counts']
  assert counts['rejected_by_reason'] == load_dataset_info(plain)['counts'][
      'rejected_by_reason'] and counts['reconciled']
  assert list(counts['by_source']) == ['input']


def test_overwrite_replaces_a_split_run_and_is_replaced_by_one(tmp_path):
  output = tmp_path / 'out'
  split_flags = ('--validation_fraction', '0.2')
  run_sftbeam('run', '--input', SAMPLE, '--output', str(output),
              *split_flags, check=True)
  assert sorted(os.listdir(output)) == [
      '.sftbeam-manifest.json', 'train', 'validation']
  assert 'temp' not in os.listdir(output / 'train')
  run_sftbeam('run', '--input', SAMPLE, '--output', str(output),
              '--overwrite', check=True)
  assert not {'train', 'validation'} & set(os.listdir(output))
  load_dataset_info(output)
  run_sftbeam('run', '--input', SAMPLE, '--output', str(output), '--overwrite',
              *split_flags, check=True)
  assert not [name for name in os.listdir(output)
              if name.startswith(('batches-', 'dataset_info'))]
  load_dataset_info(output / 'validation')


def test_a_train_directory_no_run_recorded_is_never_replaced(tmp_path):
  output = tmp_path / 'out'
  (output / 'train').mkdir(parents=True)
  (output / 'train' / 'mine.txt').write_text('keep me')
  result = run_sftbeam('run', '--input', SAMPLE, '--output', str(output),
                       '--overwrite', '--validation_fraction', '0.2')
  assert result.returncode == 2 and 'which no sftbeam run recorded' in (
      result.stderr)
  assert (output / 'train' / 'mine.txt').read_text() == 'keep me'
