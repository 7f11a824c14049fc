"""Runs the python blocks of one doc in order, in one namespace, as a reader
going down the page would:

  cd DIR && python /path/to/tests/doc_session.py docs/packing.md

DIR holds what the blocks read (tests/test_doc_snippets.py makes one).
Before a block runs, the stand-ins it declares are defined
(tests/doc_stand_ins.py); a block marked `not run` is skipped. A failing
block's traceback names the doc and its line.
"""

import os
import sys
import types

import doc_blocks
import doc_stand_ins


def run_python_blocks(doc: str):
  """Runs the python blocks of `doc` (relative to the repository)."""
  # A fresh module as __main__: what the blocks define is found where
  # torch.compile and pickling look for a script's globals.
  main = types.ModuleType('__main__')
  sys.modules['__main__'] = main
  namespace = main.__dict__
  for block in doc_blocks.blocks(doc):
    if block.language != 'python' or block.not_run:
      continue
    for name in block.stand_ins:
      namespace[name] = getattr(doc_stand_ins, name)()
    # Blank lines in front, so that line numbers are the doc's.
    exec(compile('\n' * block.line + block.code,
                 os.path.join(doc_blocks.ROOT, block.doc), 'exec'), namespace)


if __name__ == '__main__':
  run_python_blocks(sys.argv[1])
