"""Benchmark: sftbeam against the raw tokenizer and the usual alternatives.

Run from the project root (the `datasets` contender needs the benchmark
extra, `.venv/bin/pip install -c requirements-lock.txt -e '.[benchmark]'`,
and is skipped with a message without it):

  .venv/bin/python benchmarks/run_benchmark.py --records 100000
  .venv/bin/python benchmarks/run_benchmark.py --records 100000 --memory-check

Input: gsm8k_train + gsm8k_test + alpaca_5000 from ../shared/data, in that
order, cycled to --records records, each given a unique "id"; written once to
WORKDIR/input-N.jsonl and reused by every contender and later runs. The chat
contender's input: gsm8k_chat.jsonl's conversations cycled to --records
records with unique ids (WORKDIR/chat-input-N.jsonl, written once too).

Contenders, each run in its own subprocess on the same input (--contenders
picks any of them; all by default), each defined in its module under
benchmarks/contenders/, whose docstring says what it runs and times:
  raw       the tokenizer limit: the Rust backend (contenders/raw.py)
  raw-fast  the limit with the fast backend, fastokens (contenders/raw_fast.py)
  sftbeam, sftbeam-1w, sftbeam-hf, sftbeam-packed, sftbeam-chat
            the real CLI, default options but one (contenders/sftbeam_cli.py);
            all are timed as sftbeam
  loop      a plain Python loop implementing the spec (contenders/loop.py)
  loop-fast the loop's output from the fastest single-process loop we could
            write (contenders/loop_fast.py)
  datasets  HuggingFace `datasets`, then the loop's padding and writing
            (contenders/hf_datasets.py)

The loop, loop-fast and datasets contenders implement the spec on purpose,
apart from transforms/, so that they are what a user would write without
sftbeam. The workers import sftbeam (and with it Apache Beam) only to load
the HuggingFace tokenizer: raw-fast and loop-fast do not.

This module is the harness: it builds the input, runs each contender in a
measured child process (benchmarks/measure.py), and reports.

Measures per contender:
  records/s     input records / timed seconds
  records/s (process)   input records / the process's wall seconds
  tokens/s      real tokens / timed seconds; real tokens = the sum over
                records of prompt + output - 1 (the model input length L, the
                tokens that carry a label), over the records the contender
                wrote (raw: over every record it tokenized)
  x raw         records/s divided by the raw tokenizer's records/s (not
                for sftbeam-chat)
  pad eff       real tokens / stored tokens (rows x width of every batch);
                sftbeam's from its dataset_info.json
  peak RSS      of the contender's whole process tree: the larger of (a) the
                peak of the summed RSS of the process and all its descendants,
                polled from /proc every 0.5 s (counts pages shared between
                forked workers once per process), and (b) the exact peak of
                its largest single process (wait4's ru_maxrss)
  output MiB    the bytes the contender wrote (its output directory): on a
                virtual machine that hands freed memory back to its host,
                every new page of the page cache costs a fault in the host
                (docs/performance.md, "What this machine charges"), so
                writing twice the bytes can cost seconds
  timed s, process s   see above
  load          the machine's 1-minute load average when the contender
                started: above the core count, other work shared the CPUs
                (then prefer --repeat N: N rounds of every contender,
                each contender's fastest run reported, all listed in the
                JSON)
The JSON also has each contender's CPU seconds (cpu_s_process, user +
system of its whole process tree) and the environment variables that set
thread counts.

It also computes, offline from the token lengths, the padding efficiency of
other schemes with batch 32: every batch padded to the global maximum, each
batch padded to its own maximum in input order (the loop), power-of-two
buckets, and the default boundaries (pipeline.options.DEFAULT_BOUNDARIES)
padded to the bucket and to the longest row. These use the records sftbeam
keeps (it rejects the two Alpaca records with an empty output), so the loop's
own figure, which keeps them, can differ from "batch_max_input_order" in the
third digit.

--memory-check runs only sftbeam, at --records and at 10x --records, and
reports both peak RSS figures and their ratio (target: within 1.25).

After the table, a "ratios" block: records/s of sftbeam over sftbeam-hf,
over loop-fast and over datasets, and of sftbeam-packed over sftbeam, each
from the timed seconds and from the whole process's (the pairs whose
contenders both ran).

Prints the table, the ratios and the padding schemes, and writes everything
as JSON (--json, default WORKDIR/results.json).
"""

import argparse
import collections
import importlib.metadata
import itertools
import json
import os
import platform
import shutil
import sys

import numpy as np

import measure
from contenders import (hf_datasets, loop, loop_fast, raw, raw_fast,
                        sftbeam_cli)
from contenders.common import SPEC_BATCH, hf_tokenizer, read_jsonl

# sftbeam is imported where it is used: it brings Apache Beam (seconds of
# imports), which the loop-fast and raw-fast processes must not pay.

ROOT = measure.ROOT
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
SOURCE_FILES = ('gsm8k_train.jsonl', 'gsm8k_test.jsonl', 'alpaca_5000.jsonl')
CHAT_SOURCE = 'gsm8k_chat.jsonl'
CONTENDERS = ('raw', 'raw-fast', 'sftbeam', 'sftbeam-1w', 'sftbeam-hf',
              'sftbeam-packed', 'sftbeam-chat', 'loop', 'loop-fast',
              'datasets')
# The ratios block: (numerator, denominator) contenders.
RATIOS = (('sftbeam', 'sftbeam-hf'), ('sftbeam', 'loop-fast'),
          ('sftbeam-1w', 'loop-fast'), ('sftbeam', 'sftbeam-1w'),
          ('sftbeam', 'datasets'), ('sftbeam-packed', 'sftbeam'))
MEMORY_FACTOR = 10
# Recorded with the results: what decides how many threads the contenders use.
THREAD_ENV = ('TOKENIZERS_PARALLELISM', 'RAYON_NUM_THREADS', 'OMP_NUM_THREADS',
              'OPENBLAS_NUM_THREADS', 'OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE',
              'TF_NUM_INTEROP_THREADS', 'TF_NUM_INTRAOP_THREADS')
VERSIONED = ('apache-beam', 'tokenizers', 'transformers', 'tensorflow-cpu',
             'numpy', 'datasets')


# ---------------------------------------------------------------- the input

def source_records():
  """The shared records, in SOURCE_FILES order, as (prompt, output) pairs."""
  records = []
  for name in SOURCE_FILES:
    records += [(record['prompt'], record['output'])
                for record in read_jsonl(os.path.join(SHARED_DATA, name))]
  return records


def _write_once(path: str, records) -> str:
  """Writes `records` (dicts) as JSONL at `path` unless it exists: under a
  temporary name renamed at the end, so a file found there is complete."""
  if os.path.exists(path):
    return path
  temp_path = path + '.incomplete'
  with open(temp_path, 'w', encoding='utf-8') as handle:
    for record in records:
      handle.write(json.dumps(record, ensure_ascii=False) + '\n')
  os.rename(temp_path, path)
  return path


def build_input(workdir: str, count: int) -> str:
  """WORKDIR/input-COUNT.jsonl: the sources cycled to `count` records.

  Record i is source i % len(sources) with id "bench-i"; written once, then
  reused.
  """
  path = os.path.join(workdir, f'input-{count}.jsonl')
  if os.path.exists(path):
    return path
  sources = source_records()
  return _write_once(path, (
      {'id': f'bench-{index}', 'prompt': prompt, 'output': output}
      for index, (prompt, output) in zip(range(count),
                                         itertools.cycle(sources))))


def build_chat_input(workdir: str, count: int) -> str:
  """WORKDIR/chat-input-COUNT.jsonl: gsm8k_chat's conversations cycled to
  `count` records, record i with id "bench-chat-i"; written once."""
  path = os.path.join(workdir, f'chat-input-{count}.jsonl')
  if os.path.exists(path):
    return path
  conversations = [record['messages'] for record in
                   read_jsonl(os.path.join(SHARED_DATA, CHAT_SOURCE))]
  return _write_once(path, (
      {'id': f'bench-chat-{index}', 'messages': messages}
      for index, messages in zip(range(count),
                                 itertools.cycle(conversations))))


# ------------------------------------------------------- the workers (child)

def worker_lengths(input_path, out_dir, tokenizer_dir):
  """Token counts of every source record: (prompt, output) pairs, as JSON."""
  del input_path, out_dir
  sources = source_records()
  backend = hf_tokenizer(tokenizer_dir).backend_tokenizer
  prompts = backend.encode_batch_fast([prompt for prompt, _ in sources],
                                      add_special_tokens=True)
  outputs = backend.encode_batch_fast([output for _, output in sources],
                                      add_special_tokens=False)
  return {'lengths': [[len(prompt), len(output)]
                      for prompt, output in zip(prompts, outputs)]}


# The contenders that run as `run_benchmark.py --worker NAME`, and `lengths`.
WORKERS = {'raw': raw.work, 'raw-fast': raw_fast.work, 'loop': loop.work,
           'loop-fast': loop_fast.work, 'datasets': hf_datasets.work,
           'lengths': worker_lengths}


def run_worker(args):
  result = WORKERS[args.worker](args.input, args.out, args.tokenizer_dir)
  result['env'] = {name: os.environ.get(name) for name in THREAD_ENV}
  with open(args.result, 'w', encoding='utf-8') as handle:
    json.dump(result, handle)


# ------------------------------------------------------ the contenders (parent)

def run_contender(name, input_path, workdir, records):
  """Runs contender `name` on `input_path` (its prompt/output records) once;
  gives its row."""
  if name == 'sftbeam-chat':
    input_path = build_chat_input(workdir, records)
  if name in sftbeam_cli.VARIANTS:
    return sftbeam_cli.run(input_path, workdir, name,
                           sftbeam_cli.VARIANTS[name])
  if name == 'datasets':
    return hf_datasets.run(input_path, workdir)
  return measure.run_python_worker(name, input_path, workdir)[1]


# ------------------------------------------------ padding schemes (offline)

def source_lengths(workdir):
  """[prompt tokens, output tokens] of every source record, cached."""
  path = os.path.join(workdir, 'source-lengths.json')
  if not os.path.exists(path):
    result, failure = measure.run_python_worker('lengths', '', workdir)
    shutil.rmtree(os.path.join(workdir, 'out-lengths'), ignore_errors=True)
    if result is None:
      raise SystemExit(f'cannot compute token lengths: {failure["status"]}')
    with open(path + '.incomplete', 'w', encoding='utf-8') as handle:
      json.dump(result['lengths'], handle)
    os.rename(path + '.incomplete', path)
  with open(path, encoding='utf-8') as handle:
    return json.load(handle)


def _batch_max_stored(lengths, batch_size):
  """Stored tokens when consecutive batches are padded to their own max."""
  if not len(lengths):
    return 0
  starts = np.arange(0, len(lengths), batch_size)
  sizes = np.diff(np.append(starts, len(lengths)))
  return int((np.maximum.reduceat(lengths, starts) * sizes).sum())


def padding_schemes(pairs, count, batch_size=SPEC_BATCH):
  """Padding efficiency of several schemes on the input's token lengths.

  Uses the records sftbeam keeps by default (prompt and output each at least
  one token, L = prompt + output - 1 within the largest default boundary),
  in input order.
  """
  from sftbeam.pipeline.options import DEFAULT_BOUNDARIES
  pairs = np.asarray(pairs, np.int64)[np.arange(count) % len(pairs)]
  kept = pairs[(pairs[:, 0] > 0) & (pairs[:, 1] > 0)]
  lengths = kept.sum(axis=1) - 1
  boundaries = np.asarray(DEFAULT_BOUNDARIES)
  lengths = lengths[lengths <= boundaries[-1]]
  buckets = boundaries[np.searchsorted(boundaries, lengths)]
  real = int(lengths.sum())
  stored = {
      'global_max': len(lengths) * int(lengths.max()),
      'batch_max_input_order': _batch_max_stored(lengths, batch_size),
      'pow2_buckets': int((2 ** np.ceil(np.log2(lengths))).sum()),
      'default_buckets_pad_to_bucket': int(buckets.sum()),
      'default_buckets_pad_to_longest': sum(
          _batch_max_stored(lengths[buckets == bucket], batch_size)
          for bucket in np.unique(buckets)),
  }
  return [{'scheme': scheme, 'batch_size': batch_size,
           'efficiency': real / value} for scheme, value in stored.items()]


# ------------------------------------------------------------ the report

def versions():
  found = {}
  for name in VERSIONED:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def _cell(value, digits=0):
  if value is None:
    return '-'
  return f'{value:,.{digits}f}' if isinstance(value, float) else str(value)


COLUMNS = (('contender', 'contender', None), ('records', 'records', None),
           ('records/s', 'records_per_s', 0),
           ('records/s (process)', 'records_per_s_process', 0),
           ('tokens/s', 'tokens_per_s', 0), ('x raw', 'ratio_to_raw', 2),
           ('pad eff', 'padding_efficiency', 3),
           ('peak RSS MiB', 'peak_rss_mb', 0), ('output MiB', 'output_mb', 0),
           ('timed s', 'timed_s', 1),
           ('process s', 'process_s', 1), ('load', 'load_before', 1))


def format_table(rows) -> str:
  """A Markdown table of the contender rows, and one line per non-ok row."""
  lines = ['| ' + ' | '.join(title for title, _, _ in COLUMNS) + ' |',
           '|' + '---|' * len(COLUMNS)]
  notes = []
  for row in rows:
    if row['status'] != 'ok':
      notes.append(f'{row["contender"]}: {row["status"]}')
      continue
    lines.append('| ' + ' | '.join(_cell(row[key], digits)
                                   for _, key, digits in COLUMNS) + ' |')
  return '\n'.join(lines + notes)


def format_padding(schemes) -> str:
  return '\n'.join(
      [f'padding efficiency on the input, batch {schemes[0]["batch_size"]}:'] +
      [f'  {scheme["scheme"]:<32} {scheme["efficiency"]:.3f}'
       for scheme in schemes])


def best_run(runs) -> dict:
  """The fastest of a contender's runs (the least disturbed on a shared
  machine), with every run's records/s; a failed run wins, to be seen."""
  failed = [run for run in runs if run['status'] != 'ok']
  if failed:
    return failed[0]
  best = max(runs, key=lambda run: run['records_per_s'])
  return dict(best, runs_records_per_s=[run['records_per_s'] for run in runs])


def set_ratios(rows):
  """Sets each ok row's ratio_to_raw, but sftbeam-chat's (other input)."""
  raw = [row for row in rows if row['contender'] == 'raw' and
         row['status'] == 'ok']
  for row in rows:
    if raw and row['status'] == 'ok' and row['contender'] != 'sftbeam-chat':
      row['ratio_to_raw'] = row['records_per_s'] / raw[0]['records_per_s']


def ratios(rows) -> list:
  """Records/s of each RATIOS pair whose contenders both ran: the first's
  over the second's, timed and whole-process."""
  ok = {row['contender']: row for row in rows if row['status'] == 'ok'}
  return [{'ratio': f'{top} / {bottom}',
           'timed': ok[top]['records_per_s'] / ok[bottom]['records_per_s'],
           'process': ok[top]['records_per_s_process'] /
                      ok[bottom]['records_per_s_process']}
          for top, bottom in RATIOS if top in ok and bottom in ok]


def format_ratios(pairs) -> str:
  return '\n'.join(
      [f'{"ratios of records/s:":<34}{"timed":>7}{"process":>9}'] +
      [f'  {pair["ratio"]:<32}{pair["timed"]:7.2f}{pair["process"]:9.2f}'
       for pair in pairs])


def benchmark(args) -> dict:
  input_path = build_input(args.workdir, args.records)
  report = {'input': input_path, 'records': args.records,
            'padding': padding_schemes(source_lengths(args.workdir),
                                       args.records),
            'contenders': []}
  runs = collections.defaultdict(list)
  # Round after round, so a burst of other work on a shared machine hits
  # every contender alike rather than all runs of one.
  for attempt in range(1, args.repeat + 1):
    for name in args.contenders:
      print(f'running {name} on {args.records} records (round {attempt}/'
            f'{args.repeat}) ...', flush=True)
      runs[name].append(run_contender(name, input_path, args.workdir,
                                      args.records))
      if not args.keep_outputs:
        shutil.rmtree(os.path.join(args.workdir, f'out-{name}'),
                      ignore_errors=True)
  report['contenders'] = [best_run(runs[name]) for name in args.contenders]
  set_ratios(report['contenders'])
  report['ratios'] = ratios(report['contenders'])
  print(format_table(report['contenders']))
  if report['ratios']:
    print(format_ratios(report['ratios']))
  print(format_padding(report['padding']))
  return report


def memory_check(args) -> dict:
  rows = []
  for count in (args.records, args.records * MEMORY_FACTOR):
    print(f'running sftbeam on {count} records ...', flush=True)
    row = sftbeam_cli.run(build_input(args.workdir, count), args.workdir,
                          name=f'sftbeam-{count}')
    rows.append(row)
    if not args.keep_outputs:
      shutil.rmtree(os.path.join(args.workdir, f'out-sftbeam-{count}'),
                    ignore_errors=True)
  ratio = None
  if all(row['status'] == 'ok' for row in rows):
    ratio = rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']
  print(format_table(rows))
  print(f'peak RSS at {args.records * MEMORY_FACTOR} records / at '
        f'{args.records} records: {_cell(ratio, 2)} (target <= 1.25)')
  return {'memory_check': {'records': [args.records,
                                      args.records * MEMORY_FACTOR],
                           'peak_rss_ratio': ratio},
          'contenders': rows}


def _parser():
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='See the module docstring for what each number means.')
  parser.add_argument('--records', type=int, default=100_000,
                      help='input records (default 100000)')
  parser.add_argument('--contenders', default=','.join(CONTENDERS),
                      help=f'comma-separated subset of {",".join(CONTENDERS)}')
  parser.add_argument('--workdir', default='/tmp/sftbeam-bench',
                      help='input files, outputs, logs and caches')
  parser.add_argument('--json', help='results file (default '
                      'WORKDIR/results.json)')
  parser.add_argument('--memory-check', action='store_true',
                      help=f'only sftbeam, at --records and {MEMORY_FACTOR}x '
                      '--records: compare peak RSS')
  parser.add_argument('--repeat', type=int, default=1,
                      help='rounds of runs of every contender; each '
                      'contender\'s fastest run is reported')
  parser.add_argument('--keep-outputs', action='store_true',
                      help='keep each contender\'s output under WORKDIR')
  # Internal: how the parent runs one contender in a child process.
  for name in ('--worker', '--input', '--out', '--result', '--tokenizer-dir'):
    parser.add_argument(name, help=argparse.SUPPRESS)
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.worker:
    run_worker(args)
    return 0
  args.contenders = [name for name in args.contenders.split(',') if name]
  unknown = set(args.contenders) - set(CONTENDERS)
  if unknown:
    _parser().error(f'unknown contenders {sorted(unknown)}')
  if args.records < 1 or args.repeat < 1:
    _parser().error('--records and --repeat must be positive')
  if not os.path.isdir(SHARED_DATA):
    _parser().error(f'{SHARED_DATA} not found: the input is built from it')
  args.workdir = os.path.abspath(args.workdir)
  os.makedirs(args.workdir, exist_ok=True)
  report = memory_check(args) if args.memory_check else benchmark(args)
  report.update(command=' '.join([os.path.relpath(sys.argv[0], ROOT)] +
                                 sys.argv[1:]),
                machine={'cpus': os.cpu_count(),
                         'platform': platform.platform(),
                         'python': platform.python_version()},
                env={name: measure.BASE_ENV.get(name) for name in THREAD_ENV},
                versions=versions())
  json_path = args.json or os.path.join(args.workdir, 'results.json')
  with open(json_path, 'w', encoding='utf-8') as handle:
    json.dump(report, handle, indent=2)
  print(f'results: {json_path}')
  failed = [row for row in report['contenders']
            if row['status'].startswith('failed')]
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
