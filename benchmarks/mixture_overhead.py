"""Benchmark: what a mixture and a validation split cost over a plain run.

Run from the project root:

  .venv/bin/python benchmarks/mixture_overhead.py [--repeat 3]
      [--workdir /tmp/sftbeam-mixture]

Input: ../shared/data gsm8k_train.jsonl and alpaca_5000.jsonl (12,473
records). Three runs of the same records (configs/local.yaml, the default
options otherwise), each --repeat times:
  plain        --input both files
  mixture      --mixture of two sources, weight 1 each (the per-source
               read and tokenize, ids prefixed, copies step, by_source)
  split        the same mixture with --validation_fraction 0.05 (also
               the keys grouped per source and the split, two datasets)
and a weighted one, `weighted` (gsm8k 2.5, alpaca 0.5), as the split with
more examples written. Prints per run the median wall time the summary
prints (records in -> dataset_info.json), the examples written and
examples/s; --json writes every number.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
SFTBEAM = os.path.join(os.path.dirname(sys.executable), 'sftbeam')
SOURCES = {'gsm8k': 'gsm8k_train.jsonl', 'alpaca': 'alpaca_5000.jsonl'}


def mixture_file(workdir: str, weights: dict) -> str:
  """A mixture file of the shared sources with these weights."""
  path = os.path.join(workdir, f'mixture-{"-".join(map(str, weights.values()))}.yaml')
  with open(path, 'w', encoding='utf-8') as handle:
    handle.write('sources:\n' + ''.join(
        f'  - {{name: {name}, input: {os.path.join(SHARED_DATA, file)}, '
        f'weight: {weights[name]}}}\n' for name, file in SOURCES.items()))
  return path


def run(flags, output_dir) -> tuple:
  """Runs sftbeam; gives (wall seconds its summary prints, examples)."""
  result = subprocess.run(
      [SFTBEAM, 'run', '--config', os.path.join(ROOT, 'configs/local.yaml'),
       '--output', output_dir, '--overwrite', *flags],
      capture_output=True, text=True, check=True)
  seconds = float(re.search(r'wall time\s+([\d.]+) s', result.stdout)[1])
  examples = 0
  for split in ('', 'train', 'validation'):
    path = os.path.join(output_dir, split, 'dataset_info.json')
    if os.path.exists(path):
      with open(path, encoding='utf-8') as handle:
        examples += json.load(handle)['counts']['examples_written']
  return seconds, examples


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--repeat', type=int, default=3)
  parser.add_argument('--workdir', default='/tmp/sftbeam-mixture')
  parser.add_argument('--json', help='also write every number here')
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  even = mixture_file(args.workdir, {'gsm8k': 1, 'alpaca': 1})
  weighted = mixture_file(args.workdir, {'gsm8k': 2.5, 'alpaca': 0.5})
  runs = {
      'plain': ['--input', *(os.path.join(SHARED_DATA, file)
                             for file in SOURCES.values())],
      'mixture': ['--mixture', even],
      'split': ['--mixture', even, '--validation_fraction', '0.05'],
      'weighted': ['--mixture', weighted, '--validation_fraction', '0.05'],
  }
  results = {}
  for name, flags in runs.items():
    measured = [run(flags, os.path.join(args.workdir, f'out-{name}'))
                for _ in range(args.repeat)]
    seconds = [wall for wall, _ in measured]
    examples = measured[0][1]
    results[name] = {'seconds': seconds, 'examples': examples}
    median = statistics.median(seconds)
    print(f'| {name} | {median:.1f} | {examples:,} | '
          f'{examples / median:,.0f} |', flush=True)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as handle:
      json.dump(results, handle, indent=2)


if __name__ == '__main__':
  main()
