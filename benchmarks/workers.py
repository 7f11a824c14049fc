"""Benchmark: sftbeam on 1 and more local worker processes, and its start-up.

Run from the project root:

  .venv/bin/python benchmarks/workers.py --records 1000000 --workers 1,2
  .venv/bin/python benchmarks/workers.py --records 200000 --chat

Input: run_benchmark.py's WORKDIR/input-N.jsonl (one file, built once), and
the same lines cut into two files of about equal size
(WORKDIR/input-N-halves/part-0.jsonl and part-1.jsonl, written once).
With --chat, the chat input instead (WORKDIR/chat-input-N.jsonl, GSM8K
conversations, and its halves): the work per record is rendering the chat
template, many times the prompt/output records', so start-up weighs less.

Each run is the real CLI (`sftbeam run`, default options but `--workers W`)
in its own measured process (benchmarks/measure.py), on one file, then on
the two (`--input 'DIR/part-*.jsonl'`). Columns:
  records/s     records / the summary's wall time (records in -> shards
                and dataset_info.json written)
  records/s (process)   records / the whole process's seconds
  x 1 worker    records/s over that of the 1-worker run on the same input
                (the scaling ratio; timed, then whole process)
  CPU s         user + system seconds of the process and its workers
  load          the machine's 1-minute load average when the run started:
                above the core count, other work shared the CPUs
--repeat N runs every case N times, in turn, and reports each case's
fastest run (every run is in the JSON).

Start-up: the README's sample run (examples/sample.jsonl, 307 lines), whole
process seconds and the summary's wall time, fastest of --repeat; the
difference is what the run spends before its first record (interpreter,
imports, config checks, tokenizer, graph construction).
"""

import argparse
import json
import os
import sys

import measure
import run_benchmark
from contenders import sftbeam_cli

SAMPLE = os.path.join(measure.ROOT, 'examples', 'sample.jsonl')


def build_halves(input_path: str) -> str:
  """A glob of `input_path`'s lines cut in two files; written once."""
  directory = input_path[:-len('.jsonl')] + '-halves'
  pattern = os.path.join(directory, 'part-*.jsonl')
  if os.path.isdir(directory):
    return pattern
  with open(input_path, 'rb') as handle:
    lines = handle.readlines()
  os.makedirs(directory + '.incomplete')
  half = len(lines) // 2
  for index, part in enumerate((lines[:half], lines[half:])):
    with open(os.path.join(directory + '.incomplete', f'part-{index}.jsonl'),
              'wb') as handle:
      handle.writelines(part)
  os.rename(directory + '.incomplete', directory)
  return pattern


def run_case(input_pattern, workdir, files: int, workers: int,
             kind: str) -> dict:
  row = sftbeam_cli.run(input_pattern, workdir,
                        f'sftbeam-{kind}{files}f-{workers}w',
                        ('--workers', str(workers)))
  return dict(row, files=files, workers=workers)


def fastest(runs) -> dict:
  ok = [run for run in runs if run['status'] == 'ok']
  return min(ok, key=lambda run: run['timed_s']) if ok else runs[-1]


def startup(workdir, repeat: int) -> dict:
  """The sample run's fastest whole-process and wall seconds."""
  runs = [sftbeam_cli.run(SAMPLE, workdir, 'sftbeam-sample')
          for _ in range(repeat)]
  best = min(runs, key=lambda run: run['process_s'])
  return {'process_s': best['process_s'], 'wall_s': best['timed_s'],
          'before_first_record_s': best['process_s'] - best['timed_s'],
          'load_before': best['load_before'],
          'all_process_s': [run['process_s'] for run in runs]}


def format_table(rows) -> str:
  lines = ['| input files | workers | records/s | records/s (process) | '
           'x 1 worker | timed s | process s | CPU s | peak RSS MiB | load |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for row in rows:
    if row['status'] != 'ok':
      lines.append(f'| {row["files"]} | {row["workers"]} | {row["status"]} |')
      continue
    lines.append(
        f'| {row["files"]} | {row["workers"]} | {row["records_per_s"]:,.0f} '
        f'| {row["records_per_s_process"]:,.0f} | {row["scaling"]} | '
        f'{row["timed_s"]:.1f} | {row["process_s"]:.1f} | '
        f'{row["cpu_s_process"]:.1f} | {row["peak_rss_mb"]:,.0f} | '
        f'{row["load_before"]:.1f} |')
  return '\n'.join(lines)


def set_scaling(rows):
  """Each row's records/s over its input's 1-worker run (timed / process)."""
  single = {row['files']: row for row in rows
            if row['workers'] == 1 and row['status'] == 'ok'}
  for row in rows:
    base = single.get(row['files'])
    row['scaling'] = '-' if base is None or row['status'] != 'ok' else (
        f'{row["records_per_s"] / base["records_per_s"]:.2f} / '
        f'{row["records_per_s_process"] / base["records_per_s_process"]:.2f}')


def _parser():
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--records', type=int, default=1_000_000)
  parser.add_argument('--workers', default='1,2',
                      help='worker counts, comma-separated (default 1,2)')
  parser.add_argument('--chat', action='store_true',
                      help='the chat input (conversations) instead of '
                      'prompt/output records')
  parser.add_argument('--repeat', type=int, default=1)
  parser.add_argument('--workdir', default='/tmp/sftbeam-bench')
  parser.add_argument('--json', help='results file (default '
                      'WORKDIR/workers.json, with --chat workers-chat.json)')
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  counts = [int(count) for count in args.workers.split(',')]
  args.workdir = os.path.abspath(args.workdir)
  os.makedirs(args.workdir, exist_ok=True)
  kind = 'chat-' if args.chat else ''
  build = run_benchmark.build_chat_input if args.chat else (
      run_benchmark.build_input)
  one_file = build(args.workdir, args.records)
  inputs = {1: one_file, 2: build_halves(one_file)}
  runs = {(files, workers): [] for files in inputs for workers in counts}
  for round_number in range(args.repeat):
    for (files, workers), found in runs.items():
      print(f'{files} input file(s), {workers} worker(s), round '
            f'{round_number + 1}/{args.repeat} ...', flush=True)
      found.append(run_case(inputs[files], args.workdir, files, workers,
                            kind))
  rows = [fastest(found) for found in runs.values()]
  set_scaling(rows)
  print(format_table(rows))
  started = startup(args.workdir, max(args.repeat, 3))
  print(f'start-up (README sample run, fastest of '
        f'{len(started["all_process_s"])}): {started["process_s"]:.2f} s '
        f'whole process, {started["wall_s"]:.2f} s wall time, '
        f'{started["before_first_record_s"]:.2f} s before it')
  json_path = args.json or os.path.join(
      args.workdir, 'workers-chat.json' if args.chat else 'workers.json')
  with open(json_path, 'w', encoding='utf-8') as handle:
    json.dump({'command': ' '.join(sys.argv), 'cpus': os.cpu_count(),
               'rows': rows, 'runs': [run for found in runs.values()
                                      for run in found],
               'startup': started}, handle, indent=2)
  print(f'results: {json_path}')
  return 0 if all(row['status'] == 'ok' for row in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
