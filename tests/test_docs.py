"""The documentation follows the code it describes."""

import os
import re
import shlex
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


def test_the_readmes_inspect_example_is_what_the_command_prints(capsys):
  """The front page's token table, line for line (its `...` lines elide)."""
  from sftbeam.pipeline import cli
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as handle:
    readme = handle.read()
  command, shown = re.search(
      r'```bash\n\.venv/bin/sftbeam (inspect [^\n]*)\n```\n\n```\n(.*?)```',
      readme, re.S).groups()
  assert cli.main(shlex.split(command)) == 0
  printed = capsys.readouterr().out.splitlines()
  shown = [line for line in shown.splitlines() if line.strip() != '...']
  assert len(shown) >= 8
  assert all(line in printed for line in shown), (
      [line for line in shown if line not in printed])
  where = [printed.index(line) for line in shown]
  assert where == sorted(where)
