"""The summary of a finished run, from its dataset_info.json: what
`sftbeam run` prints when it ends and `sftbeam stats` prints first.

  records in                 307
    written                  301
    rejected                 6
      invalid_json           1
  ...
  reconciled                 yes: in = written + rejected

then, for a mixture or a validation split, a table per source:

  source   read  written  copies  validation  dropped  rejected  tokens  learned
  gsm8k     300      270     412          30        0         0  126006    85638
"""

from typing import List, Optional


def counted(count: int, noun: str) -> str:
  """"1 batch", "2 batches"."""
  plural = noun + ('es' if noun.endswith(('s', 'ch')) else 's')
  return f'{count} {noun if count == 1 else plural}'


def records_per_row_text(packing: dict) -> str:
  """How full packed rows are, from the counts' `packing`, in words."""
  return (f'{packing["examples_per_row_mean"]:.1f} records per row on '
          f'average, at most {packing["examples_per_row_max"]}')


def summary_lines(info: dict, wall_seconds: Optional[float] = None
                  ) -> List[str]:
  """The summary table of a run; with the wall time of the run that just
  ended, if given."""
  rows = (_record_rows(info) + _batch_rows(info['counts']) +
          _tail_rows(info, wall_seconds))
  width = max(len(name) for name, _ in rows)
  return [f'{name:<{width}}  {value}' for name, value in rows] + (
      source_table(info['counts'].get('by_source') or {}))


# The per-source table's columns: (heading, key of counts.by_source.<name>).
_SOURCE_COLUMNS = (
    ('read', 'records_in'), ('written', 'records_written'),
    ('copies', 'copies'), ('validation', 'records_validation'),
    ('dropped', 'records_dropped'), ('rejected', 'records_rejected'),
    ('tokens', 'tokens'), ('learned', 'learned_tokens'))


def source_table(by_source: dict) -> List[str]:
  """The per-source table of counts.by_source (none without sources);
  a source whose counts do not reconcile is marked."""
  if not by_source:
    return []
  width = max(len('source'), *map(len, by_source))
  lines = [f'{"source":<{width}}  ' + '  '.join(
      heading for heading, _ in _SOURCE_COLUMNS)]
  for name, counts in by_source.items():
    cells = '  '.join(f'{counts[key]:>{len(heading)}}'
                      for heading, key in _SOURCE_COLUMNS)
    mark = '' if counts['reconciled'] else '  NOT RECONCILED'
    lines.append(f'{name:<{width}}  {cells}{mark}')
  return lines


# Rows a mixture or a validation split adds when they count something.
# (label, key, its term in the reconciliation or None)
_MIXTURE_ROWS = (('sent to validation', 'records_validation', 'validation'),
                 ('dropped by weight', 'records_dropped', 'dropped'),
                 ('extra copies written', 'copies', None))


def _record_rows(info: dict) -> list:
  counts = info['counts']
  rows = [('records in', counts['records_in']),
          ('  written', counts['records_written']),
          ('  rejected', counts['records_rejected'])]
  rows += [(f'  {label}', counts[key]) for label, key, _ in _MIXTURE_ROWS
           if counts.get(key)]
  rows += [(f'    {reason}', count)
           for reason, count in counts['rejected_by_reason'].items()]
  if counts['chat_records']:  # a prompt/output run has no chat row
    rows.append(('  chat records', f'{counts["chat_records"]} '
                 f'({counts.get("assistant_turns", 0)} assistant turns '
                 f'learned, {counts.get("tool_calls_learned", 0)} tool calls, '
                 f'{counts.get("reasoning_turns_learned", 0)} with reasoning; '
                 f'{counts.get("examples_written", counts["records_written"])}'
                 ' rows)'))
  special = ('mapped to special ids' if info['config'].get(
      'special_tokens_in_text', 'special') == 'special' else 'kept as text')
  return rows + [
      ('  truncated (written)', counts['records_truncated']),
      ('  with special-token text',
       f'{counts["records_with_special_token_text"]} ({special})'),
      ('blank lines skipped', counts['blank_lines'])]


def _batch_rows(counts: dict) -> list:
  rows = [('batches written', counts['batches_written'])]
  rows += [(f'  bucket <= {boundary}',
            f'{counted(bucket["batches"], "batch")}, '
            f'{counted(bucket["records"], "record")}')
           for boundary, bucket in sorted(counts['buckets'].items(),
                                          key=lambda item: int(item[0]))]
  efficiency = counts['padding_efficiency']
  packing = counts.get('packing')
  if packing:
    return rows + [
        ('packed rows', f'{packing["packed_rows"]}, '
         f'{records_per_row_text(packing)}'),
        ('packing efficiency', f'{efficiency:.3f} (real / stored tokens)')]
  return rows + [('padding efficiency', 'n/a' if efficiency is None else
                  f'{efficiency:.3f} (real / stored tokens)')]


def _tail_rows(info: dict, wall_seconds: Optional[float]) -> list:
  counts = info['counts']
  terms = ' + '.join(['written', 'rejected'] + [
      term for _, key, term in _MIXTURE_ROWS if term and counts.get(key)])
  rows = [('reconciled', f'yes: in = {terms}' if counts['reconciled']
           else f'NO: in != {terms}'),
          ('tokenizer backend', f'{info["tokenizer"]["backend"]} '
           f'({info["tokenizer"]["backend_reason"]})')]
  if wall_seconds is not None:
    per_second = counts['records_in'] / max(wall_seconds, 1e-9)
    rows.append(('wall time', f'{wall_seconds:.1f} s ({per_second:.0f} '
                 'records/s)'))
  return rows
