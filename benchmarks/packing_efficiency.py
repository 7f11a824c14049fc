"""Benchmark: packing efficiency and packing time by window and row length.

Run from the project root:

  .venv/bin/python benchmarks/packing_efficiency.py

Input: gsm8k_train + alpaca_5000 from ../shared/data, in that order,
tokenized with the embedded Qwen tokenizer through fastokens'
`encode_batch_flat` (prompts with add_special_tokens=True, HuggingFace's
default, which adds nothing for Qwen; outputs without). Records whose prompt
or output yields no tokens are dropped, as the pipeline rejects them.

For each pack_length (--pack-lengths) and window (--windows, plus the whole
set), the records are cut into consecutive windows in input order and each
window is packed with `best_fit_decreasing`. Measures:
  efficiency     real tokens / stored tokens; real = the sum of
                 L = prompt + output - 1, stored = rows x pack_length
  rows           packed rows over all windows
  ex/row mean, max   examples per row
  bfd us/rec     best_fit_decreasing's time over all windows / records (the
                 fastest of --repeat runs)
  arrays us/rec  `packed_arrays` building every batch of
                 rows_per_batch(pack_length, --batch-tokens) rows, per
                 record (the fastest of --repeat runs)

Next to them, the padded layout's efficiency on the same records: the
default boundaries (pipeline.options.DEFAULT_BOUNDARIES) padded to the
bucket, real / the sum of each record's boundary.

Prints one table per pack_length and writes everything as JSON (--json).
"""

import argparse
import json
import os
import time

import fastokens
import numpy as np

from sftbeam.pipeline.options import DEFAULT_BOUNDARIES
from sftbeam.transforms.pack import (DEFAULT_PACK_WINDOW, best_fit_decreasing,
                                     packed_arrays, rows_per_batch)
from sftbeam.transforms.records import TokenChunk
from sftbeam.transforms.stats import packing_stats, packing_summary
from sftbeam.transforms.tokenizer_source import embedded_tokenizer_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
SOURCE_FILES = ('gsm8k_train.jsonl', 'alpaca_5000.jsonl')
WINDOWS = (100, 250, 500, 1000, 2000, 5000, 10000)
PACK_LENGTHS = (1024, 2048, 4096)


def read_records():
  """(prompts, outputs) of the source files, in order."""
  prompts, outputs = [], []
  for name in SOURCE_FILES:
    with open(os.path.join(SHARED_DATA, name), encoding='utf-8') as handle:
      for line in handle:
        if line.strip():
          record = json.loads(line)
          prompts.append(record['prompt'])
          outputs.append(record['output'])
  return prompts, outputs


def encode_flat(tokenizer, texts, add_special_tokens):
  """(ids int64, offsets int64) of `texts`, end to end."""
  ids, offsets = tokenizer.encode_batch_flat(
      texts, add_special_tokens=add_special_tokens)
  return (np.frombuffer(ids, np.uint32).astype(np.int64),
          np.frombuffer(offsets, np.uint64).astype(np.int64))


def tokenized_chunk(prompts, outputs) -> TokenChunk:
  """The records as one TokenChunk (prompt then output, outputs supervised),
  without the records the pipeline would reject for an empty text."""
  tokenizer = fastokens.Tokenizer.from_file(
      os.path.join(embedded_tokenizer_dir(), 'tokenizer.json'))
  prompt_ids, prompt_offsets = encode_flat(tokenizer, prompts, True)
  output_ids, output_offsets = encode_flat(tokenizer, outputs, False)
  # Record i is its prompt piece then its output piece: gather the pieces,
  # alternating, from the prompts' and outputs' buffers laid end to end.
  pieces = np.stack([np.diff(prompt_offsets), np.diff(output_offsets)], 1)
  starts = np.stack([prompt_offsets[:-1],
                     len(prompt_ids) + output_offsets[:-1]], 1)
  kept = (pieces > 0).all(axis=1)
  pieces, starts = pieces[kept].reshape(-1), starts[kept].reshape(-1)
  landed = np.cumsum(pieces) - pieces
  positions = np.arange(int(pieces.sum())) + np.repeat(starts - landed, pieces)
  lengths = pieces.reshape(-1, 2).sum(axis=1)
  return TokenChunk(
      example_ids=[str(i) for i in np.flatnonzero(kept).tolist()],
      ids=np.concatenate([prompt_ids, output_ids])[positions],
      offsets=np.concatenate(([0], np.cumsum(lengths))),
      supervised=np.repeat(np.tile([False, True], len(lengths)), pieces),
      prompt_lengths=pieces.reshape(-1, 2)[:, 0].copy(),
      truncated=np.zeros(len(lengths), np.bool_))


def padded_efficiency(lengths) -> float:
  """Real / stored tokens with the default boundaries, padded to the bucket."""
  boundaries = np.asarray(DEFAULT_BOUNDARIES)
  return float(lengths.sum() / boundaries[np.searchsorted(boundaries,
                                                          lengths)].sum())


def pack_windows(lengths, pack_length, window):
  """Rows of every window, as indices into `lengths`."""
  rows = []
  for start in range(0, len(lengths), window):
    rows += [row + start for row in best_fit_decreasing(
        lengths[start:start + window], pack_length)]
  return rows


def fastest(function, repeat):
  """(function's result, its fastest time in seconds over `repeat` runs)."""
  times = []
  for _ in range(repeat):
    started = time.perf_counter()
    result = function()
    times.append(time.perf_counter() - started)
  return result, min(times)


def build_batches(chunk, rows, pack_length, batch_tokens):
  """Summed packing_stats over every batch built from `rows`."""
  per_batch = rows_per_batch(pack_length, batch_tokens)
  stats = {}
  for start in range(0, len(rows), per_batch):
    arrays = packed_arrays(chunk, rows[start:start + per_batch], pack_length,
                           pad_id=0)
    for name, count in packing_stats(arrays).items():
      stats[name] = stats.get(name, 0) + count
  return stats


def measure(chunk, pack_length, window, args) -> dict:
  """One table row: `chunk` packed in windows of `window` records."""
  lengths = chunk.lengths - 1
  rows, bfd_seconds = fastest(
      lambda: pack_windows(lengths, pack_length, window), args.repeat)
  stats, array_seconds = fastest(
      lambda: build_batches(chunk, rows, pack_length, args.batch_tokens),
      args.repeat)
  summary = packing_summary(stats)
  assert stats['real_tokens'] == lengths.sum()  # every record packed once
  return {
      'pack_length': pack_length,
      'window': window,
      'efficiency': summary['packing_efficiency'],
      'rows': summary['packed_rows'],
      'examples_per_row_mean': summary['examples_per_row_mean'],
      'examples_per_row_max': summary['examples_per_row_max'],
      'bfd_us_per_record': bfd_seconds / len(chunk) * 1e6,
      'arrays_us_per_record': array_seconds / len(chunk) * 1e6,
  }


def format_table(rows, records) -> str:
  lines = ['| window | efficiency | rows | ex/row mean | ex/row max | '
           'bfd us/rec | arrays us/rec |',
           '|---|---|---|---|---|---|---|']
  for row in rows:
    window = 'all' if row['window'] >= records else f'{row["window"]:,}'
    lines.append(
        f'| {window} | {row["efficiency"]:.4f} | {row["rows"]:,} | '
        f'{row["examples_per_row_mean"]:.1f} | {row["examples_per_row_max"]} '
        f'| {row["bfd_us_per_record"]:.2f} | '
        f'{row["arrays_us_per_record"]:.2f} |')
  return '\n'.join(lines)


def _parser():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--pack-lengths', type=int, nargs='+',
                      default=list(PACK_LENGTHS))
  parser.add_argument('--windows', type=int, nargs='+', default=list(WINDOWS),
                      help='records per window (the whole set is added)')
  parser.add_argument('--batch-tokens', type=int, default=65536,
                      help='token budget of a batch, for the arrays timing')
  parser.add_argument('--repeat', type=int, default=3)
  parser.add_argument('--json', help='where to write the results')
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  prompts, outputs = read_records()
  chunk = tokenized_chunk(prompts, outputs)
  lengths = chunk.lengths - 1
  padded = padded_efficiency(lengths)
  print(f'{len(chunk):,} records ({len(prompts) - len(chunk)} dropped: empty '
        f'prompt or output), {int(lengths.sum()):,} real tokens, L mean '
        f'{lengths.mean():.1f}, max {lengths.max()}')
  print(f'padded layout (default buckets, pad_to bucket): {padded:.4f}')
  print(f'default pack_window: {DEFAULT_PACK_WINDOW}')
  windows = sorted(set(w for w in args.windows if w < len(chunk))) + [
      len(chunk)]
  results = []
  for pack_length in args.pack_lengths:
    if lengths.max() > pack_length:
      print(f'\npack_length {pack_length}: skipped, the longest record has '
            f'L = {lengths.max()} (the pipeline truncates first)')
      continue
    rows = [measure(chunk, pack_length, window, args) for window in windows]
    results += rows
    print(f'\npack_length {pack_length}:')
    print(format_table(rows, len(chunk)))
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as handle:
      json.dump({'records': len(chunk), 'real_tokens': int(lengths.sum()),
                 'padded_efficiency': padded, 'batch_tokens': args.batch_tokens,
                 'results': results}, handle, indent=1)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
