"""Conversations as SFT rows: tokenizing each row's text and fitting it to
max_seq_len (docs/chat.md has the semantics).

The modules of a chat record, in the order they act:
  chat_records.py   parsing: is it chat, is every field well formed
  chat_template.py  rendering: the template, as HuggingFace renders it
  chat_rows.py      what a row says and learns (character spans)
  chat.py           this module: tokens and flags, truncation, the call
                    the pipeline's tokenizing step makes per chunk

A row's text is cut where a learned span begins and where it ends (after
its end-of-turn token, a special token, so the cut changes nothing), and
around special-token text that comes from the record; each piece is
tokenized whole, so context tokens are what a server tokenizing the
prompt feeds the model, and learned tokens what the model emits after its
generation prompt. Special-token text from the record follows
`special_tokens_in_text`: its special id (`special`) or plain text
(`text`); the template's own special tokens are always special ids.

Reason codes added here:
  no_chat_template  the tokenizer has no chat template and none was given
  invalid_chat_template  the template cannot render a plain conversation
  no_assistant_turn the learned messages give no token after the first
  too_long          the row does not fit max_seq_len (after truncation)
  tokenizer_error   the tokenizer raised on this record's texts
"""

import bisect
import functools
import json
import re
from typing import (Callable, Dict, List, NamedTuple, Optional, Sequence,
                    Tuple)

import jinja2

from sftbeam.transforms.chat_records import ChatRejected, Conversation
from sftbeam.transforms.chat_rows import (CHAT_ROWS, MARK_END, MARK_START,
                                          TRAIN_ON, Renderer, RowText,
                                          TooLong, conversation_rows, row_of,
                                          unmarked)
from sftbeam.transforms.chat_template import REASONING_FIELDS, ChatTemplate
from sftbeam.transforms.spec_arithmetic import (SPECIAL_TOKEN_MODES,
                                                TRUNCATION_MODES)
from sftbeam.transforms.tokenizer_backend import special_token_strings

Encode = Callable[[List[str], bool], List[List[int]]]
_MARKED = re.compile(f'{MARK_START}([^{MARK_START}{MARK_END}]*){MARK_END}')


class ChatRow(NamedTuple):
  """One row of a conversation: its tokens and, token by token, whether
  it is learned. `record` is the conversation's index in the call,
  `suffix` '' or '#i' (per_turn), `truncated` whether whole turns were
  dropped to fit, `learned` the messages it learns."""
  record: int
  suffix: str
  ids: List[int]
  supervised: List[bool]
  truncated: bool
  learned: Tuple[Dict, ...]  # the learned messages


class ChatOutcome(NamedTuple):
  """What a call gives: the rows, the rejected conversations (index,
  ChatRejected), and stats (`assistant_turns`, `tool_calls_learned`,
  `reasoning_turns_learned`, `chat_extra_rows`, `truncated`)."""
  rows: List[ChatRow]
  rejected: List[Tuple[int, ChatRejected]]
  stats: Dict[str, int]


class ChatSettings(NamedTuple):
  special_tokens_in_text: str = 'special'
  train_on: str = 'assistant'
  chat_rows: str = 'whole'
  max_seq_len: int = 4096
  truncation: str = 'none'


def has_chat_template(tokenizer) -> bool:
  """Whether `tokenizer` carries a chat template of its own."""
  return bool(getattr(tokenizer, 'chat_template', None))


def check_settings(settings: ChatSettings):
  """Raises ValueError on a setting outside its choices."""
  for name, allowed in (('special_tokens_in_text', SPECIAL_TOKEN_MODES),
                        ('train_on', TRAIN_ON), ('chat_rows', CHAT_ROWS),
                        ('truncation', TRUNCATION_MODES)):
    if getattr(settings, name) not in allowed:
      raise ValueError(f'{name} must be one of {", ".join(allowed)}, not '
                       f'{getattr(settings, name)!r}')
  if settings.chat_rows == 'per_turn' and settings.truncation == (
      'output_right'):
    raise ValueError('truncation output_right drops trailing turns, but a '
                     'per_turn row ends at its own turn: use prompt_left')


@functools.lru_cache(maxsize=8)
def _cached_renderer(tokenizer, template_text: str, run_kwargs_json: str):
  def token_ends(text):
    return [end for _, end in tokenizer(
        text, add_special_tokens=False,
        return_offsets_mapping=True)['offset_mapping']]
  return Renderer(ChatTemplate(template_text, tokenizer.special_tokens_map),
                  special_token_strings(tokenizer), token_ends,
                  json.loads(run_kwargs_json))


def renderer_for(tokenizer, chat_template: Optional[str] = None,
                 chat_template_kwargs: Optional[Dict] = None) -> Renderer:
  """The Renderer of a tokenizer and an optional template text (default:
  the tokenizer's own), built once per process. Raises ValueError when
  there is no template, it does not compile, or it cannot be used."""
  text = chat_template or getattr(tokenizer, 'chat_template', None)
  if not text:
    raise ValueError('the tokenizer has no chat template and no '
                     'chat_template file is given')
  try:
    return _cached_renderer(tokenizer, text, json.dumps(
        chat_template_kwargs or {}, sort_keys=True))
  except jinja2.TemplateSyntaxError as error:
    raise ValueError(f'the chat template does not compile: line '
                     f'{error.lineno}: {error.message}') from None


# ------------------------------------------------------------- the call

def tokenize_conversations(conversations: Sequence[Conversation], *,
                           renderer: Renderer, encode: Encode,
                           settings: ChatSettings) -> ChatOutcome:
  """The rows of each conversation, or why it is rejected.

  Args:
    conversations: from chat_records.parse_conversation.
    renderer: from renderer_for.
    encode: `encode(texts, split_special_tokens) -> ids per text`, without
      the tokenizer's own special tokens (add_special_tokens=False).
    settings: special-token mode, what is learned, rows per conversation,
      max_seq_len and truncation.

  Every conversation's rows are rendered first, then all their pieces are
  encoded in one call per mode; only a row that must be truncated is
  rendered and encoded again.
  """
  check_settings(settings)
  fits = functools.partial(_fits, encode, settings.max_seq_len)
  texts, rejected, long_records = {}, [], []
  for index, conversation in enumerate(conversations):
    try:
      texts[index] = conversation, conversation_rows(
          renderer, conversation, settings.train_on, settings.chat_rows, fits)
    except TooLong as why:
      long_records.append((index, why))
    except ChatRejected as why:
      rejected.append((index, why))
  rows, failed = _tokenized_rows(texts, encode,
                                 settings.special_tokens_in_text)
  rejected += failed
  fitted, too_long = _fitted_rows(
      renderer, encode, settings, conversations, rows,
      [_LongRow(index, '', why.length) for index, why in long_records])
  rejected += too_long
  rejected.sort(key=lambda item: item[0])
  return ChatOutcome(fitted, rejected, _learned_stats(fitted))


def _learned_stats(rows: List[ChatRow]) -> Dict[str, int]:
  records = {row.record for row in rows}
  learned = [message for row in rows for message in row.learned]
  return {
      'chat_extra_rows': len(rows) - len(records),
      'truncated': len({row.record for row in rows if row.truncated}),
      'assistant_turns': len(learned),
      'tool_calls_learned': sum(len(message.get('tool_calls') or ())
                                for message in learned),
      'reasoning_turns_learned': sum(map(_reasons, learned)),
  }


def _reasons(message: Dict) -> bool:
  """Whether an assistant message carries reasoning (a field or an inline
  `<think>` block)."""
  return any(str(message.get(key) or '').strip()
             for key in REASONING_FIELDS) or '</think>' in message['content']


# ------------------------------------------------------------- tokenizing

class _Piece(NamedTuple):
  text: str
  record_text: bool  # special-token text from the record
  learned: bool


def _pieces(row: RowText) -> List[_Piece]:
  """The row's text cut at learned spans' starts and ends and around the
  record's special-token text (markers removed), in order."""
  cuts = sorted({0, len(row.text)} | {at for span in row.learned
                                      for at in span})
  pieces = []
  for start, end in zip(cuts, cuts[1:]):
    learned = any(first <= start and end <= last
                  for first, last in row.learned)
    position = start
    for match in _MARKED.finditer(row.text, start, end):
      pieces.append(_Piece(unmarked(row.text[position:match.start()]),
                           False, learned))
      pieces.append(_Piece(match.group(1), True, learned))
      position = match.end()
    pieces.append(_Piece(unmarked(row.text[position:end]), False, learned))
  return [piece for piece in pieces if piece.text]


def _encoded(pieces: List[_Piece], encode: Encode,
             special_tokens_in_text: str) -> List[List[int]]:
  """The ids of each piece, in order: one encode call per mode."""
  split = [piece.record_text and special_tokens_in_text == 'text'
           for piece in pieces]
  ids = [None] * len(pieces)
  for mode in (False, True):
    positions = [index for index, value in enumerate(split) if value == mode]
    if positions:
      encoded = encode([pieces[index].text for index in positions], mode)
      if len(encoded) != len(positions):
        raise ValueError('encode gave a different number of id lists than '
                         'texts')
      for index, piece_ids in zip(positions, encoded):
        ids[index] = piece_ids
  return ids


class _Cut(NamedTuple):
  """A row cut into pieces, with its record and conversation."""
  record: int
  conversation: Conversation
  row: RowText
  pieces: List[_Piece]


def _tokenized_rows(texts: Dict[int, Tuple[Conversation, List[RowText]]],
                    encode: Encode, special_tokens_in_text: str):
  """(ChatRows, rejections) for the rows of each record (given with the
  conversation they render): all pieces in one encode call per mode;
  record by record after a failure, so that only the culprit is
  rejected."""
  cuts = [_Cut(record, conversation, row, _pieces(row))
          for record, (conversation, rows) in texts.items() for row in rows]
  try:
    ids = _encoded([piece for cut in cuts for piece in cut.pieces], encode,
                   special_tokens_in_text)
  except Exception as error:  # pylint: disable=broad-except
    if len(texts) <= 1:
      return [], [(record, ChatRejected('tokenizer_error',
                                        f'{type(error).__name__}: {error}'))
                  for record in texts]
    rows, rejected = [], []
    for record, record_texts in texts.items():
      more_rows, more_rejected = _tokenized_rows({record: record_texts},
                                                 encode, special_tokens_in_text)
      rows += more_rows
      rejected += more_rejected
    return rows, rejected
  by_record, start = {}, 0
  for cut in cuts:
    row_ids = ids[start:start + len(cut.pieces)]
    start += len(cut.pieces)
    by_record.setdefault(cut.record, []).append(_assembled(cut, row_ids))
  rows, rejected = [], []
  for record, assembled in by_record.items():
    if all(row.supervised[1:].count(True) for row in assembled):
      rows += assembled
    else:
      rejected.append((record, ChatRejected(
          'no_assistant_turn',
          'the learned assistant messages yield no token after the first')))
  return rows, rejected


def _assembled(cut: _Cut, piece_ids: List[List[int]]) -> ChatRow:
  """A row's tokens and flags from its pieces' ids (in the pieces' order)."""
  tokens, flags = [], []
  for piece, ids in zip(cut.pieces, piece_ids):
    tokens += ids
    flags += [piece.learned] * len(ids)
  return ChatRow(cut.record, cut.row.suffix, tokens, flags, False,
                 tuple(cut.conversation.messages[index]
                       for index in cut.row.messages))


# ------------------------------------------------------------- truncation

def _fits(encode: Encode, max_seq_len: int, text: str) -> int:
  """0 when a row of `text` may fit max_seq_len, else its length in
  tokens (the whole text encoded at once). Texts of no more UTF-8 bytes
  than max_seq_len + 1 always fit: a token is at least a byte."""
  if len(text) <= (max_seq_len + 1) // 4 or len(
      text.encode('utf-8', 'surrogatepass')) <= max_seq_len + 1:
    return 0
  length = _length(encode, text)
  return length if length - 1 > max_seq_len else 0


def _length(encode: Encode, text: str) -> int:
  return len(encode([unmarked(text)], False)[0])


class _LongRow(NamedTuple):
  """A row over max_seq_len: its record, suffix and length in tokens."""
  record: int
  suffix: str
  length: int


def _fitted_rows(renderer, encode, settings: ChatSettings, conversations,
                 rows: List[ChatRow], long_rows: List[_LongRow]):
  """(rows that fit, rejections): rows over max_seq_len, and those found
  too long before they were built (`long_rows`), are replaced by their
  truncation; a record with a row that cannot fit is rejected whole."""
  limit = settings.max_seq_len
  long_rows = long_rows + [_LongRow(row.record, row.suffix, len(row.ids))
                           for row in rows if len(row.ids) - 1 > limit]
  fitted = [row for row in rows if len(row.ids) - 1 <= limit]
  failed = {}
  for long_row in long_rows:
    if long_row.record in failed:
      continue
    try:
      fitted.append(_truncated(renderer, encode, settings,
                               conversations[long_row.record], long_row))
    except ChatRejected as why:
      failed[long_row.record] = why
  fitted.sort(key=lambda row: (row.record, int(row.suffix[1:] or -1)))
  return ([row for row in fitted if row.record not in failed],
          list(failed.items()))


# Candidates past the first whose rendering fits that are built before
# giving up (each a row in full).
_EXTRA_TRIES = 4


def _turn_starts(messages) -> List[int]:
  """Index of each turn's first message: the first message after the
  leading system messages, then every later user message."""
  head = 0
  while head < len(messages) and messages[head]['role'] == 'system':
    head += 1
  return [head] + [index for index in range(head + 1, len(messages))
                   if messages[index]['role'] == 'user']


def _most_drops(conversation: Conversation, truncation: str) -> int:
  """How many whole turns can be dropped with a learnable message left
  (fewer drops always leave one too)."""
  starts = _turn_starts(conversation.messages)
  if truncation == 'output_right':
    first = min(conversation.learnable)
    return len(starts) - bisect.bisect_right(starts, first)
  return bisect.bisect_right(starts, max(conversation.learnable)) - 1


def _shortened(conversation: Conversation, truncation: str,
               dropped: int) -> Conversation:
  """The conversation without `dropped` whole turns (prompt_left: the
  earliest after the leading system messages; output_right: the last
  ones), keeping a learnable message (dropped <= _most_drops). Builds one
  candidate: truncation looks at O(log turns) of them."""
  messages = conversation.messages
  starts = _turn_starts(messages)
  head = starts[0]
  if truncation == 'output_right':
    cut = starts[len(starts) - dropped]
    kept = list(range(cut))
  else:
    kept = list(range(head)) + list(range(starts[dropped], len(messages)))
  new_index = {old: new for new, old in enumerate(kept)}
  learnable = frozenset(new_index[index] for index in conversation.learnable
                        if index in new_index)
  return conversation._replace(
      messages=tuple(messages[index] for index in kept), learnable=learnable)


def _row_unit(conversation: Conversation, row: _LongRow) -> Conversation:
  """The conversation a row renders: all of it (whole), or the messages up
  to its turn with only that turn learnable (per_turn)."""
  if not row.suffix:
    return conversation
  index = int(row.suffix[1:])
  return conversation._replace(messages=conversation.messages[:index + 1],
                               learnable=frozenset([index]))


def _truncated(renderer, encode, settings: ChatSettings,
               conversation: Conversation, row: _LongRow) -> ChatRow:
  """The row of the conversation with the fewest whole turns dropped
  that fits, flagged truncated; raises ChatRejected (too_long) when none
  does.

  Rows grow with the turns kept, so the fewest drops are found by
  bisection on the candidates' renderings (one render and one encode
  each, whatever the number of turns); then the rows of the candidates
  from there on are built until one fits (the first, but where cutting
  the text at learned spans makes the row a token longer).
  """
  too_long = ChatRejected('too_long', f'L = {row.length - 1} tokens > '
                          f'max_seq_len {settings.max_seq_len}')
  if settings.truncation == 'none':
    raise too_long
  unit = _row_unit(conversation, row)
  most = _most_drops(unit, settings.truncation)
  low, high = 1, most + 1
  while low < high:
    middle = (low + high) // 2
    text = renderer.render(_shortened(unit, settings.truncation, middle))
    if _length(encode, text) - 1 <= settings.max_seq_len:
      high = middle
    else:
      low = middle + 1
  for dropped in range(low, min(most, low + _EXTRA_TRIES) + 1):
    shorter = _candidate_row(renderer, encode, settings,
                             _shortened(unit, settings.truncation, dropped),
                             row)
    if len(shorter.ids) - 1 <= settings.max_seq_len:
      return shorter._replace(truncated=True)
  raise ChatRejected('too_long', f'{too_long}, and dropping whole turns '
                     f'({settings.truncation}) leaves none that fits with '
                     'an assistant message to learn')


def _candidate_row(renderer, encode, settings: ChatSettings,
                   candidate: Conversation, row: _LongRow) -> ChatRow:
  """The row of a shortened conversation; raises ChatRejected with the
  reason the shortened conversation fails for."""
  try:
    if row.suffix:
      texts = [row_of(renderer, candidate, sorted(candidate.learnable),
                      row.suffix)]
    else:
      texts = conversation_rows(renderer, candidate, settings.train_on,
                                'whole')
    rows, failed = _tokenized_rows({row.record: (candidate, texts)}, encode,
                                   settings.special_tokens_in_text)
  except ChatRejected as why:
    failed = [(row.record, why)]
  if failed:
    why = failed[0][1]
    raise ChatRejected(why.reason, f'after dropping turns to fit: {why}')
  return rows[0]
