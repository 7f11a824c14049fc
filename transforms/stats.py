"""Counting: the one mechanism every count of a run goes through.

Every step that learns something emits a flat `{name: count}` dict on its
`stats` output, and nothing else counts. The stats stream then reaches:
  SumStatsFn       the exact totals in dataset_info.json (and, in
                   streaming mode, the window-stats files);
  CountStats       Beam counters (Dataflow's job page shows them).
Each stats dict is also added, as its step emits it (`emit`), to the live
tally of the step's process, which the CLI prints while a local run goes
(pipeline/progress.py): the local runner hands the elements of a Flatten
of the stats streams on only when their stage ends.
Names (the keys with a `/` are built and read here only):
  lines, blank_lines, rows, input_bytes    from the parsers, per chunk
                                           (rows: of Parquet files)
  rejected/<reason>                        one per rejected record
                                           (rejection_stats)
  truncated, records_with_special_token_text,
  tokenizer_backend/<name> (backend_stats),
  chat_records, assistant_turns,
  tool_calls_learned, reasoning_turns_learned,
  chat_extra_rows                          from the tokenizer step
  records_written (examples: rows of one
  record each), batches_written, real_tokens, stored_tokens,
  supervised_tokens, bucket/<boundary>/records,
  bucket/<boundary>/batches                per padded batch
                                           (padded_batch_stats)
  packed_rows, examples_per_row/<k>        per packed batch, with the
                                           counts above but buckets
                                           (packing_stats)
  copies, records_dropped,                 from a mixture's split and
  records_validation, split_records_in     copies (split_stats)
  source/<name>/<any name above>           the same, of one source of a
                                           mixture (per_source)
"""

import collections
import threading

import apache_beam as beam
import numpy as np

_live = collections.Counter()
_live_lock = threading.Lock()


def tallied(counts: dict) -> dict:
  """`counts`, added to this process's live tally."""
  with _live_lock:
    _live.update(counts)
  return counts


def emit(tag: str, counts: dict) -> beam.pvalue.TaggedOutput:
  """A step's stats output: `counts` on its `tag` output, tallied."""
  return beam.pvalue.TaggedOutput(tag, tallied(counts))


def live_tally() -> dict:
  """What this process's steps have emitted so far, summed."""
  with _live_lock:
    return dict(_live)


def reset_live_tally():
  with _live_lock:
    _live.clear()


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


def tallied_rejection_stats(rejected) -> dict:
  """rejection_stats, tallied."""
  return tallied(rejection_stats(rejected))


def rejection_stats(rejected) -> dict:
  """The stats one rejected record contributes."""
  return {f'rejected/{rejected.reason}': 1}


def backend_stats(backend: str, records: int) -> dict:
  """The stats of `records` records one tokenizer backend encoded."""
  return {f'tokenizer_backend/{backend}': records}


def padded_batch_stats(bucket: int, arrays: dict, batches: int = 1) -> dict:
  """The stats written padded batches contribute: one, or `batches` of
  one bucket whose rows `arrays` stacks."""
  rows, width = arrays['input_ids'].shape
  real_tokens = int((arrays['prompt_lengths'] + arrays['output_lengths']
                     - 1).sum())
  return {
      'records_written': rows,
      'batches_written': batches,
      f'bucket/{bucket}/records': rows,
      f'bucket/{bucket}/batches': batches,
      'real_tokens': real_tokens,
      'stored_tokens': rows * width,
      'supervised_tokens': int(arrays['response_mask'].sum()),
  }


def packing_stats(arrays: dict) -> dict:
  """The stats one packed batch contributes, flat counts that add up across
  batches (see transforms/stats.py; `packing_summary` reads their sum).

  real_tokens are the positions examples fill, stored_tokens all B x L, and
  `examples_per_row/<k>` counts the rows holding k examples.
  """
  rows, pack_length = arrays['segment_ids'].shape
  examples_per_row = arrays['examples_per_row']
  stats = {
      'records_written': int(examples_per_row.sum()),
      'batches_written': 1,
      'packed_rows': rows,
      'real_tokens': int(np.count_nonzero(arrays['segment_ids'])),
      'stored_tokens': rows * pack_length,
  }
  counts = collections.Counter(examples_per_row.tolist())
  stats.update({f'examples_per_row/{k}': count
                for k, count in counts.items()})
  return stats


def packing_summary(stats: dict) -> dict:
  """From summed `packing_stats`: rows, examples per row (mean, max) and
  packing efficiency (real / stored tokens)."""
  per_row = {int(name.split('/', 1)[1]): count
             for name, count in stats.items()
             if name.startswith('examples_per_row/')}
  rows = stats.get('packed_rows', 0)
  stored = stats.get('stored_tokens', 0)
  return {
      'packed_rows': rows,
      'examples_per_row_mean': (stats.get('records_written', 0) / rows
                                if rows else None),
      'examples_per_row_max': max(per_row, default=None),
      'packing_efficiency': (stats.get('real_tokens', 0) / stored
                             if stored else None),
  }


_SOURCE_PREFIX = 'source/'


def per_source(stats: dict, name: str) -> dict:
  """`stats` as the stats of source `name` too: each count also under
  `source/<name>/`."""
  return {**stats, **{f'{_SOURCE_PREFIX}{name}/{key}': count
                      for key, count in stats.items()}}


def split_stats(name: str, split: str, *, records: int, examples: int,
                dropped: int, copies: int, tokens: int,
                learned_tokens: int) -> dict:
  """The stats of `records` records of source `name` a mixture sent to
  `split`, written as `examples` examples: `copies` extra copies,
  `dropped` records not written (a weight below 1), their tokens and learned
  tokens. A validation record is counted in the train stats as sent
  there (`records_validation`) and in the validation stats as read
  (`split_records_in`)."""
  prefix = f'{_SOURCE_PREFIX}{name}/'
  own = {'records_written': examples, 'real_tokens': tokens,
         'supervised_tokens': learned_tokens}
  if split == 'train':
    own.update(copies=copies, records_dropped=dropped)
    return {prefix + key: count for key, count in own.items()} | {
        'copies': copies, 'records_dropped': dropped}
  own.update(split_records_in=records)
  return {prefix + key: count for key, count in own.items()} | {
      'split_records_in': records}


def sent_to_validation(validation_stats: dict) -> dict:
  """The train stats of records a mixture sent to validation, from their
  validation stats."""
  return {key.replace('split_records_in', 'records_validation'): count
          for key, count in validation_stats.items()
          if key.endswith('split_records_in')}


def _sources(stats: dict) -> dict:
  """{source name: its stats} of the `source/<name>/` counts."""
  sources = collections.defaultdict(dict)
  for key, count in stats.items():
    if key.startswith(_SOURCE_PREFIX):
      name, own = key[len(_SOURCE_PREFIX):].split('/', 1)
      sources[name][own] = count
  return sources


def _record_counts(stats: dict) -> dict:
  """The record counts of summed stats (a run's, or one source's), and
  whether they reconcile: every record read is written, rejected, sent to
  validation or dropped."""
  rejected = rejected_by_reason(stats)
  records_in = (stats.get('lines', 0) - stats.get('blank_lines', 0) +
                stats.get('rows', 0) + stats.get('split_records_in', 0))
  examples = stats.get('records_written', 0)
  # A per_turn chat record is written as one example per learned turn,
  # and a mixture's record once per copy.
  written = (examples - stats.get('chat_extra_rows', 0) -
             stats.get('copies', 0))
  validation = stats.get('records_validation', 0)
  dropped = stats.get('records_dropped', 0)
  return {
      'records_in': records_in,
      'records_written': written,
      'examples_written': examples,
      'copies': stats.get('copies', 0),
      'records_validation': validation,
      'records_dropped': dropped,
      'records_rejected': sum(rejected.values()),
      'rejected_by_reason': dict(sorted(rejected.items())),
      'reconciled': records_in == (written + sum(rejected.values()) +
                                   validation + dropped),
  }


def source_counts(stats: dict) -> dict:
  """`counts.by_source` of dataset_info: per source, its record counts,
  tokens and learned tokens of the examples written."""
  return {name: {**_record_counts(own),
                 'tokens': own.get('real_tokens', 0),
                 'learned_tokens': own.get('supervised_tokens', 0)}
          for name, own in sorted(_sources(stats).items())}


def summarize(stats: dict) -> dict:
  """Structures summed stats into the `counts` section of dataset_info."""
  buckets = collections.defaultdict(dict)
  for name, count in stats.items():
    if name.startswith('bucket/'):
      _, boundary, what = name.split('/')
      buckets[int(boundary)][what] = count
  records = _record_counts(stats)
  stored = stats.get('stored_tokens', 0)
  packing = packing_summary(stats) if 'packed_rows' in stats else None
  return {
      'lines': stats.get('lines', 0),
      'blank_lines': stats.get('blank_lines', 0),
      'rows': stats.get('rows', 0),
      **{key: value for key, value in records.items() if key != 'reconciled'},
      'records_truncated': stats.get('truncated', 0),
      'chat_records': stats.get('chat_records', 0),
      'assistant_turns': stats.get('assistant_turns', 0),
      'tool_calls_learned': stats.get('tool_calls_learned', 0),
      'reasoning_turns_learned': stats.get('reasoning_turns_learned', 0),
      'records_with_special_token_text': stats.get(
          'records_with_special_token_text', 0),
      'reconciled': records['reconciled'],
      'batches_written': stats.get('batches_written', 0),
      'buckets': {str(boundary): buckets[boundary]
                  for boundary in sorted(buckets)},
      'real_tokens': stats.get('real_tokens', 0),
      'stored_tokens': stored,
      'supervised_tokens': stats.get('supervised_tokens', 0),
      'padding_efficiency': (stats.get('real_tokens', 0) / stored
                             if stored else None),
      'packing': packing,
      'by_source': source_counts(stats),
  }


def backend_records(stats: dict) -> dict:
  """{backend name: records it tokenized} from summed stats."""
  return {name.split('/', 1)[1]: count for name, count in sorted(stats.items())
          if name.startswith('tokenizer_backend/')}
