"""Parsing chat records (transforms/chat_records.py): what a record may
hold, and every malformed shape rejected with its reason and place."""

import json

import pytest

from sftbeam.transforms import chat_records
from sftbeam.transforms.chat_records import ChatRejected, parse_conversation


def m(role, content, **keys):
  return {'role': role, 'content': content, **keys}


CALL = {'type': 'function',
        'function': {'name': 'area', 'arguments': {'base': 2}}}
TOOL = {'type': 'function',
        'function': {'name': 'area', 'parameters': {'type': 'object'}}}


def parsed(**record):
  return parse_conversation(record)


def test_every_message_key_reaches_the_template_but_the_learning_switches():
  message = m('assistant', 'ok', tool_calls=[CALL], reasoning_content='r',
              name='bot', weight=1, extra={'a': 1})
  conversation = parsed(messages=[m('user', 'q', name='u'), message])
  assert conversation.messages == (
      m('user', 'q', name='u'),
      m('assistant', 'ok', tool_calls=[CALL], reasoning_content='r',
        name='bot', extra={'a': 1}))
  assert conversation.learnable == {1}


def test_null_content_beside_tool_calls_is_an_empty_string():
  conversation = parsed(messages=[
      m('user', 'q'), {'role': 'assistant', 'content': None,
                       'tool_calls': [CALL]}])
  assert conversation.messages[1]['content'] == ''
  conversation = parsed(messages=[
      m('user', 'q'), {'role': 'assistant', 'tool_calls': [CALL]}])
  assert conversation.messages[1]['content'] == ''


@pytest.mark.parametrize('tools', [
    [TOOL], [json.dumps(TOOL)], json.dumps([TOOL]),
    [{'name': 'area', 'parameters': {}}]])
def test_tools_as_objects_json_strings_or_one_json_list(tools):
  conversation = parsed(messages=[m('user', 'q'), m('assistant', 'a')],
                        tools=tools)
  expected = tools[0] if isinstance(tools[0], dict) else TOOL
  assert conversation.tools == [expected]


def test_empty_or_null_tools_are_none():
  for tools in ([], None):
    assert parsed(messages=[m('user', 'q'), m('assistant', 'a')],
                  tools=tools).tools is None


def test_template_kwargs_are_kept():
  conversation = parsed(messages=[m('user', 'q'), m('assistant', 'a')],
                        chat_template_kwargs={'enable_thinking': False})
  assert conversation.template_kwargs == {'enable_thinking': False}


def test_arguments_as_a_json_string_are_kept_as_given():
  call = {'function': {'name': 'area', 'arguments': '{"base": 2}'}}
  conversation = parsed(messages=[m('user', 'q'),
                                  m('assistant', '', tool_calls=[call])])
  assert conversation.messages[1]['tool_calls'] == [call]


@pytest.mark.parametrize('switches, learnable', [
    ({}, {1, 3}), ({'weight': 0}, {3}), ({'train': False}, {3}),
    ({'weight': 1}, {1, 3}), ({'train': True}, {1, 3}),
    ({'weight': 0.0, 'train': False}, {3}), ({'weight': 1.0}, {1, 3})])
def test_weight_and_train_switch_learning_off(switches, learnable):
  conversation = parsed(messages=[
      m('user', 'q'), m('assistant', 'a', **switches), m('user', 'q2'),
      m('assistant', 'b')])
  assert conversation.learnable == learnable
  assert 'weight' not in conversation.messages[1]
  assert 'train' not in conversation.messages[1]


def test_trl_completion_is_what_may_be_learned():
  conversation = parsed(prompt=[m('user', 'q'), m('assistant', 'shot')],
                        completion=[m('assistant', 'a')])
  assert conversation.learnable == {2}


def test_weight_0_on_a_user_message_is_fine():
  assert parsed(messages=[m('user', 'q', weight=0),
                          m('assistant', 'a')]).learnable == {1}


@pytest.mark.parametrize('record, reason, says', [
    # messages
    ({'messages': 'hi'}, 'invalid_messages', '"messages" is a string'),
    ({'messages': []}, 'invalid_messages', 'empty array'),
    ({'messages': [m('user', 'a'), 'b']}, 'invalid_messages',
     'messages[1] is a string'),
    ({'messages': [{'content': 'a'}]}, 'invalid_messages',
     'messages[0] has no "role"'),
    ({'messages': [m('user', 'a'), m('bot', 'b')]}, 'invalid_messages',
     "messages[1] has role 'bot'"),
    ({'messages': [m('user', 'a'), m('assistant', None)]},
     'invalid_messages', 'messages[1] (assistant) has no string "content"'),
    ({'messages': [m('user', None), m('assistant', 'a')]},
     'invalid_messages', 'messages[0] (user) has no string "content"'),
    ({'messages': [m('user', 'a'), m('assistant', ['b'])]},
     'invalid_messages', 'it is an array'),
    ({'messages': [m('user', 'a'), m('assistant', 'b', weight=0.5)]},
     'invalid_messages', '"weight" 0.5'),
    ({'messages': [m('user', 'a'), m('assistant', 'b', weight=True)]},
     'invalid_messages', '"weight" True'),
    ({'messages': [m('user', 'a'), m('assistant', 'b', train='yes')]},
     'invalid_messages', '"train" a string'),
    ({'messages': [m('user', 'a'), m('assistant', 'b', weight=1,
                                     train=False)]},
     'invalid_messages', 'disagree'),
    ({'messages': [m('user', 'a', train=True), m('assistant', 'b')]},
     'invalid_messages', 'only assistant messages are learned'),
    ({'messages': [m('user', 'a'), m('assistant', 'b',
                                     reasoning_content=['r'])]},
     'invalid_messages', '"reasoning_content" an array'),
    ({'messages': [m('user', 'a', reasoning_content='r'),
                   m('assistant', 'b')]},
     'invalid_messages', 'only assistant messages reason'),
    ({'messages': [m('user', 'a'), m('assistant', 'b', name=3)]},
     'invalid_messages', '"name" a number'),
    ({'messages': [m('tool', 'a', tool_call_id={}), m('assistant', 'b')]},
     'invalid_messages', '"tool_call_id" an object'),
    # learning
    ({'prompt': [m('user', 'a')], 'completion': []}, 'invalid_messages',
     '"completion" is an empty array'),
    ({'prompt': [m('user', 'a')], 'completion': [m('user', 'b')]},
     'no_assistant_turn', 'the completion has no assistant'),
    ({'messages': [m('system', 's'), m('user', 'a')]}, 'no_assistant_turn',
     'the conversation has no assistant'),
    ({'messages': [m('user', 'a'), m('assistant', 'b', weight=0)]},
     'no_assistant_turn', 'weight 0'),
    # tools
    ({'messages': [m('user', 'a'), m('assistant', 'b')], 'tools': {}},
     'invalid_tools', '"tools" is an object'),
    ({'messages': [m('user', 'a'), m('assistant', 'b')], 'tools': '[{'},
     'invalid_tools', '"tools" is a string that is not JSON'),
    ({'messages': [m('user', 'a'), m('assistant', 'b')], 'tools': '{}'},
     'invalid_tools', '"tools" is an object'),
    ({'messages': [m('user', 'a'), m('assistant', 'b')], 'tools': [3]},
     'invalid_tools', 'tools[0] is a number'),
    ({'messages': [m('user', 'a'), m('assistant', 'b')], 'tools': ['x']},
     'invalid_tools', 'tools[0] is a string that is not JSON'),
    ({'messages': [m('user', 'a'), m('assistant', 'b')],
      'tools': [{'type': 'function', 'function': {'parameters': {}}}]},
     'invalid_tools', 'tools[0] names no function'),
    ({'messages': [m('user', 'a'), m('assistant', 'b')],
      'tools': [{'type': 'function', 'function': 'area'}]},
     'invalid_tools', 'tools[0].function is a string'),
    # tool calls
    ({'messages': [m('user', 'a'), m('assistant', '', tool_calls={})]},
     'invalid_tool_calls', 'messages[1] (assistant).tool_calls is an object'),
    ({'messages': [m('user', 'a'), m('assistant', '', tool_calls=['x'])]},
     'invalid_tool_calls', 'tool_calls[0] is a string'),
    ({'messages': [m('user', 'a'), m('assistant', '', tool_calls=[
        {'function': {'arguments': {}}}])]},
     'invalid_tool_calls', 'tool_calls[0] names no function'),
    ({'messages': [m('user', 'a'), m('assistant', '', tool_calls=[
        {'function': {'name': 'f'}}])]},
     'invalid_tool_calls', 'has no "arguments"'),
    ({'messages': [m('user', 'a'), m('assistant', '', tool_calls=[
        {'function': {'name': 'f', 'arguments': '{"a": '}}])]},
     'invalid_tool_calls', 'arguments is a string that is not JSON'),
    ({'messages': [m('user', 'a'), m('assistant', '', tool_calls=[
        {'function': {'name': 'f', 'arguments': '[1]'}}])]},
     'invalid_tool_calls', 'arguments is an array, not an object'),
    ({'messages': [m('user', 'a', tool_calls=[CALL]), m('assistant', 'b')]},
     'invalid_tool_calls', 'only assistant messages call tools'),
    # template kwargs
    ({'messages': [m('user', 'a'), m('assistant', 'b')],
      'chat_template_kwargs': [1]},
     'invalid_chat_template_kwargs', 'is an array, not an object'),
    ({'messages': [m('user', 'a'), m('assistant', 'b')],
      'chat_template_kwargs': {'add_generation_prompt': True}},
     'invalid_chat_template_kwargs', 'sets "add_generation_prompt"'),
    # unicode
    ({'messages': [m('user', 'a'), m('assistant', 'b\ud800')]},
     'invalid_unicode', 'messages[1] (assistant)'),
    ({'messages': [m('user', 'a'), m('assistant', '', tool_calls=[
        {'function': {'name': 'f', 'arguments': {'x': '\udfff'}}}])]},
     'invalid_unicode', 'messages[1] (assistant)'),
    ({'messages': [m('user', 'a'), m('assistant', 'b')],
      'tools': [{'name': 'f\ud800'}]}, 'invalid_unicode', 'tools'),
])
def test_malformed_records_say_what_and_where(record, reason, says):
  with pytest.raises(ChatRejected) as rejected:
    parse_conversation(record)
  assert rejected.value.reason == reason
  assert says in str(rejected.value)


@pytest.mark.parametrize('obj, kind', [
    ({'messages': []}, 'chat'),
    ({'prompt': [], 'completion': []}, 'chat'),
    ({'prompt': 'p', 'output': 'o'}, 'prompt_output'),
    ({'prompt': [], 'output': 'o'}, 'prompt_output'),
    ({'prompt': 'p', 'completion': []}, 'prompt_output'),
    ({'question': 'p', 'answer': 'o'}, None),
    ({'messages': 'oops'}, 'chat'),
    ({'messages': 'oops', 'prompt': 'p'}, 'prompt_output'),
    (['not', 'an', 'object'], None),
])
def test_record_kind(obj, kind):
  assert chat_records.record_kind(obj, 'prompt', 'output') == kind


def test_record_kind_uses_the_configured_fields():
  assert chat_records.record_kind({'question': 'p'}, 'question',
                                  'answer') == 'prompt_output'


def test_the_callers_record_is_left_alone():
  record = {'messages': [m('user', 'a'), m('assistant', None, weight=1,
                                           tool_calls=[CALL])],
            'tools': [json.dumps(TOOL)]}
  before = json.dumps(record)
  parse_conversation(record)
  assert json.dumps(record) == before
