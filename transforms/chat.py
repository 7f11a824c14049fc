"""Conversations as SFT rows: parsing, rendering with the chat template,
locating every message's content, and tokenizing segment by segment so that
the assistant turns are masked exactly (docs/chat.md has the semantics).

A chat record is `{"messages": [{"role", "content"}, ...]}`, or TRL's
`{"prompt": [messages], "completion": [messages]}` (only the completion's
assistant messages are supervised). Its row is the chat template applied to
the whole conversation. To know which characters of that text are whose,
the conversation is rendered a second time with a placeholder in place of
every content; putting the real contents back must give the real text, or
the record is rejected: a template that edits contents (Qwen3 drops
`<think>` blocks of earlier turns) is never guessed around.

The text is cut at the start and end of every content and after the first
special-token string following each assistant content (its end-of-turn
marker); each segment is tokenized on its own and the ids are joined.
Contents follow `special_tokens_in_text`; template text always maps
special-token strings to their special ids.

No Beam here: the pipeline's parse step calls `record_kind` and
`parse_conversation`, its tokenizing step `tokenize_conversations` on the
chat records of one chunk at a time.

Reason codes:
  invalid_messages  not a list, empty, a message that is not an object,
                    without a role or string content, an unknown role; or
                    the chat template refused the conversation
  invalid_unicode   a content holds a lone surrogate
  no_assistant_turn no assistant message to learn from
  no_chat_template  the tokenizer has no chat template and none was given
  template_changes_content  the template does not render every content
                    verbatim, exactly once
  too_long          the row does not fit max_seq_len (after truncation)
  tokenizer_error   the tokenizer raised on this record's texts
"""

import collections
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from sftbeam.transforms.sft import SPECIAL_TOKEN_MODES, TRUNCATION_MODES
from sftbeam.transforms.tokenizer_backend import (special_text_pattern,
                                                  special_token_strings)

ROLES = ('system', 'user', 'assistant', 'tool')
TRAIN_ON = ('assistant', 'last_assistant')
# Which records are conversations: decided per record by its fields, or
# every record one kind (a record of the other kind is rejected).
INPUT_FORMATS = ('auto', 'prompt_output', 'messages')

# Stands in for message i's content in the layout rendering. Any text works
# that templates leave alone; the check after substitution catches the rest.
_PLACEHOLDER = '[[sftbeam:content:{}]]'
_PLACEHOLDER_PATTERN = re.compile(r'\[\[sftbeam:content:(\d+)\]\]')
# The owner of template text that no message owns (never supervised).
_TEMPLATE = -1

Encode = Callable[[List[str], bool], List[List[int]]]


class ChatRejected(ValueError):
  """A conversation that cannot become a row; `reason` is its code."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


class Conversation(NamedTuple):
  """Checked messages (`{'role', 'content'}` dicts, nothing else); only
  assistant messages at `supervised_from` or later are learned (TRL's
  completion starts there; 0 for a `messages` record)."""
  messages: List[Dict[str, str]]
  supervised_from: int = 0


class TokenizedConversation(NamedTuple):
  """A row's token sequence and, token by token, whether it is learned.

  `assistant_turns` counts the supervised assistant messages in the row;
  `truncated` says whether whole turns were dropped to fit.
  """
  ids: List[int]
  supervised: List[bool]
  assistant_turns: int
  truncated: bool


# ---------------------------------------------------------------- parsing

def record_kind(obj, prompt_field: str = 'prompt',
                output_field: str = 'output') -> Optional[str]:
  """'chat', 'prompt_output' or None (neither) for a decoded JSON value.

  A `messages` array, or TRL's `prompt` and `completion` both arrays, make a
  chat record; a prompt or output field makes a prompt/output record. A
  `messages` field of another type counts as chat, so that it is rejected
  as invalid messages rather than as a missing prompt.
  """
  if not isinstance(obj, dict):
    return None
  if 'messages' not in obj and 'completion' not in obj:
    return 'prompt_output' if (prompt_field in obj or
                               output_field in obj) else None
  if isinstance(obj.get('messages'), list):
    return 'chat'
  if isinstance(obj.get('prompt'), list) and isinstance(
      obj.get('completion'), list):
    return 'chat'
  if prompt_field in obj or output_field in obj:
    return 'prompt_output'
  if 'messages' in obj:
    return 'chat'
  return None


def parse_conversation(obj: dict) -> Conversation:
  """The Conversation of a decoded chat record, or raises ChatRejected.

  Takes `{"messages": [...]}` or `{"prompt": [...], "completion": [...]}`
  (`messages` wins when both are there). Other keys of a message (`name`,
  `tool_calls`, ...) are dropped: the template sees role and content only.
  """
  if 'messages' in obj:
    messages = _checked_messages(obj['messages'], 'messages')
    supervised_from = 0
  else:
    prompt = _checked_messages(obj.get('prompt'), 'prompt', may_be_empty=True)
    messages = prompt + _checked_messages(obj.get('completion'), 'completion')
    supervised_from = len(prompt)
  conversation = Conversation(messages, supervised_from)
  if not _has_supervised_assistant(conversation):
    where = 'the completion' if supervised_from else 'the conversation'
    raise ChatRejected('no_assistant_turn',
                       f'{where} has no assistant message to learn from')
  return conversation


def json_type(value) -> str:
  """The JSON type of a decoded value, for messages ("a number"). By
  isinstance: the exact decoder gives objects as a dict subclass."""
  if value is None:
    return 'null'
  if isinstance(value, bool):
    return 'a boolean'
  if isinstance(value, (int, float)):
    return 'a number'
  if isinstance(value, str):
    return 'a string'
  return 'an array' if isinstance(value, list) else 'an object'


def _checked_messages(value, name: str, may_be_empty: bool = False) -> list:
  """Fresh `{'role', 'content'}` dicts of a messages array, or raises."""
  if not isinstance(value, list):
    raise ChatRejected('invalid_messages',
                       f'"{name}" is {json_type(value)}, not an array')
  if not value and not may_be_empty:
    raise ChatRejected('invalid_messages', f'"{name}" is an empty array')
  checked = []
  for index, message in enumerate(value):
    where = f'{name}[{index}]'
    if not isinstance(message, dict):
      raise ChatRejected('invalid_messages',
                         f'{where} is {json_type(message)}, not an object')
    if 'role' not in message:
      raise ChatRejected('invalid_messages', f'{where} has no "role"')
    role = message['role']
    if not isinstance(role, str) or role not in ROLES:
      raise ChatRejected('invalid_messages',
                         f'{where} has role {role!r}, not one of '
                         f'{", ".join(ROLES)}')
    content = message.get('content')
    if not isinstance(content, str):
      raise ChatRejected('invalid_messages',
                         f'{where} ({role}) has no string "content" '
                         f'(it is {json_type(content)})')
    if has_lone_surrogate(content):
      raise ChatRejected('invalid_unicode',
                         f'{where} ({role}) content holds a lone surrogate')
    checked.append({'role': role, 'content': content})
  return checked


def has_lone_surrogate(text: str) -> bool:
  """Whether `text` holds a surrogate without its pair (not UTF-8)."""
  if text.isascii():  # the common case, without an encoded copy
    return False
  try:
    text.encode('utf-8')
    return False
  except UnicodeEncodeError:
    return True


def _has_supervised_assistant(conversation: Conversation) -> bool:
  return any(message['role'] == 'assistant' for message in
             conversation.messages[conversation.supervised_from:])


def supervised_messages(conversation: Conversation, train_on: str):
  """Indices of the assistant messages whose tokens are learned."""
  messages, supervised_from = conversation
  assistants = [index for index in range(supervised_from, len(messages))
                if messages[index]['role'] == 'assistant']
  if train_on == 'last_assistant':
    assistants = assistants[-1:]
  return frozenset(assistants)


# ------------------------------------------------------ rendering, layout

def has_chat_template(tokenizer) -> bool:
  """Whether `tokenizer` carries a chat template of its own."""
  return bool(getattr(tokenizer, 'chat_template', None))


class _Layout(NamedTuple):
  """Where contents sit in a rendering, for one sequence of roles.

  The rendering is `pieces[0] + content(slots[0]) + pieces[1] + ...`:
  `pieces` is the template text, `slots` the message index of each content
  in text order. `segments` cuts the text into what is tokenized apart:
  `(template text, owner)`, or `(None, message index)` for a content; an
  assistant's end-of-turn text is owned by that assistant, other template
  text by _TEMPLATE.
  """
  pieces: Tuple[str, ...]
  slots: Tuple[int, ...]
  segments: Tuple[Tuple[Optional[str], int], ...]


def _layout(rendering: str, roles: Sequence[str], special_pattern) -> _Layout:
  """The layout of a placeholder rendering, or raises ChatRejected when a
  content is missing from it or there more than once."""
  parts = _PLACEHOLDER_PATTERN.split(rendering)
  pieces, slots = tuple(parts[0::2]), tuple(map(int, parts[1::2]))
  counts = collections.Counter(slots)
  for index, role in enumerate(roles):
    if counts[index] != 1:
      raise ChatRejected(
          'template_changes_content',
          f'the chat template renders the content of messages[{index}] '
          f'({role}) {counts[index]} times, not once')
  if len(slots) != len(roles):
    raise ChatRejected('template_changes_content',
                       'the chat template renders a content placeholder of '
                       'its own')
  segments = [(pieces[0], _TEMPLATE)]
  for slot, piece in zip(slots, pieces[1:]):
    turn_end = 0
    if roles[slot] == 'assistant' and special_pattern is not None:
      marker = special_pattern.search(piece)
      if marker is not None:
        turn_end = marker.end()
    segments += [(None, slot), (piece[:turn_end], slot),
                 (piece[turn_end:], _TEMPLATE)]
  return _Layout(pieces, slots,
                 tuple(segment for segment in segments if segment[0] != ''))


def _with_contents(layout: _Layout, messages) -> str:
  """The layout's text with the real contents put back."""
  parts = [layout.pieces[0]]
  for slot, piece in zip(layout.slots, layout.pieces[1:]):
    parts += (messages[slot]['content'], piece)
  return ''.join(parts)


def _where_it_changes(layout: _Layout, messages, rendering: str) -> str:
  """Where the real rendering first departs from the layout with the
  contents put back, for the rejection message (rejected records only).

  A difference in template text is put on the content that follows it: a
  template's text depends mostly on the message it introduces.
  """
  expected = _with_contents(layout, messages)
  position = next((index for index, (want, got) in
                   enumerate(zip(expected, rendering)) if want != got),
                  min(len(expected), len(rendering)))
  end, culprit = 0, layout.slots[-1]
  for piece, slot in zip(layout.pieces, layout.slots):
    end += len(piece) + len(messages[slot]['content'])
    if position < end:
      culprit = slot
      break
  return (f'near messages[{culprit}] ({messages[culprit]["role"]}), at '
          f'character {position}: {rendering[position:position + 24]!r} '
          f'where {expected[position:position + 24]!r} was expected')


class _Settings(NamedTuple):
  tokenizer: object
  encode: Encode
  template: Optional[str]
  split_contents: bool  # contents' special-token strings as plain text
  train_on: str
  special_pattern: object


def _render(settings: _Settings, message_lists) -> list:
  """The template applied to each messages list: a str, or ChatRejected
  when the template raises on it. One call for all; one each after a
  failure, to find the culprits."""
  def apply(conversations):
    return settings.tokenizer.apply_chat_template(
        conversations, tokenize=False, add_generation_prompt=False,
        chat_template=settings.template)

  try:
    return apply(list(message_lists))
  except Exception:  # pylint: disable=broad-except
    rendered = []
    for messages in message_lists:
      try:
        rendered.append(apply([messages])[0])
      except Exception as error:  # pylint: disable=broad-except
        rendered.append(ChatRejected(
            'invalid_messages', 'the chat template refused the '
            f'conversation: {type(error).__name__}: {error}'))
    return rendered


def _layouts(settings: _Settings, conversations) -> list:
  """A _Layout per conversation, or ChatRejected.

  Conversations with the same roles in the same order share a layout: their
  placeholder renderings are the same text, so each is rendered once.
  """
  roles_of = [tuple(message['role'] for message in conversation.messages)
              for conversation in conversations]
  distinct = list(dict.fromkeys(roles_of))
  renderings = _render(settings, [
      [{'role': role, 'content': _PLACEHOLDER.format(index)}
       for index, role in enumerate(roles)] for roles in distinct])
  by_roles = {}
  for roles, rendering in zip(distinct, renderings):
    try:
      if isinstance(rendering, ChatRejected):
        raise rendering
      by_roles[roles] = _layout(rendering, roles, settings.special_pattern)
    except ChatRejected as rejected:
      by_roles[roles] = rejected
  return [by_roles[roles] for roles in roles_of]


def _checked_layouts(settings: _Settings, conversations) -> list:
  """A _Layout per conversation whose real rendering is its layout with the
  contents put back, else the ChatRejected saying why not."""
  layouts = _layouts(settings, conversations)
  renderings = _render(settings, [conversation.messages
                                  for conversation in conversations])
  checked = []
  for conversation, layout, rendering in zip(conversations, layouts,
                                             renderings):
    if isinstance(rendering, ChatRejected):
      layout = rendering
    elif (not isinstance(layout, ChatRejected) and
          _with_contents(layout, conversation.messages) != rendering):
      where = _where_it_changes(layout, conversation.messages, rendering)
      layout = ChatRejected(
          'template_changes_content',
          'the chat template does not render the contents verbatim, so '
          'their tokens cannot be located (Qwen3 drops <think> blocks of '
          'earlier answers and leading newlines of the last one); it '
          f'differs {where}')
    checked.append(layout)
  return checked


# ------------------------------------------------------------- tokenizing

def _segment_texts(conversation: Conversation, layout: _Layout):
  """(template texts, content texts) of a conversation, in text order;
  empty contents are left out (they have no tokens)."""
  templates, contents = [], []
  for text, owner in layout.segments:
    if text is not None:
      templates.append(text)
    elif conversation.messages[owner]['content']:
      contents.append(conversation.messages[owner]['content'])
  return templates, contents


def _encoded_segments(settings: _Settings, texts):
  """(ids of each distinct template text, iterator over content ids) for
  `texts`, (templates, contents) pairs, in one encode call per mode."""
  templates = list(dict.fromkeys(
      text for template_texts, _ in texts for text in template_texts))
  contents = [text for _, content_texts in texts for text in content_texts]
  if settings.split_contents:
    template_ids = settings.encode(templates, False)
    content_ids = settings.encode(contents, True)
  else:
    encoded = settings.encode(templates + contents, False)
    template_ids = encoded[:len(templates)]
    content_ids = encoded[len(templates):]
  if len(template_ids) + len(content_ids) != len(templates) + len(contents):
    raise ValueError('encode gave a different number of id lists than texts')
  return dict(zip(templates, template_ids)), iter(content_ids)


def _assembled(conversation: Conversation, layout: _Layout, template_ids,
               content_ids, train_on: str) -> TokenizedConversation:
  """The row of one conversation from its segments' ids, or raises
  ChatRejected when no learned token remains to be a label."""
  supervised = supervised_messages(conversation, train_on)
  ids, flags = [], []
  for text, owner in layout.segments:
    if text is not None:
      segment = template_ids[text]
    elif conversation.messages[owner]['content']:
      segment = next(content_ids)
    else:
      continue
    ids += segment
    flags += [owner in supervised] * len(segment)
  # The first token is never a label: a row needs a learned token after it.
  if True not in flags[1:]:
    raise ChatRejected('no_assistant_turn',
                       'the supervised assistant messages yield no tokens')
  return TokenizedConversation(ids, flags, len(supervised), False)


def _tokenized(settings: _Settings, conversations) -> list:
  """A TokenizedConversation (not yet fitted) or a ChatRejected for each
  conversation: all rendered first, then all segments encoded at once."""
  layouts = _checked_layouts(settings, conversations)
  good = [index for index, layout in enumerate(layouts)
          if not isinstance(layout, ChatRejected)]
  texts = [_segment_texts(conversations[index], layouts[index])
           for index in good]
  try:
    template_ids, content_ids = _encoded_segments(settings, texts)
  except Exception as error:  # pylint: disable=broad-except
    results = list(layouts)
    for index in good:
      # Each on its own, so that only the culprit is rejected.
      results[index] = (
          ChatRejected('tokenizer_error', f'{type(error).__name__}: {error}')
          if len(good) == 1 else
          _tokenized(settings, [conversations[index]])[0])
    return results
  results = list(layouts)
  for index in good:
    try:
      results[index] = _assembled(conversations[index], layouts[index],
                                  template_ids, content_ids, settings.train_on)
    except ChatRejected as rejected:
      results[index] = rejected
  return results


# -------------------------------------------------------------- truncation

def _turn_starts(messages) -> List[int]:
  """Index of each turn's first message: the first message after the
  leading system messages, then every later user message."""
  head = 0
  while messages[head]['role'] == 'system':
    head += 1
  return [head] + [index for index in range(head + 1, len(messages))
                   if messages[index]['role'] == 'user']


def _shorter_conversations(conversation: Conversation,
                           truncation: str) -> List[Conversation]:
  """The conversation with one, two, ... whole turns dropped (fewest
  first), each keeping a supervised assistant message."""
  messages, supervised_from = conversation
  starts = _turn_starts(messages)
  head = starts[0]
  if truncation == 'output_right':
    shorter = [Conversation(messages[:start], supervised_from)
               for start in reversed(starts[1:])]
  else:
    # Kept: the leading system messages and the turns from `start` on.
    shorter = [Conversation(messages[:head] + messages[start:],
                            min(supervised_from, head) +
                            max(0, supervised_from - start))
               for start in starts[1:]]
  return [candidate for candidate in shorter
          if _has_supervised_assistant(candidate)]


def _fitted(settings: _Settings, conversation: Conversation,
            row: TokenizedConversation, max_seq_len: int,
            truncation: str) -> TokenizedConversation:
  """`row` if it fits (L = len(ids) - 1 <= max_seq_len), else the row of
  the conversation with the fewest whole turns dropped that fits; raises
  ChatRejected (too_long) when none does.

  Rows grow with the turns kept, so the fewest drops are found by
  bisection, each candidate rendered and tokenized again from scratch.
  """
  length = len(row.ids) - 1
  if length <= max_seq_len:
    return row
  too_long = ChatRejected('too_long', f'L = {length} tokens > max_seq_len '
                          f'{max_seq_len}')
  if truncation == 'none':
    raise too_long
  candidates = _shorter_conversations(conversation, truncation)
  low, high, fitting = 0, len(candidates), None
  while low < high:
    middle = (low + high) // 2
    shorter = _tokenized(settings, [candidates[middle]])[0]
    if isinstance(shorter, ChatRejected):
      raise ChatRejected(shorter.reason,
                         f'after dropping turns to fit: {shorter}')
    if len(shorter.ids) - 1 <= max_seq_len:
      fitting, high = shorter, middle
    else:
      low = middle + 1
  if fitting is None:
    raise ChatRejected('too_long', f'{too_long}, and dropping whole turns '
                       f'({truncation}) leaves none that fits with an '
                       'assistant message to learn')
  return fitting._replace(truncated=True)


# --------------------------------------------------------------- the call

def tokenize_conversations(conversations: Sequence[Conversation], *,
                           tokenizer, encode: Encode,
                           special_tokens_in_text: str, train_on: str,
                           max_seq_len: int, truncation: str,
                           chat_template: Optional[str] = None) -> list:
  """A TokenizedConversation or a ChatRejected for each conversation.

  Args:
    conversations: from `parse_conversation`.
    tokenizer: a HuggingFace tokenizer; renders with its
      `apply_chat_template` and gives the special-token strings.
    encode: `encode(texts, split_special_tokens) -> ids per text`, without
      the tokenizer's own special tokens (add_special_tokens=False).
    special_tokens_in_text: 'text' (special-token strings in contents are
      plain text) or 'special' (they become special ids).
    train_on: 'assistant' (every supervised assistant message) or
      'last_assistant'.
    max_seq_len: the longest L = len(ids) - 1 kept.
    truncation: 'none', 'output_right' (drop trailing turns) or
      'prompt_left' (drop the earliest turns after the system messages).
    chat_template: Jinja source of the template to use instead of the
      tokenizer's own.

  Every conversation is rendered first (one template call for the
  conversations, one for their distinct role sequences' layouts), then
  all template segments and all content segments are encoded in one call
  per mode; only a conversation that must be truncated is rendered again.
  """
  _check_settings(special_tokens_in_text, train_on, truncation)
  conversations = list(conversations)
  if not conversations:
    return []
  if chat_template is None and not has_chat_template(tokenizer):
    return [ChatRejected('no_chat_template',
                         'the tokenizer has no chat template and no '
                         'chat_template file is given')] * len(conversations)
  settings = _Settings(tokenizer, encode, chat_template,
                       special_tokens_in_text == 'text', train_on,
                       special_text_pattern(special_token_strings(tokenizer)))
  results = _tokenized(settings, conversations)
  for index, (conversation, row) in enumerate(zip(conversations, results)):
    if isinstance(row, ChatRejected):
      continue
    try:
      results[index] = _fitted(settings, conversation, row, max_seq_len,
                               truncation)
    except ChatRejected as rejected:
      results[index] = rejected
  return results


def _check_settings(special_tokens_in_text, train_on, truncation):
  for name, value, allowed in (
      ('special_tokens_in_text', special_tokens_in_text,
       SPECIAL_TOKEN_MODES), ('train_on', train_on, TRAIN_ON),
      ('truncation', truncation, TRUNCATION_MODES)):
    if value not in allowed:
      raise ValueError(f'{name} must be one of {", ".join(allowed)}, '
                       f'not {value!r}')
