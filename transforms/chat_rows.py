"""What a conversation's row says and what it learns: the row's text and
its learned character spans, before any tokenizing (docs/chat.md).

The row's text is the chat template applied to the conversation, as
`apply_chat_template(messages, tools=tools, **kwargs)` renders it. For
each learned assistant message i, the learned text is what the model must
generate after the generation prompt: the row's text from where
`apply_chat_template(messages[:i], add_generation_prompt=True)` ends (or
from where the row first departs from it, within the generation prompt)
through the end-of-turn token that closes the message (`<|im_end|>`; the
newline after it is context). `per_turn` rows are one row per learned
message i: the row of `messages[:i + 1]` with only message i learned.

Nothing the record holds is left out silently: a row that would not hold
a non-empty `tools`, a message's `tool_calls`, reasoning or other field,
or a `<think>` block written inside a content (the template renders the
same text without it) is rejected `template_drops_field`.

Special-token strings inside the record's own strings are wrapped in
MARK_START/MARK_END before rendering (as HuggingFace's
`sanitize_control_tokens` does), so that they are never taken for the
template's end-of-turn tokens, and the tokenizer can treat them as
`special_tokens_in_text` says.

Reason codes:
  invalid_messages  the chat template refused the conversation (raised)
  chat_template_limit  a render ran longer, or wrote more, than allowed
  template_drops_field  the row would not hold a field of the record
  template_rewrites_history  the template writes the history before a
                    learned message otherwise than its generation prompt
                    does (`--chat_rows per_turn` keeps each turn's view)
  template_no_turn_end  no end-of-turn token after a learned message
  template_changes_content  the rendering differs when special-token
                    text in the record is marked as data
  invalid_unicode   a string holds a marker character (U+FDD0, U+FDD1)
                    beside special-token text
"""

import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from sftbeam.transforms.chat_records import (LEARNING_KEYS, ChatRejected,
                                             Conversation, chat_strings)
from sftbeam.transforms.chat_template import (REASONING_FIELDS, ChatTemplate,
                                              RenderLimit)

CHAT_ROWS = ('whole', 'per_turn')
TRAIN_ON = ('assistant', 'last_assistant')
# Unicode noncharacters: wrap special-token strings that come from data.
MARK_START, MARK_END = '\ufdd0', '\ufdd1'
# Message keys that identify rather than inform (pairing calls with
# results): a template may leave them out.
IDENTIFYING_KEYS = frozenset(('role', 'name', 'tool_call_id', 'id'))
_THINK_BLOCK = re.compile(r'\s*<think>(.*?)</think>\s*', re.DOTALL)
# Contents that must be written for the probe to find the end of a turn.
_PROBE_ANSWER = 'sftbeam probe answer {}'


class RowText(NamedTuple):
  """A row before tokenizing.

  text: the rendering, with data's special-token strings marked.
  learned: (start, end) character spans of `text` that are learned, in
    order; `messages` gives each span's message index.
  suffix: '' for a whole row, '#i' for the per_turn row of message i.
  """
  text: str
  learned: Tuple[Tuple[int, int], ...]
  messages: Tuple[int, ...]
  suffix: str = ''


class Renderer:
  """The chat template of a run, and what it takes to cut its rows.

  Args:
    template: the compiled template.
    special_tokens: the tokenizer's special-token strings.
    token_ends: `token_ends(text)`: where each token of `text` ends (its
      character offsets), to cut a generation prompt between tokens.
    run_kwargs: the run's chat_template_kwargs (a record's override them).
  Raises ValueError when the template cannot render a plain conversation,
  or writes no special token after an assistant answer (then where a turn
  ends is unknown).
  """

  def __init__(self, template: ChatTemplate, special_tokens: Sequence[str],
               token_ends: Callable[[str], List[int]],
               run_kwargs: Optional[Dict] = None):
    self.template = template
    self.token_ends = token_ends
    self.run_kwargs = dict(run_kwargs or {})
    self.special_tokens = tuple(sorted(special_tokens, key=len, reverse=True))
    self._special = (re.compile('|'.join(map(re.escape, self.special_tokens)))
                     if self.special_tokens else None)
    self.turn_ends = self._probe_turn_ends()

  def render(self, conversation: Conversation, messages=None,
             generation_prompt: bool = False) -> str:
    """The template on `messages` (default: all of the conversation's),
    with the conversation's tools and kwargs; rejections as ChatRejected."""
    kwargs = {**self.run_kwargs, **conversation.template_kwargs}
    try:
      return self.template.render(
          conversation.messages if messages is None else messages,
          conversation.tools, kwargs, generation_prompt)
    except RenderLimit as error:
      raise ChatRejected('chat_template_limit', str(error)) from None
    except Exception as error:  # pylint: disable=broad-except
      raise ChatRejected('invalid_messages',
                         'the chat template refused the conversation: '
                         f'{type(error).__name__}: {error}') from None

  def _probe_turn_ends(self) -> Tuple[str, ...]:
    """The special tokens the template writes right after an answer."""
    probes = ([('user', 'A'), ('assistant', 0)],
              [('user', 'A'), ('assistant', 0), ('user', 'B'),
               ('assistant', 1)],
              [('system', 'S'), ('user', 'A'), ('assistant', 0)])
    ends, errors = set(), []
    for probe in probes:
      messages = [{'role': role, 'content': _PROBE_ANSWER.format(content)
                   if role == 'assistant' else content}
                  for role, content in probe]
      try:
        text = self.template.render(messages, None, self.run_kwargs)
      except Exception as error:  # pylint: disable=broad-except
        errors.append(f'{type(error).__name__}: {error}')
        continue
      for message in messages:
        if message['role'] == 'assistant' and message['content'] in text:
          after = text.index(message['content']) + len(message['content'])
          found = self._special and self._special.search(text, after)
          if found:
            ends.add(found.group())
    if len(errors) == len(probes):
      raise ValueError('the chat template fails on a plain conversation '
                       f'(user, assistant): {errors[0]}')
    if not ends:
      raise ValueError('the chat template writes no special token after an '
                       "assistant's answer, so where a turn ends is unknown")
    return tuple(sorted(ends, key=len, reverse=True))

  def marked(self, conversation: Conversation) -> Conversation:
    """The conversation with special-token strings in its strings wrapped
    in MARK_START/MARK_END (itself when it holds none)."""
    if self._special is None or not any(
        self._special.search(text) for text in chat_strings(conversation)):
      return conversation
    if any(MARK_START in text or MARK_END in text
           for text in chat_strings(conversation)):
      raise ChatRejected('invalid_unicode',
                         'the record holds special-token text and U+FDD0 or '
                         'U+FDD1, the characters sftbeam marks it with')
    mark = lambda value: _map_strings(value, lambda text: self._special.sub(
        lambda match: MARK_START + match.group() + MARK_END, text))
    return conversation._replace(
        messages=tuple({key: (value if key == 'role' else mark(value))
                        for key, value in message.items()}
                       for message in conversation.messages),
        tools=mark(conversation.tools),
        template_kwargs=mark(conversation.template_kwargs))


def unmarked(text: str) -> str:
  return text.replace(MARK_START, '').replace(MARK_END, '')


def learned_messages(conversation: Conversation, train_on: str) -> List[int]:
  """Indices of the assistant messages learned, in order."""
  learned = sorted(conversation.learnable)
  return learned[-1:] if train_on == 'last_assistant' else learned


class TooLong(ChatRejected):
  """A whole row whose rendering alone is longer than the row may be:
  raised before the row's learned spans are looked for (a render per
  learned message), so that truncation starts at once."""

  def __init__(self, length: int):
    super().__init__('too_long', f'L = {length - 1} tokens (the whole '
                     'rendering)')
    self.length = length


def conversation_rows(renderer: Renderer, conversation: Conversation,
                      train_on: str, chat_rows: str,
                      fits: Optional[Callable[[str], int]] = None
                      ) -> List[RowText]:
  """The rows of a conversation (one, or one per learned message), or
  raises ChatRejected.

  `fits(text)`: 0 when a whole row's rendering may fit, else its length
  in tokens (TooLong is raised then).
  """
  learned = learned_messages(conversation, train_on)
  marked = renderer.marked(conversation)
  if chat_rows == 'whole':
    text = renderer.render(marked)
    length = fits(text) if fits else 0
    if length:
      raise TooLong(length)
    rows = [_whole_row(renderer, marked, learned, text)]
    counts = [len(marked.messages)]
  else:
    rows = [_row(renderer, _first(marked, index + 1), [index], f'#{index}')
            for index in learned]
    counts = [index + 1 for index in learned]
  _refuse_drops(renderer, marked, list(zip(rows, counts)),
                learned if chat_rows == 'whole' else None)
  if marked is not conversation:
    _check_marking_changes_nothing(renderer, conversation, rows)
  return rows


def row_of(renderer: Renderer, conversation: Conversation,
           learned: Sequence[int], suffix: str = '') -> RowText:
  """The row of a whole (possibly shortened) conversation learning the
  messages `learned`; for truncation, which drops turns and renders again."""
  return _row(renderer, renderer.marked(conversation), list(learned), suffix)


def _whole_row(renderer, conversation, learned, text: str) -> RowText:
  """The whole row; a rewritten history says whether per_turn rows
  would take the conversation."""
  try:
    return _row(renderer, conversation, learned, text=text)
  except ChatRejected as why:
    if why.reason != 'template_rewrites_history' or not all(
        _row_or_none(renderer, _first(conversation, index + 1), [index])
        for index in learned):
      raise
    raise ChatRejected(why.reason, f'{why}; --chat_rows per_turn writes each '
                       'turn as the model sees it') from None


def _row_or_none(renderer, conversation, learned) -> Optional[RowText]:
  try:
    return _row(renderer, conversation, learned)
  except ChatRejected:
    return None


def _first(conversation: Conversation, count: int) -> Conversation:
  return conversation._replace(messages=conversation.messages[:count])


# ------------------------------------------------------- learned spans

def _row(renderer: Renderer, conversation: Conversation,
         learned: List[int], suffix: str = '',
         text: Optional[str] = None) -> RowText:
  if text is None:
    text = renderer.render(conversation)
  spans, end = [], 0
  for index in learned:
    start = _learned_start(renderer, conversation, index, text)
    if start < end:
      raise ChatRejected('template_rewrites_history',
                         f'messages[{index}] starts inside the text learned '
                         'for the message before it')
    end = _turn_end(renderer, text, start, index)
    spans.append((start, end))
  return RowText(text, tuple(spans), tuple(learned), suffix)


def _learned_start(renderer, conversation, index: int, text: str) -> int:
  """Where message `index`'s learned text starts in `text`: where the
  generation prompt after messages[:index] ends; or, where `text` departs
  from it inside the generation prompt, after the last of the prompt's
  tokens that `text` writes too (Qwen3's `enable_thinking: false` prompt
  ends in an empty think block that earlier answers do not have)."""
  history = conversation.messages[:index]
  if not history:
    raise ChatRejected('invalid_messages',
                       f'messages[{index}] (assistant) comes first: there is '
                       'no prompt for it to answer')
  prompt = renderer.render(conversation, history, generation_prompt=True)
  if text.startswith(prompt):
    return len(prompt)
  common = _common_prefix_length(prompt, text)
  written = renderer.render(conversation, history)
  if prompt.startswith(written) and common >= len(written):
    generation = prompt[len(written):]
    return len(written) + max([0] + [
        end for end in renderer.token_ends(generation)
        if end <= common - len(written)])
  raise ChatRejected(
      'template_rewrites_history',
      f'the template writes the history before messages[{index}] otherwise '
      'in the row than in the generation prompt of messages[{index}] (at '
      f'character {common}: {text[common:common + 24]!r} where the prompt '
      f'has {prompt[common:common + 24]!r})'.replace('{index}', str(index)))


def _common_prefix_length(first: str, second: str) -> int:
  """The length of the longest common prefix, by bisection on
  `startswith` (C speed on long texts)."""
  low, high = 0, min(len(first), len(second))
  while low < high:
    middle = (low + high + 1) // 2
    if second.startswith(first[:middle]):
      low = middle
    else:
      high = middle - 1
  return low


def _turn_end(renderer: Renderer, text: str, start: int, index: int) -> int:
  """The end of the first end-of-turn token the template wrote at or
  after `start` (never one marked as the record's own text)."""
  best = None
  for token in renderer.turn_ends:
    at = text.find(token, start)
    while at > 0 and text[at - 1] == MARK_START:
      at = text.find(token, at + len(token))
    if at >= 0 and (best is None or at < best[0]):
      best = (at, at + len(token))
  if best is None:
    raise ChatRejected('template_no_turn_end',
                       f'no end-of-turn token ({", ".join(renderer.turn_ends)}'
                       f') follows messages[{index}] (assistant)')
  return best[1]


# ------------------------------------------------------- nothing dropped

class _Field(NamedTuple):
  """A part of the record a row must hold: `what` names it, `message` is
  its message's index (None: the record's tools), `without` gives the
  conversation without it."""
  what: str
  message: Optional[int]
  without: Callable[[Conversation], Conversation]


def _fields(conversation: Conversation) -> List[_Field]:
  """The parts of the record a template could leave out that must be in
  the row: tools, each message's non-identifying keys, a `<think>` block
  inside a content, and contents not found verbatim in the rendering
  (checked only when absent from it; see _refuse_drops)."""
  fields = []
  if conversation.tools:
    fields.append(_Field('tools', None, lambda c: c._replace(tools=None)))
  for index, message in enumerate(conversation.messages):
    for key in _informing_keys(message):
      keys = REASONING_FIELDS if key in REASONING_FIELDS else (key,)
      fields.append(_Field(f'"{key}"', index, _without_keys(index, keys)))
    think = _THINK_BLOCK.search(message['content'])
    if think and think.group(1).strip():
      fields.append(_Field('the <think> block in "content"', index,
                           _without_think(index)))
  return fields


def _informing_keys(message: Dict) -> List[str]:
  """Keys whose non-blank value the row must hold (one reasoning key)."""
  keys = [key for key, value in message.items()
          if key not in IDENTIFYING_KEYS and key != 'content' and
          key not in LEARNING_KEYS and not _blank(value)]
  reasoning = [key for key in keys if key in REASONING_FIELDS]
  return [key for key in keys if key not in REASONING_FIELDS] + reasoning[:1]


def _blank(value) -> bool:
  """Nothing a row could show: null, whitespace, or an empty array or
  object (whitespace a template trims is not dropped)."""
  if value is None:
    return True
  if isinstance(value, str):
    return not value.strip()
  if isinstance(value, (list, dict)):
    return not value
  return False


def _without_keys(index: int, keys) -> Callable:
  def without(conversation):
    messages = list(conversation.messages)
    messages[index] = {key: value for key, value in messages[index].items()
                       if key not in keys}
    return conversation._replace(messages=tuple(messages))
  return without


def _without_think(index: int) -> Callable:
  def without(conversation):
    messages = list(conversation.messages)
    content = messages[index]['content']
    messages[index] = {**messages[index],
                       'content': _THINK_BLOCK.sub('', content, count=1)}
    return conversation._replace(messages=tuple(messages))
  return without


def _without_content(index: int) -> Callable:
  def without(conversation):
    messages = list(conversation.messages)
    messages[index] = {**messages[index], 'content': ''}
    return conversation._replace(messages=tuple(messages))
  return without


def _held(renderer, conversation, field: _Field, row: RowText,
          count: int) -> bool:
  """Whether `row` (of the first `count` messages) holds `field`: its
  rendering without the field differs."""
  shortened = _first(conversation, count)
  return renderer.render(field.without(shortened)) != row.text


def _refuse_drops(renderer: Renderer, conversation: Conversation,
                  rows: List[Tuple[RowText, int]],
                  whole_learned: Optional[List[int]]):
  """Raises template_drops_field unless every field of the record is held
  by a row that holds its message (`rows`: each row with the number of
  messages it renders). `whole_learned`: the learned messages of a whole
  row, to tell whether per_turn rows would keep a dropped field."""
  fields = _fields(conversation)
  for index, message in enumerate(conversation.messages):
    content = message['content'].strip()
    if content and not any(unmarked(content) in unmarked(row.text)
                           for row, _ in rows):
      fields.append(_Field('"content"', index, _without_content(index)))
  for field in fields:
    first = 0 if field.message is None else field.message
    candidates = [(row, count) for row, count in rows if count > first]
    if not any(_held(renderer, conversation, field, row, count)
               for row, count in candidates):
      raise ChatRejected('template_drops_field',
                         _drop_message(renderer, conversation, field,
                                       candidates, whole_learned))


def _drop_message(renderer, conversation, field: _Field, rows,
                  whole_learned) -> str:
  where = ('the record' if field.message is None else
           f'messages[{field.message}] '
           f'({conversation.messages[field.message]["role"]})')
  if not rows:
    return (f'no per_turn row holds {field.what} of {where}: it comes after '
            'the last learned message')
  text = (f'the chat template leaves out {field.what} of {where}: the row '
          'is the same without it')
  if _per_turn_keeps(renderer, conversation, field, whole_learned):
    text += '; --chat_rows per_turn keeps it (one row per learned turn)'
  return text


def _per_turn_keeps(renderer, conversation, field: _Field,
                    whole_learned) -> bool:
  """Whether the per_turn row of the first learned message at or after
  the field's message holds the field a whole row drops."""
  if not whole_learned or field.message is None:
    return False
  count = next((index + 1 for index in whole_learned
                if index >= field.message), None)
  if count is None:
    return False
  try:
    row = _row(renderer, _first(conversation, count), [count - 1])
    return _held(renderer, conversation, field, row, count)
  except ChatRejected:
    return False


def _check_marking_changes_nothing(renderer, conversation, rows):
  """The template must render the marked record as the record itself."""
  for row in rows:
    count = (row.messages[-1] + 1 if row.suffix else
             len(conversation.messages))
    if unmarked(row.text) != renderer.render(_first(conversation, count)):
      raise ChatRejected('template_changes_content',
                         'the chat template renders this record differently '
                         'when its special-token text is marked as data')


# ---------------------------------------------------------------- strings

def _map_strings(value, function):
  if isinstance(value, str):
    return function(value)
  if isinstance(value, dict):
    return {key: _map_strings(item, function) for key, item in value.items()}
  if isinstance(value, list):
    return [_map_strings(item, function) for item in value]
  return value
