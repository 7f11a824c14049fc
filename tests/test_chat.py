"""The chat core (transforms/chat.py) against a reference written apart.

`reference_row` below implements docs/chat.md plainly, one record at a
time: it renders with the HuggingFace tokenizer, finds every content by
character positions, cuts the text, and calls the HuggingFace tokenizer on
each piece. chat.py must give the same rows (it batches, shares layouts and
encodes through the `encode` it is given). Independent checks on top:
decoding a row gives the rendering back, and its learned tokens decode to
exactly the assistant contents and their `<|im_end|>`.
"""

import collections
import copy
import functools
import json
import os

import fastokens
import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, shared_data
from sftbeam.transforms import chat
from sftbeam.transforms.tokenizer_source import (EMBEDDED,
                                                 embedded_tokenizer_dir,
                                                 load_tokenizer)

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

END = '<|im_end|>'
CHAT_SAMPLE = os.path.join(ROOT, 'examples', 'chat_sample.jsonl')


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
def fast_encode():
  """`encode` from fastokens (slow to load: once per module)."""
  fast = fastokens.Tokenizer.from_file(
      os.path.join(embedded_tokenizer_dir(), 'tokenizer.json'))

  def encode(texts, split_special_tokens):
    return [encoding.ids for encoding in fast.encode_batch(
        texts, add_special_tokens=False,
        split_special_tokens=split_special_tokens)]
  return encode


@pytest.fixture(scope='module', autouse=True)
def tokenizer_threads_off():
  """The Rust tokenizer's own thread pool costs more than it gives on the
  reference's small calls; the pipeline turns it off too."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('TOKENIZERS_PARALLELISM', 'false')
    yield


@pytest.fixture(scope='module')
def tokenizers_by_mode():
  """The embedded tokenizer per special_tokens_in_text mode (the reference
  calls the HuggingFace tokenizer as it is)."""
  import transformers  # pylint: disable=import-outside-toplevel
  return {'special': load_tokenizer(EMBEDDED),
          'text': transformers.AutoTokenizer.from_pretrained(
              embedded_tokenizer_dir(), split_special_tokens=True)}


@pytest.fixture(scope='module')
def encode(tokenizers_by_mode):
  return hf_encode(tokenizers_by_mode['special'])


# -------------------------------------------------------------- reference

def reference_tokens(messages, tokenizers_by_mode, special_tokens_in_text):
  """(ids, owners) of a conversation, or a rejection reason (str).

  owners[t] is the index of the assistant message token t learns with (its
  content or its end-of-turn marker), else -1.
  """
  template_tokenizer = tokenizers_by_mode['special']
  content_tokenizer = tokenizers_by_mode[special_tokens_in_text]
  text = template_tokenizer.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=False)
  marks = [f'\x02mark{index}\x03' for index in range(len(messages))]
  marked = template_tokenizer.apply_chat_template(
      [{'role': message['role'], 'content': mark}
       for message, mark in zip(messages, marks)],
      tokenize=False, add_generation_prompt=False)
  if any(marked.count(mark) != 1 for mark in marks):
    return 'template_changes_content'
  rebuilt = marked
  for message, mark in zip(messages, marks):
    rebuilt = rebuilt.replace(mark, message['content'])
  if rebuilt != text:
    return 'template_changes_content'

  # Where each content sits in the real text.
  spans, shift = {}, 0
  for position, index in sorted((marked.index(mark), index)
                                for index, mark in enumerate(marks)):
    start = position + shift
    spans[index] = (start, start + len(messages[index]['content']))
    shift += len(messages[index]['content']) - len(marks[index])

  specials = set(template_tokenizer.all_special_tokens) | {
      token.content for token in
      template_tokenizer.added_tokens_decoder.values() if token.special}
  cuts = {0, len(text)}
  end_of_turn = {}  # assistant index -> (start, end) of its marker text
  for index, (start, end) in spans.items():
    cuts |= {start, end}
    if messages[index]['role'] != 'assistant':
      continue
    next_start = min([other_start for other, (other_start, _) in spans.items()
                      if other != index and other_start >= end] +
                     [len(text)])
    # The earliest special-token string after the content, the longest
    # of those starting there.
    hits = [(text.find(special, end, next_start), -len(special))
            for special in specials]
    hits = [hit for hit in hits if hit[0] >= 0]
    if hits:
      at, minus_length = min(hits)
      end_of_turn[index] = (end, at - minus_length)
      cuts.add(at - minus_length)

  pieces = []  # (text, content?, owner)
  cuts = sorted(cuts)
  for start, end in zip(cuts, cuts[1:]):
    content_of = [index for index, (first, last) in spans.items()
                  if first <= start and end <= last]
    if content_of:
      index = content_of[0]
      owner = index if messages[index]['role'] == 'assistant' else -1
    else:
      owner = next((index for index, (first, last) in end_of_turn.items()
                    if first <= start and end <= last), -1)
    pieces.append((text[start:end], bool(content_of), owner))
  contents = iter(content_tokenizer(
      [piece for piece, is_content, _ in pieces if is_content] or [''],
      add_special_tokens=False)['input_ids'])
  ids, owners = [], []
  for piece, is_content, owner in pieces:
    piece_ids = (next(contents) if is_content else
                 _template_piece_ids(template_tokenizer, piece))
    ids += piece_ids
    owners += [owner] * len(piece_ids)
  return ids, owners


@functools.lru_cache(maxsize=None)
def _template_piece_ids(tokenizer, piece):
  """Template text recurs in every record: tokenized once per piece."""
  return tokenizer(piece, add_special_tokens=False)['input_ids']


def reference_supervised(messages, supervised_from, train_on):
  assistants = [index for index, message in enumerate(messages)
                if message['role'] == 'assistant' and index >= supervised_from]
  return set(assistants[-1:] if train_on == 'last_assistant' else assistants)


def reference_row(messages, tokenizers_by_mode, *, supervised_from=0,
                  train_on='assistant', special_tokens_in_text='text'):
  """(ids, supervised flags) of one conversation, or a rejection reason."""
  tokens = reference_tokens(messages, tokenizers_by_mode,
                            special_tokens_in_text)
  if isinstance(tokens, str):
    return tokens
  ids, owners = tokens
  supervised = reference_supervised(messages, supervised_from, train_on)
  flags = [owner in supervised for owner in owners]
  if not any(flags[1:]):
    return 'no_assistant_turn'
  return ids, flags


def reference_fitted(messages, tokenizers_by_mode, *, max_seq_len,
                     truncation, supervised_from=0, train_on='assistant'):
  """(ids, flags, truncated) after dropping whole turns one at a time
  until the row fits, or a rejection reason."""
  row = reference_row(messages, tokenizers_by_mode,
                      supervised_from=supervised_from, train_on=train_on)
  if isinstance(row, str) or len(row[0]) - 1 <= max_seq_len:
    return row if isinstance(row, str) else (*row, False)
  if truncation == 'none':
    return 'too_long'
  numbered = list(enumerate(messages))
  head = 0
  while messages[head]['role'] == 'system':
    head += 1
  turns = []
  for index, message in numbered[head:]:
    if not turns or message['role'] == 'user':
      turns.append([])
    turns[-1].append((index, message))
  for dropped in range(1, len(turns)):
    if truncation == 'output_right':
      kept_turns = turns[:len(turns) - dropped]
    else:
      kept_turns = turns[dropped:]
    kept = numbered[:head] + [item for turn in kept_turns for item in turn]
    kept_from = sum(1 for index, _ in kept if index < supervised_from)
    kept_messages = [message for _, message in kept]
    if not any(message['role'] == 'assistant'
               for message in kept_messages[kept_from:]):
      continue
    row = reference_row(kept_messages, tokenizers_by_mode,
                        supervised_from=kept_from, train_on=train_on)
    if isinstance(row, str):
      return row
    if len(row[0]) - 1 <= max_seq_len:
      return (*row, True)
  return 'too_long'


# ---------------------------------------------------------------- helpers

def tokenize(conversations, tokenizer, encode, **options):
  options = {'special_tokens_in_text': 'text', 'train_on': 'assistant',
             'max_seq_len': 100_000, 'truncation': 'none', **options}
  return chat.tokenize_conversations(conversations, tokenizer=tokenizer,
                                     encode=encode, **options)


def as_reference(result):
  """A tokenize_conversations result in the reference's terms."""
  if isinstance(result, chat.ChatRejected):
    return result.reason
  return result.ids, result.supervised


def learned_texts(tokenizer, row):
  """The decoded runs of consecutive learned tokens of a row."""
  runs, run = [], []
  for token, learned in zip(row.ids, row.supervised):
    if learned:
      run.append(token)
    elif run:
      runs.append(run)
      run = []
  runs += [run] if run else []
  return [decode(tokenizer, run) for run in runs]


def decode(tokenizer, ids):
  return tokenizer.decode(ids, skip_special_tokens=False,
                          clean_up_tokenization_spaces=False)


def m(role, content):
  return {'role': role, 'content': content}


CASES = {
    'one_turn': [m('user', 'What is 2+2?'), m('assistant', 'It is 4.')],
    'multi_turn_system': [
        m('system', 'You are terse.'), m('user', 'Capital of France?'),
        m('assistant', 'Paris.'), m('user', 'And of Italy?'),
        m('assistant', 'Rome.')],
    'unicode': [m('user', 'Übersetze: 猫は可愛い 🐈'),
                m('assistant', 'Die Katze ist süß. Ça va? Ωμέγα 😀')],
    'code': [m('user', 'Write a Python loop.\n```\nfor i in range(3):\n'),
             m('assistant', '```python\nfor i in range(3):\n    print(i)\n'
               '```\n\tdone {"x": [1, 2]}')],
    'two_assistants_in_a_row': [
        m('user', 'Count to two.'), m('assistant', 'One.'),
        m('assistant', 'Two.')],
    'ends_with_user': [
        m('user', 'Hi'), m('assistant', 'Hello!'), m('user', 'Bye')],
    'special_text_in_content': [
        m('user', f'Say {END} literally'),
        m('assistant', f'Here: {END}<|im_start|>user')],
    'tools': [
        m('system', 'Use tools.'), m('user', 'Weather in Oslo?'),
        m('assistant', 'Calling the weather tool.'),
        m('tool', '{"temp": -3}'), m('tool', '{"wind": 7}'),
        m('assistant', 'It is -3 C with wind 7 m/s.')],
    'empty_assistant_content': [m('user', 'Say nothing.'),
                                m('assistant', '')],
    'spaces_and_newlines_inside': [
        m('user', '  leading spaces\n\n'),
        m('assistant', 'trailing newlines\n\n'), m('user', '\n\nnext'),
        m('assistant', ' spaced  out ')],
}


# ------------------------------------------------------ rows vs reference

def assert_decodes_and_learns_assistants(tokenizer, row, messages, train_on):
  """The row decodes to the template's rendering and learns exactly the
  assistant contents `train_on` picks, each with its end-of-turn marker;
  gives those contents."""
  assert decode(tokenizer, row.ids) == tokenizer.apply_chat_template(
      messages, tokenize=False)
  assistants = [message['content'] for message in messages
                if message['role'] == 'assistant']
  if train_on == 'last_assistant':
    assistants = assistants[-1:]
  assert learned_texts(tokenizer, row) == [text + END for text in assistants]
  return assistants


@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.parametrize('train_on', chat.TRAIN_ON)
@pytest.mark.parametrize('special_tokens_in_text', ('text', 'special'))
def test_rows_equal_reference(name, train_on, special_tokens_in_text,
                              tokenizers_by_mode, encode):
  messages = CASES[name]
  [row] = tokenize([chat.Conversation(messages)], tokenizers_by_mode['text'],
                   encode, train_on=train_on,
                   special_tokens_in_text=special_tokens_in_text)
  assert as_reference(row) == reference_row(
      messages, tokenizers_by_mode, train_on=train_on,
      special_tokens_in_text=special_tokens_in_text)
  tokenizer = tokenizers_by_mode['text']
  assistants = assert_decodes_and_learns_assistants(tokenizer, row, messages,
                                                   train_on)
  assert row.assistant_turns == len(assistants)
  assert not row.truncated


def test_special_token_text_in_content_follows_the_mode(tokenizers_by_mode,
                                                        encode):
  conversation = chat.Conversation(CASES['special_text_in_content'])
  im_end = tokenizers_by_mode['text'].convert_tokens_to_ids(END)
  rows = {mode: tokenize([conversation], tokenizers_by_mode['text'], encode,
                         special_tokens_in_text=mode)[0]
          for mode in ('text', 'special')}
  # The template's own markers end two turns; `special` adds one from each
  # content.
  assert rows['text'].ids.count(im_end) == 2
  assert rows['special'].ids.count(im_end) == 4
  assert len(rows['text'].ids) > len(rows['special'].ids)


def test_trl_form_learns_only_the_completion(tokenizers_by_mode, encode):
  record = {'prompt': CASES['multi_turn_system'][:3] +
                      [m('user', 'And of Italy?')],
            'completion': [m('assistant', 'Rome.')]}
  conversation = chat.parse_conversation(record)
  assert conversation.supervised_from == 4
  [row] = tokenize([conversation], tokenizers_by_mode['text'], encode)
  assert learned_texts(tokenizers_by_mode['text'], row) == ['Rome.' + END]
  assert as_reference(row) == reference_row(
      conversation.messages, tokenizers_by_mode, supervised_from=4)


# ------------------------------------------------------------ Qwen3 rules

@pytest.mark.parametrize('messages', [
    [m('user', 'Q1'), m('assistant', '<think>\nhmm\n</think>\n\nA1'),
     m('user', 'Q2'), m('assistant', 'A2')],
    [m('user', 'Q1'), m('assistant', '\n\nA1')],
    [m('user', 'Q1'), m('assistant', '<think>\nhmm\n</think>\n\nA1')],
], ids=['think_in_history', 'leading_newlines_in_last', 'think_in_last'])
def test_qwen3_rewrites_are_rejected_not_mismasked(messages,
                                                   tokenizers_by_mode, encode):
  [row] = tokenize([chat.Conversation(messages)], tokenizers_by_mode['text'],
                   encode)
  assert isinstance(row, chat.ChatRejected)
  assert row.reason == 'template_changes_content'
  assert 'messages[1] (assistant)' in str(row)
  assert reference_row(messages, tokenizers_by_mode) == row.reason


def test_leading_newlines_are_fine_before_the_last_query(tokenizers_by_mode,
                                                         encode):
  # Only the answer after the last user message is lstripped.
  messages = [m('user', 'Q1'), m('assistant', '\n\nA1'), m('user', 'Q2'),
              m('assistant', 'A2')]
  [row] = tokenize([chat.Conversation(messages)], tokenizers_by_mode['text'],
                   encode)
  assert learned_texts(tokenizers_by_mode['text'], row) == [
      '\n\nA1' + END, 'A2' + END]


# ----------------------------------------------------- random conversations

_TEXT = st.lists(st.one_of(
    st.text(alphabet='ab Z09 \n\t.#<|>`é日🙂', max_size=8),
    st.sampled_from([END, '<|im_start|>', '<think>', '</think>',
                     '<tool_response>', '</tool_response>', '\n\n'])),
    max_size=5).map(''.join)


@st.composite
def conversations(draw):
  messages = []
  if draw(st.booleans()):
    messages.append(m('system', draw(_TEXT)))
  for _ in range(draw(st.integers(1, 3))):
    messages.append(m('user', draw(_TEXT)))
    for role in draw(st.lists(st.sampled_from(['assistant', 'tool']),
                              max_size=3)):
      messages.append(m(role, draw(_TEXT)))
  if not any(message['role'] == 'assistant' for message in messages):
    messages.append(m('assistant', draw(_TEXT)))
  return messages


def _qwen3_may_rewrite(messages) -> bool:
  """Whether the embedded template may render these contents otherwise:
  it splits assistant contents at </think>, lstrips the last answer's
  newlines, and treats a user turn wrapped in <tool_response> as a tool's."""
  return any(
      (message['role'] == 'assistant' and
       ('</think>' in message['content'] or message['content'][:1] == '\n')) or
      (message['role'] == 'user' and
       message['content'].startswith('<tool_response>'))
      for message in messages)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations(), train_on=st.sampled_from(chat.TRAIN_ON),
       mode=st.sampled_from(['text', 'special']))
def test_random_conversations_decode_and_mask_exactly(
    messages, train_on, mode, tokenizers_by_mode, encode):
  tokenizer = tokenizers_by_mode['text']
  [row] = tokenize([chat.Conversation(messages)], tokenizer, encode,
                   train_on=train_on, special_tokens_in_text=mode)
  assert as_reference(row) == reference_row(
      messages, tokenizers_by_mode, train_on=train_on,
      special_tokens_in_text=mode)
  if isinstance(row, chat.ChatRejected):
    assert row.reason == 'template_changes_content'
    assert _qwen3_may_rewrite(messages)
    return
  assert_decodes_and_learns_assistants(tokenizer, row, messages, train_on)


# ------------------------------------------------------------ gsm8k_chat

@pytest.fixture(scope='module')
def gsm8k_chat():
  with open(shared_data('gsm8k_chat.jsonl'), encoding='utf-8') as lines:
    return [json.loads(line)['messages'] for line in lines]


@pytest.fixture(scope='module')
def gsm8k_reference(gsm8k_chat, tokenizers_by_mode):
  return [reference_tokens(messages, tokenizers_by_mode, 'text')
          for messages in gsm8k_chat]


@pytest.fixture(scope='module')
def gsm8k_rows(gsm8k_chat, tokenizers_by_mode, encode, fast_encode):
  """rows(train_on, encoder): gsm8k_chat's rows, computed when first asked
  (HuggingFace's encoder takes 8 s of CPU here, fastokens a fraction)."""
  encoders = {'hf': encode, 'fastokens': fast_encode}
  conversations = [chat.Conversation(messages) for messages in gsm8k_chat]

  @functools.cache
  def rows(train_on, encoder):
    return tokenize(conversations, tokenizers_by_mode['text'],
                    encoders[encoder], train_on=train_on)
  return rows


@pytest.mark.parametrize('train_on, encoder', [('assistant', 'hf'),
                                               ('last_assistant', 'fastokens')])
def test_gsm8k_chat_equals_reference(train_on, encoder, gsm8k_chat,
                                     gsm8k_reference, gsm8k_rows):
  assert len(gsm8k_chat) == 4108
  for messages, (ids, owners), row in zip(gsm8k_chat, gsm8k_reference,
                                          gsm8k_rows(train_on, encoder)):
    supervised = reference_supervised(messages, 0, train_on)
    assert row.ids == ids
    assert row.supervised == [owner in supervised for owner in owners]
    assert row.assistant_turns == len(supervised)


def test_gsm8k_chat_trl_form_equals_reference(gsm8k_chat, gsm8k_reference,
                                              tokenizers_by_mode, fast_encode):
  conversations = [chat.parse_conversation(
      {'prompt': messages[:-1], 'completion': messages[-1:]})
      for messages in gsm8k_chat]
  rows = tokenize(conversations, tokenizers_by_mode['text'], fast_encode)
  for messages, (ids, owners), row in zip(gsm8k_chat, gsm8k_reference, rows):
    assert row.ids == ids
    assert row.supervised == [owner == len(messages) - 1 for owner in owners]
    assert row.assistant_turns == 1


def test_fastokens_gives_the_same_rows(gsm8k_rows, tokenizers_by_mode, encode,
                                       fast_encode):
  assert gsm8k_rows('assistant', 'fastokens') == gsm8k_rows('assistant', 'hf')
  cases = [chat.Conversation(messages) for messages in CASES.values()]
  for mode in ('text', 'special'):
    assert tokenize(cases, tokenizers_by_mode['text'], fast_encode,
                    special_tokens_in_text=mode) == tokenize(
                        cases, tokenizers_by_mode['text'], encode,
                        special_tokens_in_text=mode)


# -------------------------------------------------------------- truncation

@pytest.mark.parametrize('truncation', ('output_right', 'prompt_left'))
@pytest.mark.parametrize('train_on, trl', [('assistant', False),
                                           ('last_assistant', False),
                                           ('assistant', True)])
def test_truncation_drops_whole_turns_like_the_reference(
    truncation, train_on, trl, gsm8k_chat, tokenizers_by_mode, encode):
  """Bisection over shorter conversations finds what dropping one turn at
  a time finds."""
  max_seq_len = 300
  chosen = gsm8k_chat[:40]
  # TRL: the last answer is the completion.
  starts = [len(messages) - 1 if trl else 0 for messages in chosen]
  rows = tokenize([chat.Conversation(messages, start)
                   for messages, start in zip(chosen, starts)],
                  tokenizers_by_mode['text'], encode, max_seq_len=max_seq_len,
                  truncation=truncation, train_on=train_on)
  outcomes = collections.Counter()
  for messages, start, row in zip(chosen, starts, rows):
    expected = reference_fitted(messages, tokenizers_by_mode,
                                max_seq_len=max_seq_len,
                                truncation=truncation, train_on=train_on,
                                supervised_from=start)
    if isinstance(row, chat.ChatRejected):
      assert row.reason == expected
    else:
      assert (row.ids, row.supervised, row.truncated) == expected
      assert len(row.ids) - 1 <= max_seq_len
    outcomes[getattr(row, 'reason', None) or row.truncated] += 1
  # The setting exercises every outcome; but output_right cannot shorten a
  # TRL record whose completion is the last turn's answer.
  possible = {True, False, 'too_long'}
  if trl and truncation == 'output_right':
    possible = {False, 'too_long'}
  assert set(outcomes) == possible, outcomes


def test_truncation_keeps_system_messages_and_the_completion(
    tokenizers_by_mode, encode):
  system = m('system', 'Be brief.')
  turns = [[m('user', f'Question {i}: ' + 'word ' * 30),
            m('assistant', f'Answer {i}: ' + 'word ' * 30)] for i in range(6)]
  messages = [system] + [message for turn in turns for message in turn]
  tokenizer = tokenizers_by_mode['text']
  full = tokenize([chat.Conversation(messages)], tokenizer, encode)[0]
  max_seq_len = len(full.ids) // 2
  left, right = (tokenize([chat.Conversation(messages)], tokenizer, encode,
                          max_seq_len=max_seq_len, truncation=mode)[0]
                 for mode in ('prompt_left', 'output_right'))
  for row in (left, right):
    text = decode(tokenizer, row.ids)
    assert row.truncated and len(row.ids) - 1 <= max_seq_len
    assert text.startswith('<|im_start|>system\nBe brief.<|im_end|>')
  assert 'Answer 5' in decode(tokenizer, left.ids)
  assert 'Question 0' not in decode(tokenizer, left.ids)
  assert 'Question 0' in decode(tokenizer, right.ids)
  assert 'Answer 5' not in decode(tokenizer, right.ids)
  # TRL: prompt_left keeps the completion, output_right cannot drop it.
  trl = chat.Conversation(messages, supervised_from=len(messages) - 1)
  [kept] = tokenize([trl], tokenizer, encode, max_seq_len=max_seq_len,
                    truncation='prompt_left')
  assert learned_texts(tokenizer, kept) == [turns[5][1]['content'] + END]
  [refused] = tokenize([trl], tokenizer, encode, max_seq_len=max_seq_len,
                       truncation='output_right')
  assert refused.reason == 'too_long'


# ------------------------------------------------------ rejections, kinds

@pytest.mark.parametrize('obj, reason, says', [
    ({'messages': 'hi'}, 'invalid_messages', '"messages" is a string'),
    ({'messages': []}, 'invalid_messages', 'empty array'),
    ({'messages': [m('user', 'a'), 'b']}, 'invalid_messages',
     'messages[1] is a string'),
    ({'messages': [{'content': 'a'}]}, 'invalid_messages',
     'messages[0] has no "role"'),
    ({'messages': [m('user', 'a'), m('bot', 'b')]}, 'invalid_messages',
     "messages[1] has role 'bot'"),
    ({'messages': [m('user', 'a'), {'role': 'assistant', 'content': None}]},
     'invalid_messages', 'messages[1] (assistant) has no string "content"'),
    ({'messages': [m('user', 'a'), m('assistant', ['b'])]},
     'invalid_messages', 'it is an array'),
    ({'prompt': [m('user', 'a')], 'completion': []}, 'invalid_messages',
     '"completion" is an empty array'),
    ({'prompt': [m('user', 'a')], 'completion': [m('user', 'b')]},
     'no_assistant_turn', 'the completion has no assistant'),
    ({'messages': [m('system', 's'), m('user', 'a')]}, 'no_assistant_turn',
     'the conversation has no assistant'),
    ({'messages': [m('user', 'a'), m('assistant', 'b\ud800')]},
     'invalid_unicode', 'messages[1] (assistant) content'),
])
def test_parse_rejections_say_what_and_where(obj, reason, says):
  with pytest.raises(chat.ChatRejected) as rejected:
    chat.parse_conversation(obj)
  assert rejected.value.reason == reason
  assert says in str(rejected.value)


def test_parse_keeps_role_and_content_only():
  conversation = chat.parse_conversation({'messages': [
      {'role': 'user', 'content': 'a', 'name': 'x'},
      {'role': 'assistant', 'content': 'b', 'tool_calls': []}]})
  assert conversation == chat.Conversation([m('user', 'a'),
                                            m('assistant', 'b')], 0)


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
  assert chat.record_kind(obj, 'prompt', 'output') == kind


def test_record_kind_uses_the_configured_fields():
  assert chat.record_kind({'question': 'p'}, 'question', 'answer') == (
      'prompt_output')


@pytest.fixture(scope='module')
def templateless():
  import transformers
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      embedded_tokenizer_dir())
  tokenizer.chat_template = None
  return tokenizer


CHATML = ("{% for message in messages %}<|im_start|>{{ message.role }}\n"
          "{{ message.content }}<|im_end|>\n{% endfor %}")


def test_no_chat_template(templateless, encode):
  assert not chat.has_chat_template(templateless)
  conversation = chat.Conversation(CASES['one_turn'])
  [row] = tokenize([conversation], templateless, encode)
  assert row.reason == 'no_chat_template'
  [row] = tokenize([conversation], templateless, encode, chat_template=CHATML)
  assert decode(templateless, row.ids) == (
      '<|im_start|>user\nWhat is 2+2?<|im_end|>\n'
      '<|im_start|>assistant\nIt is 4.<|im_end|>\n')
  assert learned_texts(templateless, row) == ['It is 4.' + END]


@pytest.mark.parametrize('template, reason, says', [
    (CHATML.replace('message.content', 'message.content | trim'),
     'template_changes_content', 'messages[1] (assistant)'),
    (CHATML.replace('{{ message.content }}',
                    '{{ message.content }}{{ message.content }}'),
     'template_changes_content', 'messages[0] (user) 2 times'),
    (CHATML.replace('{{ message.content }}', ''),
     'template_changes_content', 'messages[0] (user) 0 times'),
    ("{{ raise_exception('roles must alternate') }}", 'invalid_messages',
     'roles must alternate'),
])
def test_templates_that_hide_contents_are_refused(template, reason, says,
                                                  templateless, encode):
  conversation = chat.Conversation([m('user', 'Hi'),
                                    m('assistant', ' padded answer ')])
  [row] = tokenize([conversation], templateless, encode,
                   chat_template=template)
  assert row.reason == reason
  assert says in str(row)


def test_too_long_without_truncation(tokenizers_by_mode, encode):
  conversation = chat.Conversation(CASES['multi_turn_system'])
  [row] = tokenize([conversation], tokenizers_by_mode['text'], encode,
                   max_seq_len=10)
  assert row.reason == 'too_long'
  assert 'max_seq_len 10' in str(row)


def test_a_failing_encode_rejects_only_its_record(tokenizers_by_mode,
                                                  encode):
  def picky_encode(texts, split_special_tokens):
    if any('poison' in text for text in texts):
      raise RuntimeError('cannot encode poison')
    return encode(texts, split_special_tokens)

  conversations = [chat.Conversation(CASES['one_turn']),
                   chat.Conversation([m('user', 'poison'),
                                      m('assistant', 'x')]),
                   chat.Conversation(CASES['unicode'])]
  rows = tokenize(conversations, tokenizers_by_mode['text'], picky_encode)
  assert rows[1].reason == 'tokenizer_error'
  assert 'cannot encode poison' in str(rows[1])
  assert rows[0] == tokenize(conversations[:1], tokenizers_by_mode['text'],
                             encode)[0]
  assert not isinstance(rows[2], chat.ChatRejected)


def test_settings_are_checked(tokenizers_by_mode, encode):
  with pytest.raises(ValueError, match='train_on must be one of'):
    tokenize([], tokenizers_by_mode['text'], encode, train_on='all')


def test_the_callers_messages_are_left_alone(tokenizers_by_mode, encode):
  messages = copy.deepcopy(CASES['tools'])
  tokenize([chat.Conversation(messages)], tokenizers_by_mode['text'], encode,
           max_seq_len=40, truncation='prompt_left')
  assert messages == CASES['tools']


# ---------------------------------------------------------- the sample file

SAMPLE_REJECTIONS = {
    'bad-messages-not-array': 'invalid_messages',
    'bad-empty-messages': 'invalid_messages',
    'bad-unknown-role': 'invalid_messages',
    'bad-missing-role': 'invalid_messages',
    'bad-content-null': 'invalid_messages',
    'bad-message-not-object': 'invalid_messages',
    'bad-no-assistant': 'no_assistant_turn',
    'bad-trl-no-assistant': 'no_assistant_turn',
    'bad-think-in-history': 'template_changes_content',
    'bad-leading-newline': 'template_changes_content',
    'bad-lone-surrogate': 'invalid_unicode',
}


def test_chat_sample(tokenizers_by_mode, encode):
  """Every line of examples/chat_sample.jsonl becomes a row or is
  rejected for the reason its id names; the long one needs truncation."""
  with open(CHAT_SAMPLE, encoding='utf-8') as lines:
    records = [json.loads(line) for line in lines]
  assert len(records) >= 30
  outcomes, conversations = {}, {}
  for record in records:
    assert chat.record_kind(record) == 'chat', record['id']
    try:
      conversations[record['id']] = chat.parse_conversation(record)
    except chat.ChatRejected as rejected:
      outcomes[record['id']] = rejected.reason
  rows = tokenize(list(conversations.values()), tokenizers_by_mode['text'],
                  encode, max_seq_len=4096)
  for example_id, row in zip(conversations, rows):
    outcomes[example_id] = getattr(row, 'reason', 'ok')
  assert {example_id: reason for example_id, reason in outcomes.items()
          if reason != 'ok'} == {**SAMPLE_REJECTIONS,
                                 'long-many-turns': 'too_long'}
  [long_row] = tokenize([conversations['long-many-turns']],
                        tokenizers_by_mode['text'], encode, max_seq_len=4096,
                        truncation='prompt_left')
  assert long_row.truncated

