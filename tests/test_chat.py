"""Chat rows (transforms/chat.py and chat_rows.py) against references
written apart from them.

`whole` rows: HuggingFace's `apply_chat_template(..., tokenize=True,
return_assistant_tokens_mask=True)` with tests/chat_templates/
qwen3_tagged.jinja, a copy of the embedded Qwen3 template with
`{% generation %}` tags where docs/chat.md says learning starts and ends.
`per_turn` rows: the prefix rendering, `apply_chat_template(messages[:i],
add_generation_prompt=True)` tokenized, then what message i adds through
`<|im_end|>` (learned), then the rest. `special_tokens_in_text: text`:
HuggingFace's `sanitize_control_tokens=True` for the ids.
"""

import collections
import functools
import json
import os
import tracemalloc

import fastokens
import pytest
import tokenizers
from transformers.utils.chat_template_utils import render_jinja_template

from conftest import ROOT, dofn_outputs, shared_data
from sftbeam.transforms import chat, chat_records
from sftbeam.transforms.chat_records import ChatRejected, parse_conversation
from sftbeam.transforms.records import RecordChunk
from sftbeam.transforms.tokenize import TokenizeRecords, TokenizeSettings
from sftbeam.transforms.tokenizer_source import (EMBEDDED,
                                                 embedded_tokenizer_dir,
                                                 load_tokenizer)

# Runs large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

END = '<|im_end|>'
THINK = '<think>\n\n</think>\n\n'
CHAT_SAMPLE = os.path.join(ROOT, 'examples', 'chat_sample.jsonl')
TEMPLATES = os.path.join(ROOT, 'tests', 'chat_templates')


def _template(name):
  with open(os.path.join(TEMPLATES, name), encoding='utf-8') as handle:
    return handle.read()


TAGGED = _template('qwen3_tagged.jinja')
CHATML = _template('chatml.jinja')


# --------------------------------------------------------------- encoders

def hf_encode(tokenizer):
  """`encode` from a HuggingFace tokenizer's Rust backend: a copy per
  mode, since split_special_tokens is the backend's state."""
  backend = tokenizer.backend_tokenizer
  copies = {}
  for split in (False, True):
    copies[split] = tokenizers.Tokenizer.from_str(backend.to_str())
    copies[split].encode_special_tokens = split

  def encode(texts, split_special_tokens):
    return [encoding.ids for encoding in copies[split_special_tokens]
            .encode_batch_fast(texts, add_special_tokens=False)]
  return encode


@pytest.fixture(scope='module')
def encode(qwen):
  return hf_encode(qwen)


@pytest.fixture(scope='module')
def fast_encode():
  fast = fastokens.Tokenizer.from_file(
      os.path.join(embedded_tokenizer_dir(), 'tokenizer.json'))

  def encode(texts, split_special_tokens):
    return [encoding.ids for encoding in fast.encode_batch(
        texts, add_special_tokens=False,
        split_special_tokens=split_special_tokens)]
  return encode


@pytest.fixture(scope='module', autouse=True)
def tokenizer_threads_off():
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('TOKENIZERS_PARALLELISM', 'false')
    yield


@pytest.fixture(scope='module')
def sanitizing():
  """The embedded tokenizer whose `sanitize_control_tokens` keeps exactly
  the special tokens of the record's text as text (special_tokens_in_text
  text)."""
  tokenizer = load_tokenizer(EMBEDDED)
  tokenizer.chat_control_tokens = []
  return tokenizer


# -------------------------------------------------------------- reference

def reference_learned(record, train_on):
  """The indices of the assistant messages a record learns."""
  if 'messages' in record:
    messages, first = record['messages'], 0
  else:
    messages = record['prompt'] + record['completion']
    first = len(record['prompt'])
  learned = [index for index, message in enumerate(messages)
             if index >= first and message['role'] == 'assistant' and
             message.get('weight', 1) != 0 and message.get('train', True)]
  return messages, (learned[-1:] if train_on == 'last_assistant' else learned)


def _for_template(messages, learned=()):
  """The messages as HuggingFace gets them: a null content as '', the
  tagged template told which are learned."""
  return [{**message, 'content': message.get('content') or '',
           'learned': index in learned}
          for index, message in enumerate(messages)]


def _tools(record):
  tools = record.get('tools')
  if isinstance(tools, str):
    tools = json.loads(tools)
  return [json.loads(tool) if isinstance(tool, str) else tool
          for tool in tools] if tools else None


def reference_whole(qwen, record, train_on='assistant', run_kwargs=None):
  """[(ids, learned flags)] of a whole row from the tagged template: the
  rendering cut where each generation block starts and ends, each piece
  tokenized by the HuggingFace tokenizer, the blocks learned."""
  messages, learned = reference_learned(record, train_on)
  kwargs = {**(run_kwargs or {}), **record.get('chat_template_kwargs', {})}
  prepared = _for_template(messages, learned)
  tools = _tools(record)
  [text], [blocks] = render_jinja_template(
      [prepared], tools=tools, chat_template=TAGGED,
      return_assistant_tokens_mask=True,
      **{**qwen.special_tokens_map, **kwargs})
  assert text == qwen.apply_chat_template(prepared, tools=tools,
                                          tokenize=False, **kwargs)
  cuts = sorted({0, len(text)} | {at for block in blocks for at in block})
  ids, flags = [], []
  for start, end in zip(cuts, cuts[1:]):
    piece_ids = qwen(text[start:end], add_special_tokens=False)['input_ids']
    ids += piece_ids
    flags += [any(first <= start < last for first, last in blocks)] * len(
        piece_ids)
  return [(ids, flags)]


def huggingface_whole(qwen, record, train_on='assistant'):
  """[(ids, learned flags)] as HuggingFace itself gives them: the whole
  rendering tokenized at once, `return_assistant_tokens_mask=True` with
  the tagged template. Equal to reference_whole where no learned text
  starts with characters that merge with the prompt's last token."""
  messages, learned = reference_learned(record, train_on)
  out = qwen.apply_chat_template(
      _for_template(messages, learned), tools=_tools(record),
      chat_template=TAGGED, tokenize=True, return_dict=True,
      return_assistant_tokens_mask=True,
      **record.get('chat_template_kwargs', {}))
  return [(list(out['input_ids']),
           [bool(flag) for flag in out['assistant_masks']])]


def reference_per_turn(qwen, record, train_on='assistant', run_kwargs=None):
  """[(ids, learned flags)] of per_turn rows: each learned message i as
  the model sees its turn: the prompt of messages[:i], then what message
  i adds through <|im_end|> (learned), then the rest of its rendering."""
  messages, learned = reference_learned(record, train_on)
  kwargs = {**(run_kwargs or {}), **record.get('chat_template_kwargs', {})}
  prepared = _for_template(messages)
  tools = _tools(record)
  rows = []
  for index in learned:
    prompt = qwen.apply_chat_template(prepared[:index], tools=tools,
                                      tokenize=False,
                                      add_generation_prompt=True, **kwargs)
    full = qwen.apply_chat_template(prepared[:index + 1], tools=tools,
                                    tokenize=False, **kwargs)
    assert full.startswith(prompt)
    # The template's own <|im_end|> ends the turn (a content may hold one).
    end = full.rindex(END) + len(END)
    pieces = [(prompt, False), (full[len(prompt):end], True),
              (full[end:], False)]
    ids, flags = [], []
    for text, flag in pieces:
      piece_ids = qwen(text, add_special_tokens=False)['input_ids']
      ids += piece_ids
      flags += [flag] * len(piece_ids)
    rows.append((ids, flags))
  return rows


REFERENCES = {'whole': reference_whole, 'per_turn': reference_per_turn}


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope='module')
def renderer(qwen):
  return chat.renderer_for(qwen)


def rows_of(records, renderer, encode, **settings):
  """tokenize_conversations on records: ({index: [(ids, flags)]} or
  {index: reason}, stats)."""
  results, conversations = {}, {}
  for index, record in enumerate(records):
    try:
      conversations[index] = parse_conversation(record)
    except ChatRejected as rejected:
      results[index] = rejected.reason
  order = list(conversations)
  outcome = chat.tokenize_conversations(
      [conversations[index] for index in order], renderer=renderer,
      encode=encode, settings=chat.ChatSettings(**settings))
  for position, why in outcome.rejected:
    results[order[position]] = why.reason
  for row in outcome.rows:
    results.setdefault(order[row.record], []).append(
        (row.ids, row.supervised))
  return results, outcome


def one(record, renderer, encode, **settings):
  results, outcome = rows_of([record], renderer, encode, **settings)
  return results[0], outcome


def learned_texts(qwen, ids, flags):
  """The decoded runs of consecutive learned tokens of a row."""
  runs, run = [], []
  for token, learned in zip(ids, flags):
    if learned:
      run.append(token)
    elif run:
      runs.append(run)
      run = []
  runs += [run] if run else []
  return [qwen.decode(run) for run in runs]


def m(role, content, **keys):
  return {'role': role, 'content': content, **keys}


def call(name, **arguments):
  return {'type': 'function',
          'function': {'name': name, 'arguments': arguments}}


WEATHER = {'type': 'function', 'function': {
    'name': 'weather', 'description': 'Weather of a city.',
    'parameters': {'type': 'object',
                   'properties': {'city': {'type': 'string'}},
                   'required': ['city']}}}
TIME = {'type': 'function', 'function': {
    'name': 'local_time', 'parameters': {
        'type': 'object', 'properties': {'city': {'type': 'string'}}}}}

# name -> (record, {row mode: 'row' or the rejection reason})
ROWS = {'whole': 'row', 'per_turn': 'row'}
CASES = {
    'one_turn': ({'messages': [m('user', 'What is 2+2?'),
                               m('assistant', 'It is 4.')]}, ROWS),
    'multi_turn_system': ({'messages': [
        m('system', 'You are terse.'), m('user', 'Capital of France?'),
        m('assistant', 'Paris.'), m('user', 'And of Italy?'),
        m('assistant', 'Rome.')]}, ROWS),
    'single_tool_call': ({'tools': [WEATHER], 'messages': [
        m('user', 'Weather in Oslo?'),
        m('assistant', '', tool_calls=[call('weather', city='Oslo')])]}, ROWS),
    'parallel_tool_calls': ({'tools': [WEATHER, TIME], 'messages': [
        m('user', 'Weather and time in Oslo?'),
        m('assistant', 'Both at once.', tool_calls=[
            call('weather', city='Oslo'), call('local_time', city='Oslo')])]},
                            ROWS),
    'content_null_json_arguments': ({'tools': [json.dumps(WEATHER)],
                                     'messages': [
        m('user', 'Weather in Rome?'),
        {'role': 'assistant', 'content': None, 'tool_calls': [
            {'id': 'c1', 'type': 'function', 'function': {
                'name': 'weather', 'arguments': '{"city": "Rome"}'}}]}]},
                                    ROWS),
    'multi_step_tools_with_reasoning': ({'tools': [WEATHER], 'messages': [
        m('system', 'Use tools.'), m('user', 'Weather in Oslo and Bergen?'),
        m('assistant', '', reasoning_content='Two cities: two calls.',
          tool_calls=[call('weather', city='Oslo'),
                      call('weather', city='Bergen')]),
        m('tool', '{"temp": -3}', tool_call_id='a', name='weather'),
        m('tool', '{"temp": 4}', tool_call_id='b', name='weather'),
        m('assistant', 'Oslo -3 C, Bergen 4 C.',
          reasoning_content='Read both results.')]}, ROWS),
    'two_user_turns_with_reasoning': ({'messages': [
        m('user', 'Hi!'), m('assistant', 'Hello.', reasoning_content='Greet.'),
        m('user', '2+2?'), m('assistant', '4', reasoning_content='Add.')]},
                                      {'whole': 'template_drops_field',
                                       'per_turn': 'row',
                                       # no row for the first answer
                                       'per_turn/last_assistant':
                                       'template_drops_field'}),
    'inline_think_last': ({'messages': [
        m('user', '2+2?'),
        m('assistant', '<think>\nAdd them.\n</think>\n\n4')]}, ROWS),
    'inline_think_in_history': ({'messages': [
        m('user', '2+2?'), m('assistant', '<think>\nAdd.\n</think>\n\n4'),
        m('user', 'And 3+3?'), m('assistant', '6')]},
                                {'whole': 'template_drops_field',
                                 'per_turn': 'row',
                                 'per_turn/last_assistant':
                                 'template_drops_field'}),
    'enable_thinking_false': ({'chat_template_kwargs': {
        'enable_thinking': False}, 'messages': [
        m('user', 'Hi!'), m('assistant', 'Hello.'), m('user', '2+2?'),
        m('assistant', '4')]}, ROWS),
    'enable_thinking_false_tools': ({'tools': [WEATHER],
                                     'chat_template_kwargs': {
                                         'enable_thinking': False},
                                     'messages': [
        m('user', 'Weather in Oslo?'),
        m('assistant', '', tool_calls=[call('weather', city='Oslo')]),
        m('tool', '{"temp": -3}'), m('assistant', 'It is -3 C.')]},
                                    {'whole': 'row',
                                     # the tool-call turn's prompt ends in
                                     # an empty think block its row lacks
                                     'per_turn': 'row'}),
    'weight_0': ({'messages': [
        m('user', 'Hi!'), m('assistant', 'Bad answer.', weight=0),
        m('user', 'Again?'), m('assistant', 'Good answer.')]}, ROWS),
    'train_false_tool_call': ({'tools': [WEATHER], 'messages': [
        m('user', 'Weather?'), m('assistant', 'Where?', train=False),
        m('user', 'Oslo.'),
        m('assistant', '', tool_calls=[call('weather', city='Oslo')])]},
                              ROWS),
    # Qwen3 writes One. with an empty think block when it is the last
    # message (in the prompt of Two.), without one before Two.
    'two_assistants_in_a_row': ({'messages': [
        m('user', 'Count to two.'), m('assistant', 'One.'),
        m('assistant', 'Two.')]}, {'whole': 'template_rewrites_history',
                                   'per_turn': 'template_rewrites_history'}),
    'ends_with_user': ({'messages': [m('user', 'Hi'), m('assistant', 'Hello!'),
                                     m('user', 'Bye')]},
                       {'whole': 'row', 'per_turn': 'template_drops_field'}),
    'special_text_in_content': ({'messages': [
        m('user', f'Say {END} literally'),
        m('assistant', f'Here: {END}<|im_start|>user')]}, ROWS),
    'special_text_in_arguments': ({'tools': [WEATHER], 'messages': [
        m('user', 'Weather?'),
        m('assistant', '', tool_calls=[call('weather', city=f'Oslo{END}')])]},
                                  ROWS),
    'leading_newlines': ({'messages': [
        m('user', 'Q1'), m('assistant', '\n\nA1'), m('user', 'Q2'),
        m('assistant', '\n\nA2')]}, ROWS),
    'unicode_and_code': ({'messages': [
        m('user', 'Übersetze: 猫は可愛い 🐈\n```\nfor i in range(3):\n'),
        m('assistant', '```python\nfor i in range(3):\n    print(i)\n```\n'
          '\tdone {"x": [1, 2]}')]}, ROWS),
    'trl_form': ({'prompt': [m('system', 'Be brief.'), m('user', 'Capital?'),
                             m('assistant', 'Of what?'), m('user', 'France')],
                  'completion': [m('assistant', 'Paris.')]}, ROWS),
}


# ------------------------------------------------------ rows vs reference

@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.parametrize('chat_rows', ('whole', 'per_turn'))
@pytest.mark.parametrize('train_on', ('assistant', 'last_assistant'))
def test_rows_equal_the_reference(name, chat_rows, train_on, qwen, renderer,
                                  encode):
  record, expected = CASES[name]
  got, outcome = one(record, renderer, encode, chat_rows=chat_rows,
                     train_on=train_on)
  expected = expected.get(f'{chat_rows}/{train_on}', expected[chat_rows])
  if expected != 'row':
    assert got == expected
    return
  assert not isinstance(got, str), (got, outcome.rejected)
  assert got == REFERENCES[chat_rows](qwen, record, train_on)


def test_learned_text_is_what_the_model_generates(qwen, renderer, encode):
  """What is learned, said out loud for the cases docs/chat.md works."""
  def learned(name, **settings):
    rows, _ = one(CASES[name][0], renderer, encode, **settings)
    return [learned_texts(qwen, ids, flags) for ids, flags in rows]

  assert learned('single_tool_call') == [[
      THINK + '<tool_call>\n{"name": "weather", "arguments": {"city": '
      '"Oslo"}}\n</tool_call>' + END]]
  assert learned('content_null_json_arguments') == [[
      THINK + '<tool_call>\n{"name": "weather", "arguments": {"city": '
      '"Rome"}}\n</tool_call>' + END]]
  assert learned('multi_step_tools_with_reasoning')[0] == [
      '<think>\nTwo cities: two calls.\n</think>\n\n<tool_call>\n{"name": '
      '"weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n<tool_call>\n'
      '{"name": "weather", "arguments": {"city": "Bergen"}}\n</tool_call>'
      + END, '<think>\nRead both results.\n</think>\n\nOslo -3 C, Bergen 4 C.'
      + END]
  # The empty think block Qwen3 writes before the last answer is learned,
  # unless the generation prompt holds it (enable_thinking false).
  assert learned('multi_turn_system') == [['Paris.' + END,
                                           THINK + 'Rome.' + END]]
  assert learned('enable_thinking_false') == [['Hello.' + END, '4' + END]]
  assert learned('enable_thinking_false_tools') == [[
      '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n'
      '</tool_call>' + END, 'It is -3 C.' + END]]
  assert learned('weight_0') == [[THINK + 'Good answer.' + END]]
  assert learned('two_user_turns_with_reasoning', chat_rows='per_turn') == [
      ['<think>\nGreet.\n</think>\n\nHello.' + END],
      ['<think>\nAdd.\n</think>\n\n4' + END]]
  assert learned('trl_form') == [[THINK + 'Paris.' + END]]


def test_per_turn_ids_and_stats(qwen, renderer, encode):
  record = CASES['two_user_turns_with_reasoning'][0]
  results, outcome = rows_of([record], renderer, encode, chat_rows='per_turn')
  assert [row.suffix for row in outcome.rows] == ['#1', '#3']
  assert outcome.stats == {'chat_extra_rows': 1, 'truncated': 0,
                           'assistant_turns': 2, 'tool_calls_learned': 0,
                           'reasoning_turns_learned': 2}
  first, second = results[0]
  # Row #3 holds the first answer as the model saw it later: no reasoning.
  assert 'Greet' not in qwen.decode(second[0])
  assert 'Greet' in qwen.decode(first[0])


def test_stats_count_tool_calls_and_reasoning(renderer, encode):
  records = [CASES[name][0] for name in (
      'single_tool_call', 'parallel_tool_calls',
      'multi_step_tools_with_reasoning', 'weight_0')]
  _, outcome = rows_of(records, renderer, encode)
  assert outcome.stats == {'chat_extra_rows': 0, 'truncated': 0,
                           'assistant_turns': 5, 'tool_calls_learned': 5,
                           'reasoning_turns_learned': 2}


# -------------------------------------------------------- never dropped

def test_whitespace_a_template_trims_is_not_a_drop(qwen, renderer, encode):
  record = {'messages': [m('user', 'q'), m('assistant', 'a',
                                           reasoning_content='\n\n')]}
  rows, _ = one(record, renderer, encode)
  assert rows == reference_whole(qwen, record)


# ------------------------------------------------------ special-token text

@pytest.mark.parametrize('name', ['special_text_in_content',
                                  'special_text_in_arguments', 'one_turn'])
def test_text_mode_ids_are_huggingfaces_sanitized_ids(name, sanitizing,
                                                      renderer, encode):
  record = CASES[name][0]
  rows, _ = one(record, renderer, encode, special_tokens_in_text='text')
  messages = _for_template(record['messages'])
  expected = sanitizing.apply_chat_template(
      messages, tools=_tools(record), tokenize=True, return_dict=True,
      sanitize_control_tokens=True)['input_ids']
  assert rows[0][0] == list(expected)


def test_special_text_in_content_follows_the_mode(qwen, renderer, encode):
  record = CASES['special_text_in_content'][0]
  im_end = qwen.convert_tokens_to_ids(END)
  rows = {mode: one(record, renderer, encode,
                    special_tokens_in_text=mode)[0][0]
          for mode in ('text', 'special')}
  assert rows['text'][0].count(im_end) == 2
  assert rows['special'][0].count(im_end) == 4
  # The answer's own <|im_end|> does not end its learned text.
  for ids, flags in rows.values():
    [learned] = learned_texts(qwen, ids, flags)
    assert learned == THINK + f'Here: {END}<|im_start|>user{END}'


# --------------------------------------------------------------- failures

def test_a_failing_encode_rejects_only_its_record(renderer, encode):
  def picky_encode(texts, split_special_tokens):
    if any('poison' in text for text in texts):
      raise RuntimeError('cannot encode poison')
    return encode(texts, split_special_tokens)

  records = [CASES['one_turn'][0],
             {'messages': [m('user', 'poison'), m('assistant', 'x')]},
             CASES['single_tool_call'][0]]
  results, outcome = rows_of(records, renderer, picky_encode)
  assert results[1] == 'tokenizer_error'
  assert 'cannot encode poison' in str(outcome.rejected[0][1])
  assert results[0] == rows_of(records[:1], renderer, encode)[0][0]
  assert not isinstance(results[2], str)


def test_settings_are_checked(renderer, encode):
  with pytest.raises(ValueError, match='train_on must be one of'):
    chat.tokenize_conversations([], renderer=renderer, encode=encode,
                                settings=chat.ChatSettings(train_on='all'))
  with pytest.raises(ValueError, match='use prompt_left'):
    chat.tokenize_conversations([], renderer=renderer, encode=encode,
                                settings=chat.ChatSettings(
                                    chat_rows='per_turn',
                                    truncation='output_right'))


# ------------------------------------------------------------- truncation

def _turns(messages):
  head = 0
  while messages[head]['role'] == 'system':
    head += 1
  turns = []
  for index in range(head, len(messages)):
    if not turns or messages[index]['role'] == 'user':
      turns.append([])
    turns[-1].append(index)
  return head, turns


def reference_fitted(qwen, record, max_seq_len, truncation, train_on):
  """A whole row after dropping whole turns one at a time until it fits
  (the fewest drops), or 'too_long'."""
  [row] = reference_whole(qwen, record, train_on)
  if len(row[0]) - 1 <= max_seq_len:
    return [row], False
  messages, _ = reference_learned(record, 'assistant')
  first = len(record['prompt']) if 'prompt' in record else 0
  head, turns = _turns(messages)
  for dropped in range(1, len(turns)):
    kept_turns = (turns[:len(turns) - dropped]
                  if truncation == 'output_right' else turns[dropped:])
    kept = list(range(head)) + [index for turn in kept_turns for index in turn]
    shorter = {'prompt': [messages[index] for index in kept if index < first],
               'completion': [messages[index] for index in kept
                              if index >= first]}
    if not reference_learned(shorter, train_on)[1]:
      continue
    [row] = reference_whole(qwen, shorter, train_on)
    if len(row[0]) - 1 <= max_seq_len:
      return [row], True
  return 'too_long'


@pytest.mark.parametrize('truncation', ('output_right', 'prompt_left'))
@pytest.mark.parametrize('train_on, trl', [('assistant', False),
                                           ('last_assistant', False),
                                           ('assistant', True)])
def test_truncation_drops_whole_turns_like_the_reference(
    truncation, train_on, trl, gsm8k_chat, qwen, renderer, encode):
  """Bisection over shorter conversations finds what dropping one turn at
  a time finds."""
  max_seq_len = 300
  records = [{'prompt': messages[:-1] if trl else [],
              'completion': messages[-1:] if trl else messages}
             for messages in gsm8k_chat[:40]]
  results, outcome = rows_of(records, renderer, encode,
                             max_seq_len=max_seq_len, truncation=truncation,
                             train_on=train_on)
  truncated = {outcome.rows[position].record for position in range(
      len(outcome.rows)) if outcome.rows[position].truncated}
  seen = collections.Counter()
  for index, record in enumerate(records):
    expected = reference_fitted(qwen, record, max_seq_len, truncation,
                                train_on)
    if expected == 'too_long':
      assert results[index] == 'too_long'
      seen['too_long'] += 1
    else:
      assert results[index] == expected[0]
      assert (index in truncated) == expected[1]
      seen[expected[1]] += 1
  possible = {True, False, 'too_long'}
  if trl and truncation == 'output_right':
    possible = {False, 'too_long'}
  assert set(seen) == possible, seen


def test_per_turn_rows_truncate_their_history(qwen, renderer, encode):
  turns = [[m('user', f'Question {i}: ' + 'word ' * 30),
            m('assistant', f'Answer {i}: ' + 'word ' * 30)] for i in range(6)]
  record = {'messages': [m('system', 'Be brief.')] +
                        [message for turn in turns for message in turn]}
  full, _ = one(record, renderer, encode, chat_rows='per_turn')
  max_seq_len = len(full[-1][0]) // 2
  rows, outcome = one(record, renderer, encode, chat_rows='per_turn',
                      max_seq_len=max_seq_len, truncation='prompt_left')
  assert [row.suffix for row in outcome.rows] == [
      f'#{2 * i + 2}' for i in range(6)]
  assert outcome.stats['truncated'] == 1
  for index, (ids, flags) in enumerate(rows):
    text = qwen.decode(ids)
    assert len(ids) - 1 <= max_seq_len
    assert text.startswith('<|im_start|>system\nBe brief.<|im_end|>')
    assert learned_texts(qwen, ids, flags) == [
        THINK + turns[index][1]['content'] + END]
  assert 'Question 0' not in qwen.decode(rows[-1][0])


def test_truncating_a_huge_conversation_is_bounded(qwen, encode,
                                                   monkeypatch):
  """1,000 turns (1 MB): a few dozen renders and memory linear in the
  record, not a render per turn nor every candidate at once."""
  renderer = chat.renderer_for(qwen)
  renders = []
  render = renderer.template.render
  monkeypatch.setattr(renderer.template, 'render',
                      lambda *args: renders.append(1) or render(*args))
  messages = []
  for turn in range(1000):
    messages += [m('user', f'Question {turn} ' + 'word ' * 100),
                 m('assistant', f'Answer {turn} ' + 'word ' * 100)]
  conversation = parse_conversation({'messages': messages})
  tracemalloc.start()
  try:
    outcome = chat.tokenize_conversations(
        [conversation], renderer=renderer, encode=encode,
        settings=chat.ChatSettings(max_seq_len=4096,
                                   truncation='prompt_left'))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  [row] = outcome.rows
  assert row.truncated and len(row.ids) - 1 <= 4096
  assert 'Answer 999' in qwen.decode(row.ids)
  assert len(renders) < 60, len(renders)
  assert peak < 40 * len(json.dumps(messages)), peak


def test_the_callers_records_are_left_alone(renderer, encode):
  record = json.loads(json.dumps(CASES['multi_step_tools_with_reasoning'][0]))
  conversation = parse_conversation(record)
  before = json.dumps(conversation.messages)
  chat.tokenize_conversations([conversation], renderer=renderer,
                              encode=encode, settings=chat.ChatSettings(
                                  max_seq_len=40, truncation='prompt_left'))
  assert json.dumps(conversation.messages) == before


# ------------------------------------------------------------ real data

def _records(name):
  with open(shared_data(name), encoding='utf-8') as lines:
    return [json.loads(line) for line in lines]


@pytest.fixture(scope='module')
def gsm8k_chat():
  return [record['messages'] for record in _records('gsm8k_chat.jsonl')]


@pytest.fixture(scope='module')
def bfcl():
  return _records('bfcl_tool_calls.jsonl')


@pytest.mark.parametrize('chat_rows', ('whole', 'per_turn'))
def test_every_bfcl_conversation_equals_the_reference(chat_rows, bfcl, qwen,
                                                      renderer, fast_encode):
  assert len(bfcl) == 1000
  results, outcome = rows_of(bfcl, renderer, fast_encode, chat_rows=chat_rows)
  assert not outcome.rejected
  for index, record in enumerate(bfcl):
    assert results[index] == REFERENCES[chat_rows](qwen, record), index
    if chat_rows == 'whole':
      assert results[index] == huggingface_whole(qwen, record), index
  calls = sum(len(record['messages'][-1]['tool_calls']) for record in bfcl)
  assert outcome.stats['tool_calls_learned'] == calls
  assert outcome.stats['assistant_turns'] == 1000


def test_every_bfcl_tool_call_is_learned(bfcl, qwen, renderer, fast_encode):
  """Independent of the templates: each learned text holds every call's
  name and arguments as JSON, and nothing but the answer."""
  results, _ = rows_of(bfcl, renderer, fast_encode)
  for index, record in enumerate(bfcl):
    [(ids, flags)] = results[index]
    [learned] = learned_texts(qwen, ids, flags)
    calls = [json.loads(block.split('\n</tool_call>')[0])
             for block in learned.split('<tool_call>\n')[1:]]
    assert calls == [{'name': call_['function']['name'],
                      'arguments': call_['function']['arguments']}
                     for call_ in record['messages'][-1]['tool_calls']]
    assert learned.startswith(THINK) and learned.endswith(END)


@pytest.mark.parametrize('train_on', ('assistant', 'last_assistant'))
def test_every_gsm8k_conversation_equals_the_reference(train_on, gsm8k_chat,
                                                       qwen, renderer,
                                                       fast_encode):
  assert len(gsm8k_chat) == 4108
  records = [{'messages': messages} for messages in gsm8k_chat]
  results, outcome = rows_of(records, renderer, fast_encode,
                             train_on=train_on)
  assert not outcome.rejected
  for index, record in enumerate(records):
    assert results[index] == reference_whole(qwen, record, train_on), index
    assert results[index] == huggingface_whole(qwen, record, train_on), index


def test_gsm8k_per_turn_equals_the_reference(gsm8k_chat, qwen, renderer,
                                             fast_encode):
  records = [{'messages': messages} for messages in gsm8k_chat[:800]]
  results, _ = rows_of(records, renderer, fast_encode, chat_rows='per_turn')
  for index, record in enumerate(records):
    assert results[index] == reference_per_turn(qwen, record), index


def test_fastokens_gives_the_same_rows(bfcl, renderer, encode, fast_encode):
  records = bfcl[:200] + [record for record, _ in CASES.values()]
  for mode in ('text', 'special'):
    assert rows_of(records, renderer, fast_encode,
                   special_tokens_in_text=mode)[0] == rows_of(
                       records, renderer, encode,
                       special_tokens_in_text=mode)[0]


# ---------------------------------------------------------- the sample file

SAMPLE_REJECTIONS = {
    'bad-messages-not-array': 'invalid_messages',
    'bad-empty-messages': 'invalid_messages',
    'bad-unknown-role': 'invalid_messages',
    'bad-missing-role': 'invalid_messages',
    'bad-content-null': 'invalid_messages',
    'bad-message-not-object': 'invalid_messages',
    'bad-weight': 'invalid_messages',
    'bad-no-assistant': 'no_assistant_turn',
    'bad-trl-no-assistant': 'no_assistant_turn',
    'bad-reasoning-in-history': 'template_drops_field',
    'bad-two-assistants-in-a-row': 'template_rewrites_history',
    'bad-lone-surrogate': 'invalid_unicode',
    'bad-tools-not-array': 'invalid_tools',
    'bad-tool-call-arguments': 'invalid_tool_calls',
    'bad-template-kwargs': 'invalid_chat_template_kwargs',
}


def test_chat_sample(renderer, encode):
  """Every line of examples/chat_sample.jsonl becomes a row or is
  rejected for the reason its id names; the long one needs truncation."""
  records = _sample()
  assert len(records) >= 40
  assert all(chat_records.record_kind(record) == 'chat' for record in records)
  results, _ = rows_of(records, renderer, encode, max_seq_len=4096)
  outcomes = {record['id']: results[index] for index, record in
              enumerate(records) if isinstance(results[index], str)}
  assert outcomes == {**SAMPLE_REJECTIONS, 'long-many-turns': 'too_long'}
  long_record = next(record for record in records
                     if record['id'] == 'long-many-turns')
  _, outcome = one(long_record, renderer, encode, max_seq_len=4096,
                   truncation='prompt_left')
  assert outcome.rows[0].truncated


def _sample():
  with open(CHAT_SAMPLE, encoding='utf-8') as lines:
    return [json.loads(line) for line in lines]


# ------------------------------------------------------- the Beam step

def test_the_tokenize_step_writes_per_turn_ids_and_counts(qwen):
  """TokenizeRecords on a chunk of a prompt/output record and two
  conversations: per_turn ids, one rejection, the chat counts."""
  settings = TokenizeSettings(tokenizer=EMBEDDED, max_seq_len=4096,
                              chat_rows='per_turn')
  dofn = TokenizeRecords(settings)
  dofn.setup()
  records = RecordChunk.empty('f')
  records.add(1, 'po', b'{}', 'Say hi.', 'Hi!')
  for number, name in ((2, 'two_user_turns_with_reasoning'),
                       (3, 'ends_with_user')):
    records.add(number, name, b'{}',
                conversation=parse_conversation(CASES[name][0]))
  [chunk], tagged = dofn_outputs(dofn, records)
  assert sorted(chunk.example_ids) == [
      'po', 'two_user_turns_with_reasoning#1',
      'two_user_turns_with_reasoning#3']
  [rejected] = tagged[TokenizeRecords.REJECTED]
  assert (rejected.line_number, rejected.reason) == (3, 'template_drops_field')
  [stats] = tagged[TokenizeRecords.STATS]
  assert (stats['chat_records'], stats['chat_extra_rows'],
          stats['assistant_turns'], stats['reasoning_turns_learned']) == (
              2, 1, 2, 2)


def test_without_a_chat_template_each_chat_record_is_rejected(tmp_path):
  """input_format auto: prompt/output records are written, conversations
  rejected no_chat_template, when the tokenizer has no template."""
  for name in os.listdir(embedded_tokenizer_dir()):
    with open(os.path.join(embedded_tokenizer_dir(), name), 'rb') as handle:
      data = handle.read()
    if name == 'tokenizer_config.json':
      config = json.loads(data)
      config.pop('chat_template', None)
      data = json.dumps(config).encode()
    (tmp_path / name).write_bytes(data)
  dofn = TokenizeRecords(TokenizeSettings(tokenizer=str(tmp_path),
                                          max_seq_len=4096))
  dofn.setup()
  records = RecordChunk.empty('f')
  records.add(1, 'po', b'{}', 'Say hi.', 'Hi!')
  records.add(2, 'c', b'{}', conversation=parse_conversation(
      CASES['one_turn'][0]))
  [chunk], tagged = dofn_outputs(dofn, records)
  assert chunk.example_ids == ['po']
  [rejected] = tagged[TokenizeRecords.REJECTED]
  assert rejected.reason == 'no_chat_template'
