"""The values that flow between the DoFns.

A line of input becomes a `LineChunk` entry, then a `Record` (parsed), then a
`TokenizedRecord` keyed by its length bucket; or, at any step, a `Rejected`
with a reason code. Stats travel as flat `{name: count}` dicts that a
`SumStats` combine adds up (see `transforms/stats.py`).
"""

import itertools
import json
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

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


class TokenChunk(NamedTuple):
  """Tokenized records held as arrays: what flows from tokenizing to batching.

  Record i's token sequence (its prompt then its output; for a conversation,
  the rendered conversation) is `ids[offsets[i]:offsets[i + 1]]`, and
  `supervised` flags, token by token, the tokens a model learns to predict
  (output tokens; assistant turns). A row of the spec is built from a
  sequence `seq` and its flags `sup` as `input_ids = seq[:-1]`,
  `labels = seq[1:]`, `response_mask = sup[1:]`.

    example_ids     n record ids (str)
    ids             int64 [total tokens], every record's tokens, end to end
    offsets         int64 [n + 1], record i spans offsets[i]:offsets[i + 1]
    supervised      bool [total tokens]
    prompt_lengths  int64 [n], tokens before the first supervised token
    truncated       bool [n], whether truncation shortened the record
  """
  example_ids: List[str]
  ids: np.ndarray
  offsets: np.ndarray
  supervised: np.ndarray
  prompt_lengths: np.ndarray
  truncated: np.ndarray

  def __len__(self) -> int:
    return len(self.example_ids)

  @property
  def lengths(self) -> np.ndarray:
    """int64 [n]: tokens of each record (prompt + output)."""
    return np.diff(self.offsets)

  @property
  def output_lengths(self) -> np.ndarray:
    """int64 [n]: tokens from the first supervised one to the end."""
    return self.lengths - self.prompt_lengths

  def token_rows(self, indices) -> np.ndarray:
    """int64 [tokens of the records at `indices`]: positions into `ids`,
    record after record in the order given."""
    indices = np.asarray(indices, dtype=np.int64)
    starts = self.offsets[indices]
    lengths = self.offsets[indices + 1] - starts
    # Each record's positions are start, start+1, ...: one arange over
    # all, shifted per record from where it lands to where it starts.
    landed = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(
        starts - landed, lengths)

  def take(self, indices) -> 'TokenChunk':
    """The records at `indices`, in that order."""
    indices = np.asarray(indices, dtype=np.int64)
    positions = self.token_rows(indices)
    lengths = self.offsets[indices + 1] - self.offsets[indices]
    return TokenChunk(
        example_ids=[self.example_ids[i] for i in indices.tolist()],
        ids=self.ids[positions],
        offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        supervised=self.supervised[positions],
        prompt_lengths=self.prompt_lengths[indices],
        truncated=self.truncated[indices])

  @staticmethod
  def concat(chunks) -> 'TokenChunk':
    """One chunk holding the records of `chunks`, in order."""
    chunks = list(chunks)
    if len(chunks) == 1:
      return chunks[0]
    lengths = np.concatenate([chunk.lengths for chunk in chunks])
    return TokenChunk(
        example_ids=[i for chunk in chunks for i in chunk.example_ids],
        ids=np.concatenate([chunk.ids for chunk in chunks]),
        offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        supervised=np.concatenate([chunk.supervised for chunk in chunks]),
        prompt_lengths=np.concatenate(
            [chunk.prompt_lengths for chunk in chunks]),
        truncated=np.concatenate([chunk.truncated for chunk in chunks]))

  @staticmethod
  def from_sequences(example_ids, sequences, supervised, truncated=None):
    """A chunk from per-record token lists and per-record flag lists."""
    lengths = np.fromiter(map(len, sequences), np.int64, len(sequences))
    total = int(lengths.sum())
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    flags = np.fromiter(itertools.chain.from_iterable(supervised), np.bool_,
                        total)
    # A record's prompt ends at its first supervised token (a record with
    # none is all prompt).
    prompt_lengths = lengths.copy()
    flagged = np.flatnonzero(flags)
    records = np.searchsorted(offsets, flagged, side='right') - 1
    records, first = np.unique(records, return_index=True)
    prompt_lengths[records] = flagged[first] - offsets[records]
    return TokenChunk(
        example_ids=list(example_ids),
        ids=np.fromiter(itertools.chain.from_iterable(sequences), np.int64,
                        total),
        offsets=offsets,
        supervised=flags,
        prompt_lengths=prompt_lengths,
        truncated=(np.zeros(len(sequences), np.bool_) if truncated is None
                   else np.asarray(truncated, np.bool_)))
