"""What a row says and learns (transforms/chat_rows.py), at the level of
text: learned spans, nothing dropped, histories the template rewrites,
and templates that cannot be used. Tokens are tests/test_chat.py's."""

import pytest

from test_chat import CASES, CHATML, THINK, END, m
from sftbeam.transforms import chat
from sftbeam.transforms.chat_records import ChatRejected, parse_conversation
from sftbeam.transforms.chat_rows import conversation_rows, unmarked

# Renders with the real template: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def renderer(qwen):
  return chat.renderer_for(qwen)


@pytest.fixture(scope='module')
def chatml(qwen):
  return chat.renderer_for(qwen, CHATML)


def learned(renderer, record, train_on='assistant', chat_rows='whole'):
  """Each row's learned texts, special-token text unmarked."""
  rows = conversation_rows(renderer, parse_conversation(record), train_on,
                           chat_rows)
  return [[unmarked(row.text[start:end]) for start, end in row.learned]
          for row in rows]


def rejected(renderer, record, **settings) -> ChatRejected:
  with pytest.raises(ChatRejected) as why:
    learned(renderer, record, **settings)
  return why.value


def test_learned_spans_run_from_the_prompt_through_the_turn_end(renderer):
  assert learned(renderer, CASES['multi_step_tools_with_reasoning'][0]) == [[
      '<think>\nTwo cities: two calls.\n</think>\n\n<tool_call>\n{"name": '
      '"weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n'
      '{"name": "weather", "arguments": {"city": "Bergen"}}\n</tool_call>'
      + END, '<think>\nRead both results.\n</think>\n\nOslo -3 C, Bergen 4 C.'
      + END]]
  assert learned(renderer, CASES['multi_turn_system'][0],
                 train_on='last_assistant') == [[THINK + 'Rome.' + END]]
  assert learned(renderer, CASES['special_text_in_content'][0]) == [[
      THINK + f'Here: {END}<|im_start|>user{END}']]


def test_per_turn_rows_end_at_their_turn(renderer):
  record = CASES['two_user_turns_with_reasoning'][0]
  rows = conversation_rows(renderer, parse_conversation(record), 'assistant',
                           'per_turn')
  assert [row.suffix for row in rows] == ['#1', '#3']
  assert [row.text.endswith(END + '\n') for row in rows] == [True, True]
  assert 'Greet.' in rows[0].text and 'Greet.' not in rows[1].text


def test_drops_name_the_field_and_the_fix(renderer):
  why = rejected(renderer, CASES['two_user_turns_with_reasoning'][0])
  assert (why.reason, str(why)) == ('template_drops_field', (
      'the chat template leaves out "reasoning_content" of messages[1] '
      '(assistant): the row is the same without it; --chat_rows per_turn '
      'keeps it (one row per learned turn)'))
  why = rejected(renderer, CASES['ends_with_user'][0], chat_rows='per_turn')
  assert 'no per_turn row holds "content" of messages[2] (user)' in str(why)


@pytest.mark.parametrize('name, says', [
    ('single_tool_call', 'leaves out tools of the record'),
    ('multi_step_tools_with_reasoning', 'leaves out tools of the record'),
    ('two_user_turns_with_reasoning',
     'leaves out "reasoning_content" of messages[1]'),
])
@pytest.mark.parametrize('chat_rows', ('whole', 'per_turn'))
def test_a_plain_chatml_template_drops_tools_and_reasoning(name, says,
                                                           chat_rows, chatml):
  why = rejected(chatml, CASES[name][0], chat_rows=chat_rows)
  assert why.reason == 'template_drops_field'
  assert says in str(why)


def test_a_template_that_ignores_a_role_drops_its_content(qwen):
  renderer = chat.renderer_for(qwen, CHATML.replace(
      '{% for message in messages %}',
      "{% for message in messages if message.role != 'tool' %}"))
  why = rejected(renderer, {'messages': [
      m('user', 'q'), m('assistant', 'calling'), m('tool', 'result 42'),
      m('assistant', 'done')]})
  assert 'leaves out "content" of messages[2] (tool)' in str(why)


def test_a_history_the_template_rewrites_is_refused(renderer):
  why = rejected(renderer, CASES['two_assistants_in_a_row'][0])
  assert why.reason == 'template_rewrites_history'
  assert 'messages[2]' in str(why)


def test_a_template_that_raises_rejects_the_record(qwen):
  renderer = chat.renderer_for(qwen, CHATML.replace(
      '{% for message in messages %}',
      "{% for message in messages %}{% if message.content == 'boom' %}"
      "{{ raise_exception('no boom') }}{% endif %}"))
  assert learned(renderer, CASES['one_turn'][0]) == [['It is 4.' + END]]
  why = rejected(renderer, {'messages': [m('user', 'boom'),
                                         m('assistant', 'x')]})
  assert why.reason == 'invalid_messages' and 'no boom' in str(why)


def test_an_unusable_template_is_refused_when_built(qwen):
  with pytest.raises(ValueError, match='no special token after'):
    chat.renderer_for(qwen, '{% for m in messages %}{{ m.content }}\n'
                      '{% endfor %}')
  with pytest.raises(ValueError, match='fails on a plain conversation'):
    chat.renderer_for(qwen, "{{ raise_exception('never') }}")
  with pytest.raises(ValueError, match='does not compile: line 1'):
    chat.renderer_for(qwen, '{% for m in messages %}')


def test_a_runaway_render_rejects_its_record(qwen):
  renderer = chat.renderer_for(qwen, CHATML.replace(
      '{{ message.content }}',
      "{% if message.content == 'loop' %}{% for i in range(99999) %}"
      "{% for j in range(99999) %}{% endfor %}{% endfor %}{% endif %}"
      '{{ message.content }}'))
  why = rejected(renderer, {'messages': [m('user', 'loop'),
                                         m('assistant', 'x')]})
  assert why.reason == 'chat_template_limit'
  assert 'iterated over more than' in str(why)
  assert learned(renderer, CASES['one_turn'][0]) == [['It is 4.' + END]]


def test_a_first_assistant_message_has_no_prompt(renderer):
  why = rejected(renderer, {'prompt': [], 'completion': [m('assistant', 'x')]})
  assert why.reason == 'invalid_messages'
  assert 'no prompt for it to answer' in str(why)


def test_the_probe_finds_the_turn_end(renderer):
  assert renderer.turn_ends == (END,)
