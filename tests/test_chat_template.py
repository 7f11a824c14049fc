"""Rendering (transforms/chat_template.py): the text HuggingFace's
apply_chat_template gives, on real conversations with tools, reasoning
and template kwargs; and a runaway template costs one record, bounded in
time and size, not the run."""

import json
import time

import jinja2
import pytest

from conftest import shared_data
from sftbeam.transforms.chat_template import ChatTemplate, RenderLimit
from sftbeam.transforms.tokenizer_source import EMBEDDED, load_tokenizer


@pytest.fixture(scope='module')
def qwen_template(qwen):
  return ChatTemplate(qwen.chat_template, qwen.special_tokens_map)


def _records(name, limit=None):
  with open(shared_data(name), encoding='utf-8') as lines:
    return [json.loads(line) for line, _ in zip(lines, range(limit or 10**9))]


def test_bfcl_renders_as_huggingface(qwen, qwen_template):
  for record in _records('bfcl_tool_calls.jsonl'):
    for prompt in (False, True):
      assert qwen_template.render(record['messages'], record['tools'], {},
                                  prompt) == qwen.apply_chat_template(
                                      record['messages'],
                                      tools=record['tools'], tokenize=False,
                                      add_generation_prompt=prompt)


@pytest.mark.parametrize('kwargs', [{}, {'enable_thinking': False}])
def test_gsm8k_chat_renders_as_huggingface(qwen, qwen_template, kwargs):
  for record in _records('gsm8k_chat.jsonl', 600):
    messages = record['messages']
    assert qwen_template.render(messages, None, kwargs, True) == (
        qwen.apply_chat_template(messages, tokenize=False,
                                 add_generation_prompt=True, **kwargs))


def test_reasoning_nulls_and_aliases_render_as_huggingface(qwen,
                                                           qwen_template):
  conversations = [
      [{'role': 'user', 'content': 'q'},
       {'role': 'assistant', 'content': 'a', 'reasoning': 'r1'}],
      [{'role': 'user', 'content': 'q'},
       {'role': 'assistant', 'content': 'a', 'thinking': 'r2',
        'tool_calls': None}],
      [{'role': 'user', 'content': 'q'},
       {'role': 'assistant', 'content': 'a', 'reasoning_content': None}],
  ]
  for messages in conversations:
    assert qwen_template.render(messages) == qwen.apply_chat_template(
        messages, tokenize=False)
  assert '<think>\nr1\n</think>' in qwen_template.render(conversations[0])


def test_the_messages_given_are_left_alone(qwen_template):
  messages = [{'role': 'user', 'content': 'q', 'name': None},
              {'role': 'assistant', 'content': 'a', 'reasoning': 'r'}]
  before = json.dumps(messages)
  qwen_template.render(messages)
  assert json.dumps(messages) == before


MESSAGES = [{'role': 'user', 'content': 'q'},
            {'role': 'assistant', 'content': 'a'}]


@pytest.mark.parametrize('source, says', [
    ("{% for i in range(100000) %}{% for j in range(100000) %}"
     "{% endfor %}{% endfor %}", 'iterated over more than'),
    ("{{ 'x' * 10**9 }}", 'wrote more than'),
    ("{% set ns = namespace(s='xxxxxxxxxx') %}{% for i in range(60) %}"
     "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}", 'wrote more than'),
    ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
     'wrote more than'),
    ("{{ 10 ** 100000 }}", 'to the power'),
])
def test_runaway_templates_stop_at_their_bounds(source, says):
  template = ChatTemplate(source, {}, max_seconds=2.0, max_chars=1 << 20)
  started = time.monotonic()
  with pytest.raises(RenderLimit, match=says):
    template.render(MESSAGES)
  assert time.monotonic() - started < 10


def test_a_slow_template_stops_at_its_deadline():
  template = ChatTemplate(
      "{% for i in range(1000) %}{% for j in range(900) %}"
      "{{ messages[0].content.upper() }}{% endfor %}{% endfor %}", {},
      max_seconds=0.05, max_chars=1 << 30)
  with pytest.raises(RenderLimit, match='ran longer than 0.05 s'):
    template.render(MESSAGES)


def test_a_syntax_error_is_found_when_compiled():
  with pytest.raises(jinja2.TemplateSyntaxError):
    ChatTemplate('{% for message in messages %}', {})


def test_generation_tags_render_their_body():
  template = ChatTemplate(
      '{% for m in messages %}{% generation %}{{ m.content }}'
      '{% endgeneration %}|{% endfor %}', {})
  assert template.render(MESSAGES) == 'q|a|'


def test_special_tokens_are_template_variables():
  template = ChatTemplate('{{ eos_token }}{{ bos }}', {'eos_token': '</s>'})
  assert template.render(MESSAGES, template_kwargs={'bos': '<s>'}) == '</s><s>'


def test_the_sandbox_refuses_what_huggingface_refuses():
  template = ChatTemplate("{{ ''.__class__ }}{% set ns = namespace() %}"
                          "{% set ns._x = 1 %}", {})
  with pytest.raises(jinja2.exceptions.SecurityError):
    template.render(MESSAGES)


def test_one_template_serves_threads():
  """Each render has its own budget: a runaway render in one thread does
  not stop another thread's render."""
  import concurrent.futures
  source = ("{% if messages[0].content == 'slow' %}{% for i in range(99) %}"
            "{% for j in range(99999) %}{% endfor %}{% endfor %}{% endif %}"
            "{{ messages[0].content }}")
  template = ChatTemplate(source, {})
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    slow = pool.submit(template.render, [{'role': 'user', 'content': 'slow'}])
    fast = [pool.submit(template.render, [{'role': 'user', 'content': 'ok'}])
            for _ in range(20)]
    assert [future.result() for future in fast] == ['ok'] * 20
    with pytest.raises(RenderLimit):
      slow.result()


def test_the_embedded_tokenizer_has_a_template():
  assert load_tokenizer(EMBEDDED).chat_template
