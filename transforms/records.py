"""The values that flow between the DoFns.

Lines of input travel as a `LineChunk`, then, parsed, as a `RecordChunk`,
then, tokenized, as a `TokenChunk` (arrays, not one object per record);
at any step a line or record may leave as a `Rejected` with a reason code.
Stats travel as flat `{name: count}` dicts that `SumStatsFn` adds up (see
transforms/stats.py).
"""

import itertools
import json
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

# Rejected output keeps at most this much of the offending line, and of
# the message saying why (messages quote field names and contents).
MAX_RAW_CHARS = 1000
MAX_MESSAGE_CHARS = 500


class LineChunk(NamedTuple):
  """Consecutive lines of one source file.

  `lines` holds (line_number, line_bytes, total_bytes); a line longer than
  the reader's limit is kept only as its prefix, `total_bytes` telling its
  real size.
  """
  source: str
  lines: List[Tuple[int, bytes, int]]


class RecordChunk(NamedTuple):
  """Parsed records of one source, as parallel lists.

  A prompt/output record has its `prompts` and `outputs` entries and None
  in `conversations`; a chat record the reverse (a `chat_records.Conversation`).
  `lines` are the records' input lines (UTF-8 bytes), kept (not copied) so
  that a later step can still show a rejected record's line.
  """
  source: str
  line_numbers: List[Optional[int]]
  example_ids: List[str]
  prompts: List[Optional[str]]
  outputs: List[Optional[str]]
  conversations: list
  lines: List[bytes]

  @staticmethod
  def empty(source: str) -> 'RecordChunk':
    return RecordChunk(source, [], [], [], [], [], [])

  def add(self, line_number, example_id, line, prompt=None, output=None,
          conversation=None):
    self.line_numbers.append(line_number)
    self.example_ids.append(example_id)
    self.prompts.append(prompt)
    self.outputs.append(output)
    self.conversations.append(conversation)
    self.lines.append(line)

  def subset(self, indices) -> 'RecordChunk':
    """The records at `indices`, in that order."""
    return RecordChunk(self.source,
                       *([column[i] for i in indices] for column in self[1:]))

  def reject(self, index: int, reason: str, message: str) -> 'Rejected':
    """Record `index` as a Rejected with this reason."""
    return Rejected.capped(self.source, self.line_numbers[index], reason,
                           message, self.lines[index].decode('utf-8'))


class Rejected(NamedTuple):
  source: str
  line_number: Optional[int]
  reason: str
  message: str
  raw: str

  @staticmethod
  def capped(source: str, line_number: Optional[int], reason: str,
             message: str, raw: str) -> 'Rejected':
    """A Rejected whose message and raw line are cut to MAX_MESSAGE_CHARS
    and MAX_RAW_CHARS: a rejected file stays a few KB per line whatever
    the line or the options."""
    return Rejected(source, line_number, reason,
                    _cut(message, MAX_MESSAGE_CHARS), _cut(raw, MAX_RAW_CHARS))

  def to_json(self) -> str:
    return json.dumps(self._asdict(), ensure_ascii=False)


def _cut(text: str, limit: int) -> str:
  """At most `limit` characters of `text`, marking what was cut."""
  if len(text) <= limit:
    return text
  return text[:limit] + f'...[{len(text) - limit} more chars]'


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """int64: start[0], start[0]+1, ... (lengths[0] values), then the same
  for every range in turn; vectorized."""
  starts = np.asarray(starts, dtype=np.int64)
  lengths = np.asarray(lengths, dtype=np.int64)
  # One arange over all, shifted per range from where it lands in the
  # result to where it starts.
  landed = np.cumsum(lengths) - lengths
  return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(
      starts - landed, lengths)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
  """int64 [n + 1]: 0 and the running sums of `lengths`."""
  offsets = np.zeros(len(lengths) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  return offsets


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
    return ranges(starts, self.offsets[indices + 1] - starts)

  def take(self, indices) -> 'TokenChunk':
    """The records at `indices`, in that order."""
    indices = np.asarray(indices, dtype=np.int64)
    positions = self.token_rows(indices)
    lengths = self.offsets[indices + 1] - self.offsets[indices]
    return TokenChunk(
        example_ids=[self.example_ids[i] for i in indices.tolist()],
        ids=self.ids[positions],
        offsets=offsets_of(lengths),
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
        offsets=offsets_of(lengths),
        supervised=np.concatenate([chunk.supervised for chunk in chunks]),
        prompt_lengths=np.concatenate(
            [chunk.prompt_lengths for chunk in chunks]),
        truncated=np.concatenate([chunk.truncated for chunk in chunks]))

  @staticmethod
  def from_sequences(example_ids, sequences, supervised, truncated=None):
    """A chunk from per-record token lists and per-record flag lists."""
    lengths = np.fromiter(map(len, sequences), np.int64, len(sequences))
    total = int(lengths.sum())
    offsets = offsets_of(lengths)
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
