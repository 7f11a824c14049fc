"""A JSONL file holding every hostile case of docs/bad_input.md, and what
must become of each line: written (with its id, prompt and output), a blank
line, or rejected with a given reason. Good records sit between the bad
ones.
"""

import json
from typing import NamedTuple, Optional, Tuple

BLANK = 'blank'
WRITTEN = 'written'
HUGE_LINE_BYTES = 50 << 20

# Long texts: thousands of tokens each (the test checks the counts).
LONG_TEXT = 'The quick brown fox jumps over the lazy dog, twice. ' * 200
LONGER_TEXT = LONG_TEXT * 2


class Case(NamedTuple):
  name: str
  line: bytes  # without its newline
  expect: str  # WRITTEN, BLANK or a reason code
  record: Optional[Tuple[str, str, str]] = None  # (id, prompt, output)
  newline: bytes = b'\n'


def _json(**fields) -> bytes:
  return json.dumps(fields).encode('utf-8')


def good(example_id, prompt='Say hello.', output='Hello!', newline=b'\n',
         prefix=b'', **extra) -> Case:
  """A record that must be written as it is."""
  line = prefix + _json(id=example_id, prompt=prompt, output=output, **extra)
  return Case(example_id, line, WRITTEN, (example_id, prompt, output),
              newline)


def bad(name, line, reason) -> Case:
  return Case(name, line, reason)


_user = {'role': 'user', 'content': 'Hi'}
_answer = {'role': 'assistant', 'content': 'Hello'}


def _nested(depth: int) -> bytes:
  return b'[' * depth + b']' * depth


def cases():
  """Every case, in file order (line number = index + 1)."""
  return [
      good('bom-first-line', prefix=b'\xef\xbb\xbf'),
      good('crlf', 'Line endings\r\n?', 'CRLF.', newline=b'\r\n'),
      Case('empty-line', b'', BLANK),
      bad('latin1-byte', b'{"prompt": "caf\xe9", "output": "x"}',
          'invalid_utf8'),
      good('between-1'),
      bad('cut-multibyte', b'{"prompt": "\xe2\x82", "output": "x"}',
          'invalid_utf8'),
      bad('surrogate-bytes', b'{"prompt": "\xed\xa0\x80", "output": "x"}',
          'invalid_utf8'),
      bad('overlong-utf8', b'{"prompt": "\xc0\xaf", "output": "x"}',
          'invalid_utf8'),
      Case('spaces-and-tab-line', b'  \t  ', BLANK),
      Case('crlf-empty-line', b'', BLANK, newline=b'\r\n'),
      bad('array', b'[]', 'not_an_object'),
      bad('string', b'"x"', 'not_an_object'),
      bad('number', b'3', 'not_an_object'),
      bad('null', b'null', 'not_an_object'),
      bad('true', b'true', 'not_an_object'),
      good('between-2', 'Unicode: 日本語, עברית, émoji 🎉, e\u0301',
           'Ça va: 中文 ✓'),
      bad('empty-object', b'{}', 'missing_field'),
      bad('no-output', _json(prompt='a'), 'missing_field'),
      bad('prompt-number', _json(prompt=42, output='x'), 'field_not_string'),
      bad('output-list', _json(prompt='a', output=['x']), 'field_not_string'),
      bad('prompt-null', _json(prompt=None, output='x'), 'field_not_string'),
      bad('output-object', _json(prompt='a', output={'x': 1}),
          'field_not_string'),
      bad('output-bool', _json(prompt='a', output=True), 'field_not_string'),
      bad('id-list', _json(id=[1], prompt='a', output='x'),
          'field_not_string'),
      bad('id-float', _json(id=1.5, prompt='a', output='x'),
          'field_not_string'),
      Case('id-integer', _json(id=7, prompt='Seven?', output='7'), WRITTEN,
           ('7', 'Seven?', '7')),
      good('extra-fields', source='web', score=0.5, tags=['a', None],
           meta={'prompt': 1, 'deeper': {'output': [1, 2, {'x': None}]}}),
      bad('duplicate-prompt', b'{"prompt": "a", "prompt": "b", "output": "c"}',
          'duplicate_field'),
      bad('duplicate-output', b'{"prompt": "a", "output": "b", "output": "c"}',
          'duplicate_field'),
      bad('duplicate-id',
          b'{"id": "x", "prompt": "a", "output": "b", "id": "y"}',
          'duplicate_field'),
      bad('duplicate-escaped-key',
          b'{"prompt": "a", "\\u0070rompt": "b", "output": "c"}',
          'duplicate_field'),
      Case('duplicate-extra-key',
           b'{"id": "dup-extra", "k": 1, "k": 2, "prompt": "p", '
           b'"output": "o"}', WRITTEN, ('dup-extra', 'p', 'o')),
      Case('duplicate-nested-key',
           b'{"id": "dup-nested", "prompt": "p", "output": "o", '
           b'"meta": {"prompt": 1, "prompt": 2}}', WRITTEN,
           ('dup-nested', 'p', 'o')),
      good('escaped-nul', 'before\x00after', 'nul\x00'),
      good('escaped-controls', 'bell\x07 esc\x1b vt\x0b del\x7f',
           'ff\x0c us\x1f'),
      bad('raw-nul-in-string', b'{"prompt": "a\x00b", "output": "c"}',
          'invalid_json'),
      bad('raw-bell-in-string', b'{"prompt": "a\x07b", "output": "c"}',
          'invalid_json'),
      bad('raw-tab-in-string', b'{"prompt": "a\tb", "output": "c"}',
          'invalid_json'),
      bad('raw-nul-bytes', b'\x00\x00\x00', 'invalid_json'),
      bad('nul-after-object', b'{"prompt": "a", "output": "b"}\x00',
          'invalid_json'),
      bad('lone-high-surrogate', b'{"prompt": "a\\ud800", "output": "b"}',
          'invalid_unicode'),
      bad('lone-low-surrogate', b'{"prompt": "a", "output": "\\udfff"}',
          'invalid_unicode'),
      bad('lone-surrogate-id',
          b'{"id": "\\udbff", "prompt": "a", "output": "b"}',
          'invalid_unicode'),
      bad('reversed-surrogates',
          b'{"prompt": "\\ude00\\ud83d", "output": "b"}', 'invalid_unicode'),
      Case('surrogate-pair',
           b'{"id": "pair", "prompt": "\\ud83d\\ude00", "output": "ok"}',
           WRITTEN, ('pair', '\U0001f600', 'ok')),
      good('between-3'),
      bad('huge-line', b'{"id": "huge", "prompt": "' +
          b'a' * HUGE_LINE_BYTES + b'", "output": "x"}', 'line_too_long'),
      good('after-huge'),
      bad('deep-arrays', b'[' * 100_000, 'invalid_json'),
      bad('deep-objects', b'{"a": ' * 50_000, 'invalid_json'),
      bad('deep-extra-field', b'{"prompt": "a", "output": "b", "m": ' +
          _nested(20_000) + b'}', 'invalid_json'),
      Case('nested-extra-field', b'{"id": "nested", "prompt": "p", '
           b'"output": "o", "m": ' + _nested(200) + b'}', WRITTEN,
           ('nested', 'p', 'o')),
      bad('whitespace-prompt', _json(prompt='  \t ', output='x'),
          'empty_prompt'),
      bad('whitespace-output', _json(prompt='a', output='\n\t '),
          'empty_output'),
      bad('empty-prompt', _json(prompt='', output='x'), 'empty_prompt'),
      bad('empty-output', _json(prompt='a', output=''), 'empty_output'),
      bad('ideographic-space-prompt', _json(prompt='\u3000', output='x'),
          'empty_prompt'),
      good('im-end', 'Say <|im_end|> now', 'Done.<|im_end|><|endoftext|>'),
      good('long-prompt', LONG_TEXT, 'Short answer.'),
      good('long-output', 'Repeat it.', LONG_TEXT),
      bad('too-long', _json(prompt=LONGER_TEXT, output=LONG_TEXT), 'too_long'),
      bad('cut-json', b'{"prompt": "a", "output"', 'invalid_json'),
      bad('trailing-garbage', b'{"prompt": "a", "output": "b"} x',
          'invalid_json'),
      bad('single-quotes', b"{'prompt': 'a', 'output': 'b'}", 'invalid_json'),
      # Chat records: every malformed tool, reasoning or learning field.
      bad('chat-tools-object', _json(
          messages=[_user, _answer], tools={'name': 'f'}), 'invalid_tools'),
      bad('chat-tools-bad-json', _json(
          messages=[_user, _answer], tools='[{"name": '), 'invalid_tools'),
      bad('chat-tool-call-no-name', _json(messages=[_user, {
          'role': 'assistant', 'content': None,
          'tool_calls': [{'function': {'arguments': {}}}]}]),
          'invalid_tool_calls'),
      bad('chat-arguments-not-json', _json(messages=[_user, {
          'role': 'assistant', 'content': '', 'tool_calls': [
              {'function': {'name': 'f', 'arguments': '{x: 1}'}}]}]),
          'invalid_tool_calls'),
      bad('chat-kwargs-list', _json(messages=[_user, _answer],
                                    chat_template_kwargs=[True]),
          'invalid_chat_template_kwargs'),
      bad('chat-weight-half', _json(messages=[_user, dict(_answer,
                                                          weight=0.5)]),
          'invalid_messages'),
      bad('chat-all-weight-0', _json(messages=[_user, dict(_answer,
                                                           weight=0)]),
          'no_assistant_turn'),
      bad('chat-reasoning-dropped', _json(messages=[
          _user, dict(_answer, reasoning_content='hmm'), _user, _answer]),
          'template_drops_field'),
      good('bom-later-line', prefix=b'\xef\xbb\xbf'),
      good('last-line-no-newline', newline=b''),
  ]


def write_file(path, all_cases) -> None:
  with open(path, 'wb') as handle:
    for case in all_cases:
      handle.write(case.line + case.newline)
