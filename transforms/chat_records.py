"""Chat records: telling them apart from prompt/output records, and
checking everything the chat template will see (docs/chat.md).

A chat record is `{"messages": [...]}`, or TRL's `{"prompt": [messages],
"completion": [messages]}` (only the completion's assistant messages are
learned), with optionally a record-level `tools` list and
`chat_template_kwargs` object. Every key of a message reaches the
template as given (`tool_calls`, `reasoning_content`, `name`,
`tool_call_id`, ...), except `weight` and `train`, which say whether an
assistant message is learned. Nothing here renders or tokenizes:
`parse_conversation` gives a Conversation or raises ChatRejected.

Reason codes:
  invalid_messages  not a list, empty, a message that is not an object,
                    without a role, an unknown role, a content that is not
                    a string (null is allowed beside tool_calls), a bad
                    weight/train, name, tool_call_id or reasoning
  invalid_tools     `tools` is not a list of tool objects (or JSON text of
                    one), or a tool without a name
  invalid_tool_calls  `tool_calls` is not a list of calls, each naming a
                    function, with arguments an object or JSON text of one
  invalid_chat_template_kwargs  not an object, or a key the template call
                    itself owns (`messages`, `tools`, ...)
  invalid_unicode   a string holds a lone surrogate
  no_assistant_turn no assistant message to learn from
"""

import json
from typing import Dict, FrozenSet, List, NamedTuple, Optional, Tuple

from sftbeam.transforms.chat_template import REASONING_FIELDS

ROLES = ('system', 'user', 'assistant', 'tool')
# Which records are conversations: decided per record by its fields, or
# every record one kind (a record of the other kind is rejected).
INPUT_FORMATS = ('auto', 'prompt_output', 'messages')
# Keys a chat record reads (besides the id field).
RECORD_KEYS = ('messages', 'prompt', 'completion', 'tools',
               'chat_template_kwargs')
# Message keys sftbeam reads itself; the template never sees them.
LEARNING_KEYS = ('weight', 'train')
# Keys apply_chat_template itself takes: a template kwarg may not be one.
RESERVED_TEMPLATE_KWARGS = frozenset((
    'messages', 'conversation', 'tools', 'documents', 'add_generation_prompt',
    'continue_final_message', 'chat_template', 'tokenize', 'padding',
    'truncation', 'max_length', 'return_tensors', 'return_dict',
    'return_assistant_tokens_mask', 'tokenizer_kwargs'))


class ChatRejected(ValueError):
  """A conversation that cannot become a row; `reason` is its code."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


class Conversation(NamedTuple):
  """A checked chat record.

  messages: what the template sees: each message's keys as given, but
    `weight`/`train`, and a null content beside tool_calls as ''.
  learnable: indices of the assistant messages that may be learned (in
    TRL's completion, and not switched off by weight 0 / train false).
  tools: the record's tools as a list of objects, or None.
  template_kwargs: the record's chat_template_kwargs ({} without).
  """
  messages: Tuple[Dict, ...]
  learnable: FrozenSet[int]
  tools: Optional[List[Dict]] = None
  template_kwargs: Dict = {}


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


def has_lone_surrogate(text: str) -> bool:
  """Whether `text` holds a surrogate without its pair (not UTF-8)."""
  if text.isascii():  # the common case, without an encoded copy
    return False
  try:
    text.encode('utf-8')
    return False
  except UnicodeEncodeError:
    return True


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
  (`messages` wins when both are there), and `tools` and
  `chat_template_kwargs` beside them.
  """
  if 'messages' in obj:
    messages, switches = _checked_messages(obj['messages'], 'messages')
    supervised_from = 0
  else:
    messages, switches = _checked_messages(obj.get('prompt'), 'prompt',
                                           may_be_empty=True)
    supervised_from = len(messages)
    completion, completion_switches = _checked_messages(
        obj.get('completion'), 'completion')
    messages += completion
    switches += completion_switches
  learnable = frozenset(
      index for index in range(supervised_from, len(messages))
      if messages[index]['role'] == 'assistant' and switches[index])
  if not learnable:
    where = 'the completion' if supervised_from else 'the conversation'
    raise ChatRejected('no_assistant_turn',
                       f'{where} has no assistant message to learn from '
                       '(none, or each has weight 0 / train false)')
  conversation = Conversation(tuple(messages), learnable,
                              checked_tools(obj.get('tools')),
                              checked_template_kwargs(
                                  obj.get('chat_template_kwargs')))
  _refuse_lone_surrogates(conversation)
  return conversation


# ---------------------------------------------------------------- messages

def _checked_messages(value, name: str, may_be_empty: bool = False):
  """([message for the template], [learned switch]) of a messages array,
  or raises ChatRejected."""
  if not isinstance(value, list):
    raise ChatRejected('invalid_messages',
                       f'"{name}" is {json_type(value)}, not an array')
  if not value and not may_be_empty:
    raise ChatRejected('invalid_messages', f'"{name}" is an empty array')
  messages, switches = [], []
  for index, message in enumerate(value):
    where = f'{name}[{index}]'
    if not isinstance(message, dict):
      raise ChatRejected('invalid_messages',
                         f'{where} is {json_type(message)}, not an object')
    role = _checked_role(message, where)
    where = f'{where} ({role})'
    switches.append(_learned_switch(message, role, where))
    message = {key: value for key, value in message.items()
               if key not in LEARNING_KEYS}
    if 'tool_calls' in message:
      message['tool_calls'] = checked_tool_calls(message['tool_calls'],
                                                 role, where)
    message['content'] = _checked_content(message, role, where)
    _check_other_keys(message, role, where)
    messages.append(message)
  return messages, switches


def _checked_role(message: dict, where: str) -> str:
  if 'role' not in message:
    raise ChatRejected('invalid_messages', f'{where} has no "role"')
  role = message['role']
  if not isinstance(role, str) or role not in ROLES:
    raise ChatRejected('invalid_messages',
                       f'{where} has role {role!r}, not one of '
                       f'{", ".join(ROLES)}')
  return role


def _learned_switch(message: dict, role: str, where: str) -> bool:
  """Whether the message may be learned by its `weight` / `train` (1 /
  true when absent); a non-assistant message can only say 0 / false."""
  weight, train = message.get('weight'), message.get('train')
  if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
    raise ChatRejected('invalid_messages',
                       f'{where} has "weight" {weight!r}: 0 (render, do not '
                       'learn) and 1 (learn) are the weights sftbeam takes')
  if train is not None and not isinstance(train, bool):
    raise ChatRejected('invalid_messages',
                       f'{where} has "train" {json_type(train)}, not a boolean')
  switches = {bool(weight) for weight in (weight,) if weight is not None}
  switches |= {train for train in (train,) if train is not None}
  if len(switches) > 1:
    raise ChatRejected('invalid_messages',
                       f'{where} has "weight" {weight!r} and "train" '
                       f'{json.dumps(train)}, which disagree')
  learned = switches.pop() if switches else True
  if learned and role != 'assistant' and (weight is not None or
                                          train is not None):
    raise ChatRejected('invalid_messages',
                       f'{where} asks to be learned, but only assistant '
                       'messages are learned')
  return learned


def _checked_content(message: dict, role: str, where: str) -> str:
  """The content as the template sees it: a string; '' for an assistant's
  null content beside tool calls (the OpenAI form)."""
  content = message.get('content')
  if isinstance(content, str):
    return content
  if content is None and role == 'assistant' and message.get('tool_calls'):
    return ''
  raise ChatRejected('invalid_messages',
                     f'{where} has no string "content" (it is '
                     f'{json_type(content)})')


def _check_other_keys(message: dict, role: str, where: str):
  """`name`, `tool_call_id` and the reasoning fields, where present."""
  for key in ('name', 'tool_call_id'):
    if key in message and not isinstance(message[key], str):
      raise ChatRejected('invalid_messages',
                         f'{where} has "{key}" {json_type(message[key])}, '
                         'not a string')
  for key in REASONING_FIELDS:
    value = message.get(key)
    if value is None:
      continue
    if not isinstance(value, str):
      raise ChatRejected('invalid_messages',
                         f'{where} has "{key}" {json_type(value)}, not a '
                         'string')
    if role != 'assistant':
      raise ChatRejected('invalid_messages',
                         f'{where} has "{key}", but only assistant messages '
                         'reason')


# -------------------------------------------------------- tools and calls

def _parsed_json(text: str, what: str, reason: str):
  try:
    return json.loads(text)
  except (ValueError, RecursionError) as error:
    raise ChatRejected(reason, f'{what} is a string that is not JSON: '
                       f'{error}') from None


def checked_tools(value) -> Optional[List[Dict]]:
  """A record's `tools` as a list of tool objects (None without): a list
  of objects, a list of JSON strings of objects, or one JSON string of a
  list. Each tool names its function (`{"type": "function", "function":
  {"name": ...}}` or `{"name": ...}`)."""
  if value is None:
    return None
  if isinstance(value, str):
    value = _parsed_json(value, '"tools"', 'invalid_tools')
  if not isinstance(value, list):
    raise ChatRejected('invalid_tools',
                       f'"tools" is {json_type(value)}, not an array')
  tools = []
  for index, tool in enumerate(value):
    where = f'tools[{index}]'
    if isinstance(tool, str):
      tool = _parsed_json(tool, where, 'invalid_tools')
    if not isinstance(tool, dict):
      raise ChatRejected('invalid_tools',
                         f'{where} is {json_type(tool)}, not an object')
    _function_name(tool, where, 'invalid_tools')
    tools.append(tool)
  return tools or None


def _function_name(obj: dict, where: str, reason: str) -> str:
  """The function name of a tool or tool call: under "function" when it
  has one (the OpenAI form), else its own "name"."""
  function = obj.get('function', obj)
  if not isinstance(function, dict):
    raise ChatRejected(reason, f'{where}.function is '
                       f'{json_type(function)}, not an object')
  name = function.get('name')
  if not isinstance(name, str) or not name:
    raise ChatRejected(reason, f'{where} names no function (a "name" '
                       'string)')
  return name


def checked_tool_calls(value, role: str, where: str) -> Optional[list]:
  """An assistant message's `tool_calls` (null: none): a list of calls,
  each naming a function, with `arguments` an object or a JSON string of
  one (kept as given: templates write a string as it is)."""
  if value is None:
    return None
  if role != 'assistant':
    raise ChatRejected('invalid_tool_calls',
                       f'{where} has "tool_calls", but only assistant '
                       'messages call tools')
  if not isinstance(value, list):
    raise ChatRejected('invalid_tool_calls',
                       f'{where}.tool_calls is {json_type(value)}, not an '
                       'array')
  for index, call in enumerate(value):
    call_where = f'{where}.tool_calls[{index}]'
    if not isinstance(call, dict):
      raise ChatRejected('invalid_tool_calls',
                         f'{call_where} is {json_type(call)}, not an object')
    _function_name(call, call_where, 'invalid_tool_calls')
    function = call.get('function', call)
    if 'arguments' not in function:
      raise ChatRejected('invalid_tool_calls',
                         f'{call_where} has no "arguments"')
    arguments = function['arguments']
    if isinstance(arguments, str):
      arguments = _parsed_json(arguments, f'{call_where}.arguments',
                               'invalid_tool_calls')
    if not isinstance(arguments, dict):
      raise ChatRejected('invalid_tool_calls',
                         f'{call_where}.arguments is {json_type(arguments)}, '
                         'not an object')
  return value


def checked_template_kwargs(value) -> Dict:
  """A record's `chat_template_kwargs` ({} without)."""
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise ChatRejected('invalid_chat_template_kwargs',
                       f'"chat_template_kwargs" is {json_type(value)}, not '
                       'an object')
  reserved = sorted(RESERVED_TEMPLATE_KWARGS.intersection(value))
  if reserved:
    raise ChatRejected('invalid_chat_template_kwargs',
                       f'"chat_template_kwargs" sets "{reserved[0]}", which '
                       'is not a template variable but part of the call')
  return dict(value)


def chat_strings(conversation: Conversation) -> List[str]:
  """Every string of a conversation a template may write (all but roles
  and keys)."""
  found, stack = [], [conversation.tools, conversation.template_kwargs,
                      [{key: value for key, value in message.items()
                        if key != 'role'}
                       for message in conversation.messages]]
  while stack:
    value = stack.pop()
    if isinstance(value, str):
      found.append(value)
    elif isinstance(value, dict):
      stack.extend(value.values())
    elif isinstance(value, list):
      stack.extend(value)
  return found


def _strings(value):
  """Every string inside a decoded JSON value, keys included."""
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for key, item in value.items():
      yield key
      yield from _strings(item)
  elif isinstance(value, list):
    for item in value:
      yield from _strings(item)


def _refuse_lone_surrogates(conversation: Conversation):
  for index, message in enumerate(conversation.messages):
    if any(map(has_lone_surrogate, _strings(message))):
      raise ChatRejected('invalid_unicode',
                         f'messages[{index}] ({message["role"]}) holds a '
                         'lone surrogate')
  if any(map(has_lone_surrogate, _strings([conversation.tools,
                                           conversation.template_kwargs]))):
    raise ChatRejected('invalid_unicode',
                       'the tools or chat_template_kwargs hold a lone '
                       'surrogate')
