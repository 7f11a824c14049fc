"""The values that flow between the DoFns.

A line of input becomes a `LineChunk` entry, then a `Record` (parsed), then a
`TokenizedRecord` keyed by its length bucket; or, at any step, a `Rejected`
with a reason code. Stats travel as flat `{name: count}` dicts that a
`SumStats` combine adds up (see `transforms/stats.py`).
"""

import json
from typing import List, NamedTuple, Optional, Tuple

# Rejected output keeps at most this much of the offending line.
MAX_RAW_CHARS = 1000


class LineChunk(NamedTuple):
  """Consecutive lines of one source file.

  `lines` holds (line_number, line_bytes, total_bytes); a line longer than
  the reader's limit is kept only as its prefix, `total_bytes` telling its
  real size.
  """
  source: str
  lines: List[Tuple[int, bytes, int]]


class Record(NamedTuple):
  example_id: str
  prompt: str
  output: str
  source: str
  line_number: int
  raw: str  # capped copy of the input line, for a later rejection


class TokenizedRecord(NamedTuple):
  example_id: str
  prompt_ids: List[int]
  output_ids: List[int]
  truncated: bool


class Rejected(NamedTuple):
  source: str
  line_number: Optional[int]
  reason: str
  message: str
  raw: str

  def to_json(self) -> str:
    return json.dumps(self._asdict(), ensure_ascii=False)


def cap_raw(text: str) -> str:
  """At most MAX_RAW_CHARS of `text`, marking what was cut."""
  if len(text) <= MAX_RAW_CHARS:
    return text
  return text[:MAX_RAW_CHARS] + f'...[{len(text) - MAX_RAW_CHARS} more chars]'


def reject(record: Record, reason: str, message: str) -> Rejected:
  return Rejected(record.source, record.line_number, reason, message,
                  record.raw)
