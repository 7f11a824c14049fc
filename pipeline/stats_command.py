"""`sftbeam stats OUTPUT_DIR [--plot FILE.png]`: what a finished run holds.

Prints the run's summary (pipeline/summary.py, as `sftbeam run` printed
it), then what only the shards tell: histograms of prompt, output and total
(prompt + output) tokens per example, and per bucket the rows, batches and
padding efficiency (real tokens, prompt + output - 1 per example, over
stored tokens, B x L per batch). `--plot` draws the same, and the rejected
records by reason, into one PNG with matplotlib (extra `sftbeam[plot]`).
"""

import argparse
import collections
import os

import numpy as np

from sftbeam.pipeline import readers
from sftbeam.pipeline.options import ConfigError
from sftbeam.pipeline.summary import summary_lines
from sftbeam.transforms import example_codec, filenames, schema

_LENGTH_FEATURES = ('prompt_lengths', 'output_lengths')
_BAR_WIDTH = 40


def add_parser(commands):
  """Adds the `stats` subcommand to the CLI's subparsers."""
  parser = commands.add_parser(
      'stats', help='summarize a finished run (lengths, buckets, rejected)',
      description=__doc__.split('\n\n')[0])
  parser.add_argument('output_dir', help='a finished run')
  parser.add_argument('--plot', metavar='FILE.png',
                      help='also draw the histograms into this PNG')
  parser.set_defaults(handler=run)


def collect(output_dir: str) -> dict:
  """The run's info plus per-example lengths and per-bucket totals.

  Gives {'info', 'prompt_lengths', 'output_lengths' (int64 arrays, one
  value per example), 'buckets': {bucket: {'rows', 'batches',
  'real_tokens', 'stored_tokens'}}}. A padded batch's bucket is the
  smallest boundary holding its longest row; a packed batch's, its width.
  """
  info = readers.load_dataset_info(output_dir)
  boundaries = np.asarray(info['bucket_boundaries'])
  lengths = {name: [] for name in _LENGTH_FEATURES}
  buckets = collections.defaultdict(collections.Counter)
  for shard in readers.verified_shards(output_dir, info):
    for record in readers.shard_records(shard):
      batch = example_codec.decode_example(
          record, names=_LENGTH_FEATURES + (schema.SHAPE_FEATURE,))
      rows, width = (int(value) for value in batch[schema.SHAPE_FEATURE])
      real = batch['prompt_lengths'] + batch['output_lengths'] - 1
      bucket = width if info['layout'] == 'packed' else _bucket_of(
          int(real.max()), boundaries, shard.name)
      buckets[bucket].update(rows=rows, batches=1,
                             real_tokens=int(real.sum()),
                             stored_tokens=rows * width)
      for name in _LENGTH_FEATURES:
        lengths[name].append(batch[name])
  found = {name: np.concatenate(parts) if parts else np.zeros(0, np.int64)
           for name, parts in lengths.items()}
  return dict(found, info=info,
              buckets={bucket: dict(buckets[bucket])
                       for bucket in sorted(buckets)})


def _bucket_of(length: int, boundaries: np.ndarray, shard_name: str) -> int:
  """The smallest boundary holding a row of `length` positions."""
  if length > boundaries[-1]:
    raise readers.CorruptOutput(
        f'shard {shard_name} holds a row of {length} positions, more than '
        f'the largest bucket boundary in {filenames.INFO} '
        f'({boundaries[-1]}): they do not belong together')
  return int(boundaries[np.searchsorted(boundaries, length)])


def _length_edges(largest: int) -> list:
  """0, 16, 32, 64, ... up past `largest`: readable bins for skewed
  token counts."""
  edges = [0, 16]
  while edges[-1] <= largest:
    edges.append(edges[-1] * 2)
  return edges


def _histogram_lines(title: str, values: np.ndarray) -> list:
  if not values.size:
    return [f'{title}: none']
  lines = [f'{title}: min {values.min()}, median {int(np.median(values))}, '
           f'mean {values.mean():.1f}, p99 {int(np.percentile(values, 99))}, '
           f'max {values.max()}']
  edges = _length_edges(int(values.max()))
  counts, _ = np.histogram(values, edges)
  first = int(np.flatnonzero(counts)[0])  # no empty bins below the shortest
  for low, high, count in zip(edges[first:], edges[first + 1:],
                              counts[first:]):
    bar = '#' * int(np.ceil(_BAR_WIDTH * count / counts.max()))
    lines.append(f'  {low:>6}-{high - 1:<6} {count:>8}  {bar}')
  return lines


def _summary_lines(output_dir: str, info: dict) -> list:
  """What the run said when it ended (but its wall time), under a line
  naming the run."""
  layout = info.get('layout', 'padded')
  packing = info['counts'].get('packing')
  positions = (f', rows of {info["pack_length"]} positions' if packing
               else '')
  return [f'{output_dir}: {layout} batches in {len(info["shards"])} shards'
          f'{positions}, tokenizer {info["tokenizer"]["name"]}, sftbeam '
          f'{info["sftbeam_version"]}'] + summary_lines(info)


def _bucket_lines(buckets: dict) -> list:
  if not buckets:
    return ['per bucket: none']
  lines = ['per bucket:', f'  {"bucket":>7} {"rows":>8} {"batches":>8} '
           f'{"efficiency":>10}']
  for bucket, totals in buckets.items():
    lines.append(f'  {bucket:>7} {totals["rows"]:>8} {totals["batches"]:>8} '
                 f'{totals["real_tokens"] / totals["stored_tokens"]:>10.3f}')
  return lines


def format_report(output_dir: str, found: dict) -> str:
  info = found['info']
  prompt, output = found['prompt_lengths'], found['output_lengths']
  lines = _summary_lines(output_dir, info)
  lines += _histogram_lines('prompt tokens', prompt)
  lines += _histogram_lines('output tokens', output)
  lines += _histogram_lines('total tokens (prompt + output)', prompt + output)
  lines += _bucket_lines(found['buckets'])
  return '\n'.join(lines)


def _pyplot():
  """matplotlib's pyplot on the Agg backend (files only, no display)."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError("--plot needs matplotlib: pip install "
                      "'sftbeam[plot]'") from None
  matplotlib.use('Agg')
  import matplotlib.pyplot  # pylint: disable=import-outside-toplevel
  return matplotlib.pyplot


def _bins(values: np.ndarray):
  """(bin edges, log x axis?) for token counts: one bin per count over a
  short range, log-spaced bins over a skewed one, else 40 equal bins."""
  low, high = int(values.min()), int(values.max())
  if high - low < 50:
    return np.arange(low, high + 2) - 0.5, False
  if high > 20 * max(low, 1):
    return np.geomspace(max(low, 1), high + 1, 40), True
  return np.linspace(low, high + 1, 41), False


def _say_empty(axes, text):
  """An empty panel that says why it is empty."""
  axes.text(0.5, 0.5, text, ha='center', va='center', fontsize=14,
            transform=axes.transAxes)
  axes.set_axis_off()


def _plot_histogram(axes, values, title, color):
  axes.set_title(title)
  if not values.size:
    _say_empty(axes, 'no row written')
    return
  axes.set_xlabel('tokens per example')
  axes.set_ylabel('examples')
  bins, log_scale = _bins(values)
  axes.hist(values, bins=bins, color=color)
  if log_scale:
    axes.set_xscale('log')
    axes.xaxis.set_major_formatter('{x:.0f}')
    axes.set_xlabel('tokens per example (log scale)')


def plot(output_dir: str, found: dict, path: str):
  """Draws lengths, buckets and rejections into one PNG at `path`."""
  pyplot = _pyplot()
  info, buckets = found['info'], found['buckets']
  figure, grid = pyplot.subplots(2, 3, figsize=(16, 9))
  prompt, output = found['prompt_lengths'], found['output_lengths']
  for axes, values, title, color in (
      (grid[0, 0], prompt, 'Prompt length', 'tab:blue'),
      (grid[0, 1], output, 'Output length', 'tab:orange'),
      (grid[0, 2], prompt + output, 'Total length (prompt + output)',
       'tab:green')):
    _plot_histogram(axes, values, title, color)
  labels = [str(bucket) for bucket in buckets]
  rows = grid[1, 0]
  rows.bar(labels, [totals['rows'] for totals in buckets.values()],
           color='tab:purple')
  rows.set_title('Rows per bucket')
  rows.set_xlabel('bucket (max tokens per row)')
  rows.set_ylabel('rows')
  efficiency = grid[1, 1]
  efficiency.bar(labels, [totals['real_tokens'] / totals['stored_tokens']
                          for totals in buckets.values()], color='tab:cyan')
  overall = info['counts']['padding_efficiency']
  kind = 'Packing' if info.get('layout') == 'packed' else 'Padding'
  efficiency.set_title(f'{kind} efficiency per bucket' + (
      '' if overall is None else f'\n(dashed: whole run, {overall:.3f})'))
  if overall is not None:
    efficiency.axhline(overall, color='black', linestyle='--')
  efficiency.set_ylim(0, 1)
  efficiency.set_xlabel('bucket (max tokens per row)')
  efficiency.set_ylabel('real / stored tokens')
  for axes in (rows, efficiency):
    axes.tick_params(axis='x', labelrotation=90 if len(labels) > 12 else 0)
    if not buckets:
      _say_empty(axes, 'no row written')
  rejected = grid[1, 2]
  reasons = info['counts']['rejected_by_reason']
  rejected.set_title('Rejected records by reason')
  if reasons:
    bars = rejected.barh(list(reasons), list(reasons.values()),
                         color='tab:red')
    rejected.bar_label(bars, padding=3)
    rejected.xaxis.get_major_locator().set_params(integer=True)
    rejected.set_xlabel('records')
  else:
    _say_empty(rejected, 'no record rejected')
  counts = info['counts']
  figure.suptitle(
      f'{os.path.basename(os.path.normpath(output_dir))}: '
      f'{counts["records_written"]} records written in '
      f'{counts["batches_written"]} batches, {counts["records_rejected"]} '
      f'rejected (tokenizer {info["tokenizer"]["name"]})', fontsize=14)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  pyplot.close(figure)


def run(args: argparse.Namespace) -> int:
  """The `stats` command: prints the report (and draws it); exit code."""
  if args.plot:
    _pyplot()  # fail before reading the shards
  try:
    found = collect(args.output_dir)
  except readers.IncompleteOutput as error:
    raise ConfigError(str(error)) from None
  print(format_report(args.output_dir, found))
  if args.plot:
    plot(args.output_dir, found, args.plot)
    print(f'plot: {args.plot}')
  return 0
