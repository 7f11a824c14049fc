"""The summary of a finished run, from its dataset_info.json: what
`sftbeam run` prints when it ends and `sftbeam stats` prints first.

  records in                 307
    written                  301
    rejected                 6
      invalid_json           1
  ...
  reconciled                 yes: in = written + rejected
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
  return [f'{name:<{width}}  {value}' for name, value in rows]


def _record_rows(info: dict) -> list:
  counts = info['counts']
  rows = [('records in', counts['records_in']),
          ('  written', counts['records_written']),
          ('  rejected', counts['records_rejected'])]
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
  rows = [('reconciled', 'yes: in = written + rejected' if counts['reconciled']
           else 'NO: in != written + rejected'),
          ('tokenizer backend', f'{info["tokenizer"]["backend"]} '
           f'({info["tokenizer"]["backend_reason"]})')]
  if wall_seconds is not None:
    per_second = counts['records_in'] / max(wall_seconds, 1e-9)
    rows.append(('wall time', f'{wall_seconds:.1f} s ({per_second:.0f} '
                 'records/s)'))
  return rows
