"""The documentation follows the code it describes."""

import os
import re
import subprocess
import sys

from conftest import ROOT


def test_the_options_table_is_generated_from_the_options():
  table = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'scripts', 'options_doc.py')],
      capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(ROOT, 'docs', 'options.md'), encoding='utf-8') as handle:
    docs = handle.read()
  assert table in docs, ('docs/options.md is out of date: run '
                         '.venv/bin/python scripts/options_doc.py')


def test_the_readme_is_a_front_page_whose_links_resolve():
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as handle:
    readme = handle.read()
  assert len(readme.splitlines()) <= 300
  for target in re.findall(r'\]\(([^)#]+)\)', readme):
    if '://' not in target:
      assert os.path.exists(os.path.join(ROOT, target)), target


def test_no_file_points_outside_the_repository():
  """Apart from the shared data the tests and benchmarks read."""
  tracked = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
  for name in tracked:
    if name == 'tests/test_docs.py' or not name.endswith(
        ('.py', '.md', '.yaml', '.sh', '.txt', '.jsonl')):
      continue
    with open(os.path.join(ROOT, name), encoding='utf-8') as handle:
      text = handle.read()
    for pattern in ('shared/spec', 'visual_guide', r'\bissue \d+'):
      assert not re.search(pattern, text), (name, pattern)
