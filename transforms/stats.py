"""Counting: the one mechanism every count of a run goes through.

Every step that learns something emits a flat `{name: count}` dict on its
`stats` output, and nothing else counts. The stats stream then reaches:
  SumStatsFn       the exact totals in dataset_info.json (and, in
                   streaming mode, the window-stats records);
  CountStats       Beam counters (Dataflow's job page shows them) and the
                   live tally the CLI prints while a local run goes
                   (pipeline/progress.py).
Names:
  lines, blank_lines, rows, input_bytes    from the parsers, per chunk
                                           (rows: of Parquet files)
  rejected/<reason>                        one per rejected record
  truncated, records_with_special_token_text,
  tokenizer_backend/<name>, chat_records,
  assistant_turns, tool_calls_learned,
  reasoning_turns_learned, chat_extra_rows from the tokenizer step
  records_written (examples: rows of one
  record each), batches_written, real_tokens, stored_tokens,
  supervised_tokens, bucket/<boundary>/records,
  bucket/<boundary>/batches                per padded batch
  packed_rows, examples_per_row/<k>        per packed batch (and the
                                           counts above but buckets)
"""

import collections

import apache_beam as beam

from sftbeam.transforms import pack


class SumStatsFn(beam.CombineFn):
  """Adds up stats dicts key by key."""

  def create_accumulator(self):
    return collections.Counter()

  def add_input(self, accumulator, stats):
    accumulator.update(stats)
    return accumulator

  def merge_accumulators(self, accumulators):
    merged = collections.Counter()
    for accumulator in accumulators:
      merged.update(accumulator)
    return merged

  def extract_output(self, accumulator):
    return dict(accumulator)


def rejected_by_reason(stats: dict) -> dict:
  """{reason: count} of the rejected records in summed stats."""
  return {name.split('/', 1)[1]: count for name, count in stats.items()
          if name.startswith('rejected/')}


def rejection_stats(rejected) -> dict:
  """The stats one rejected record contributes."""
  return {f'rejected/{rejected.reason}': 1}


def summarize(stats: dict) -> dict:
  """Structures summed stats into the `counts` section of dataset_info."""
  rejected = rejected_by_reason(stats)
  buckets = collections.defaultdict(dict)
  for name, count in stats.items():
    if name.startswith('bucket/'):
      _, boundary, what = name.split('/')
      buckets[int(boundary)][what] = count
  records_in = (stats.get('lines', 0) - stats.get('blank_lines', 0) +
                stats.get('rows', 0))
  examples = stats.get('records_written', 0)
  # A per_turn chat record is written as one example per learned turn.
  written = examples - stats.get('chat_extra_rows', 0)
  stored = stats.get('stored_tokens', 0)
  packing = pack.packing_summary(stats) if 'packed_rows' in stats else None
  return {
      'lines': stats.get('lines', 0),
      'blank_lines': stats.get('blank_lines', 0),
      'rows': stats.get('rows', 0),
      'records_in': records_in,
      'records_written': written,
      'examples_written': examples,
      'records_rejected': sum(rejected.values()),
      'rejected_by_reason': dict(sorted(rejected.items())),
      'records_truncated': stats.get('truncated', 0),
      'chat_records': stats.get('chat_records', 0),
      'assistant_turns': stats.get('assistant_turns', 0),
      'tool_calls_learned': stats.get('tool_calls_learned', 0),
      'reasoning_turns_learned': stats.get('reasoning_turns_learned', 0),
      'records_with_special_token_text': stats.get(
          'records_with_special_token_text', 0),
      'reconciled': records_in == written + sum(rejected.values()),
      'batches_written': stats.get('batches_written', 0),
      'buckets': {str(boundary): buckets[boundary]
                  for boundary in sorted(buckets)},
      'real_tokens': stats.get('real_tokens', 0),
      'stored_tokens': stored,
      'supervised_tokens': stats.get('supervised_tokens', 0),
      'padding_efficiency': (stats.get('real_tokens', 0) / stored
                             if stored else None),
      'packing': packing,
  }


def backend_records(stats: dict) -> dict:
  """{backend name: records it tokenized} from summed stats."""
  return {name.split('/', 1)[1]: count for name, count in sorted(stats.items())
          if name.startswith('tokenizer_backend/')}
