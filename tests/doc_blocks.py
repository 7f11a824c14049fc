"""The fenced code blocks of README.md and docs/*.md, for the tests that
check them (tests/test_docs.py, tests/test_doc_snippets.py).

A block's language is its fence's word (```python, ```bash; none for shown
output). An HTML comment on the line right before the fence says how a
test treats the block:

  <!-- not run: REASON -->          the snippet runner skips it, saying why
  <!-- stand-ins: model, batch -->  defined before the block runs, each by
                                    the function of that name in
                                    tests/doc_stand_ins.py
"""

import os
import re
from typing import List, NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FENCE = re.compile(r'^(?P<indent> *)```(?P<language>[\w-]*)\s*$')
NOTE = re.compile(r'^ *<!-- (?P<kind>not run|stand-ins): (?P<text>.+?) -->\s*$')


class Block(NamedTuple):
  doc: str          # relative to the repository: 'docs/packing.md'
  line: int         # the opening fence's line, 1-based
  language: str     # 'python', 'bash', ... or '' (shown output)
  code: str         # the lines between the fences, indentation removed
  not_run: str      # the reason it is not run, or ''
  stand_ins: tuple  # the names to define before it runs


def documents() -> List[str]:
  """README.md and every docs/*.md, relative to the repository."""
  docs = sorted(name for name in os.listdir(os.path.join(ROOT, 'docs'))
                if name.endswith('.md'))
  return ['README.md'] + [os.path.join('docs', name) for name in docs]


def blocks(doc: str, root: str = ROOT) -> List[Block]:
  """Every fenced block of `doc` (relative to `root`), in order."""
  with open(os.path.join(root, doc), encoding='utf-8') as handle:
    lines = handle.read().splitlines()
  found, index = [], 0
  while index < len(lines):
    opening = FENCE.match(lines[index])
    if not opening:
      index += 1
      continue
    indent = len(opening['indent'])
    end = index + 1
    while lines[end].strip() != '```':
      end += 1
    note = NOTE.match(lines[index - 1]) if index else None
    note_kind, note_text = (note['kind'], note['text']) if note else ('', '')
    found.append(Block(
        doc, index + 1, opening['language'],
        '\n'.join(line[indent:] for line in lines[index + 1:end]) + '\n',
        note_text if note_kind == 'not run' else '',
        tuple(name.strip() for name in note_text.split(','))
        if note_kind == 'stand-ins' else ()))
    index = end + 1
  return found
