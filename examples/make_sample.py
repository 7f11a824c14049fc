"""Writes examples/sample.jsonl: the bundled demo input (run once; committed).

Several hundred records of varied lengths and scripts, some with ids, plus a
few bad lines that the pipeline must reject with a reason.
"""

import json
import os
import random

_RNG = random.Random(20261123)
_TOPICS = ['rivers', 'prime numbers', 'sourdough bread', 'the Moon',
           'bicycles', 'volcanoes', 'honeybees', 'compilers', 'tea',
           'glaciers', 'chess openings', 'the printing press']
_UNICODE = [
    ('Traduis en français : « Le chat dort. »', 'The cat is sleeping.'),
    ('用一句话介绍长城。', '长城是中国古代修建的军事防御工程，绵延上万里。'),
    ('日本の首都はどこですか？', '日本の首都は東京です。🗼'),
    ('¿Cuántos días tiene un año bisiesto?', 'Un año bisiesto tiene 366 días.'),
    ('Напиши слово «мир» наоборот.', 'рим'),
    ('ما هي عاصمة مصر؟', 'عاصمة مصر هي القاهرة.'),
    ('Give three emoji for weather.', '☀️ 🌧️ ❄️'),
    ('Write ñ, ü, and ß in a sentence.', 'Señor Müller aß Brötchen.'),
]


def _math_record(index):
  a, b = _RNG.randint(2, 999), _RNG.randint(2, 999)
  return {'id': f'math-{index:04d}',
          'prompt': f'What is {a} + {b}? Show your work.',
          'output': f'We add {a} and {b}. {a} + {b} = {a + b}. '
                    f'The answer is {a + b}.'}


def _essay_record(index):
  topic = _RNG.choice(_TOPICS)
  sentences = _RNG.randint(1, 60)
  body = ' '.join(
      f'Fact {n + 1} about {topic}: it is worth a closer look, and careful '
      f'readers notice detail number {_RNG.randint(1, 10**6)}.'
      for n in range(sentences))
  record = {'prompt': f'Write {sentences} short facts about {topic}.',
            'output': body}
  if index % 3 == 0:
    record['id'] = f'essay-{index:04d}'
  return record


def _code_record(index):
  name = f'add_{index}'
  return {'prompt': f'Write a Python function {name}(a, b).\n\n```python\n',
          'output': f'def {name}(a, b):\n    """Adds."""\n    return a + b\n```'}


def records():
  for index in range(300):
    kind = index % 4
    if kind == 0:
      yield _math_record(index)
    elif kind == 1:
      yield _essay_record(index)
    elif kind == 2:
      yield _code_record(index)
    else:
      prompt, output = _UNICODE[index % len(_UNICODE)]
      yield {'id': f'unicode-{index:04d}', 'prompt': prompt, 'output': output}


BAD_LINES = [
    '{"prompt": "unterminated", "output": ',          # invalid_json
    '{"prompt": "no output here"}',                    # missing_field
    '{"prompt": 42, "output": "a number prompt"}',     # field_not_string
    '{"prompt": "", "output": "empty prompt"}',        # empty_prompt
    '["not", "an", "object"]',                         # not_an_object
    '',                                                # blank line (skipped)
    json.dumps({'prompt': 'Repeat forever.',
                'output': 'again and again ' * 3000}),  # too_long
]


def main():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      'sample.jsonl')
  lines = [json.dumps(record, ensure_ascii=False) for record in records()]
  for offset, bad in enumerate(BAD_LINES):
    lines.insert(37 * (offset + 1), bad)
  with open(path, 'w', encoding='utf-8') as handle:
    handle.write('\n'.join(lines) + '\n')
  print(f'wrote {len(lines)} lines to {path}')


if __name__ == '__main__':
  main()
