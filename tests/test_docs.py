"""The documentation follows the code it describes."""

import ast
import fnmatch
import os
import re
import shlex
import subprocess
import sys

import doc_blocks
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


# A test the docs cite: `tests/test_x.py::name` (or `test_x.py::name`, a
# name may carry a parameter, `[gz]`, or end in a `*` pattern), `::name`
# continuing the file named last, and `test_x.py` case `id` (or cases `a`,
# `b`) for the ids of a parametrized test.
CITATION = re.compile(
    r'`(?:tests/)?(?P<file>test_\w+\.py)(?:::(?P<name>[^`]+))?`'
    r'(?: cases? (?P<cases>`[^`]+`(?:, `[^`]+`)*))?'
    r'|`::(?P<continued>[^`]+)`')


def cited_tests(text: str) -> list:
  """(file, kind, what) for every test citation in `text`, in order; kind
  is 'file', 'name' or 'case'. A `::name` before any file is ('', 'name',
  name), which names no test."""
  citations, last_file = [], ''
  for match in CITATION.finditer(text):
    if match['continued']:
      citations.append((last_file, 'name', match['continued']))
      continue
    last_file = match['file']
    citations.append((last_file, 'file', last_file))
    if match['name']:
      citations.append((last_file, 'name', match['name']))
    for case in re.findall(r'`([^`]+)`', match['cases'] or ''):
      citations.append((last_file, 'case', case))
  return citations


def collected_tests(files: list) -> dict:
  """{file: the ids pytest collects in tests/file, `name` or `name[case]`}."""
  listing = subprocess.run(
      [sys.executable, '-m', 'pytest', '--collect-only', '-q',
       '-p', 'no:cacheprovider', *[os.path.join('tests', f) for f in files]],
      cwd=ROOT, capture_output=True, text=True, check=True).stdout
  tests = {name: [] for name in files}
  for line in listing.splitlines():
    path, _, test_id = line.partition('::')
    if test_id:
      tests[os.path.basename(path)].append(test_id)
  return tests


def top_level_names(file: str) -> set:
  """The functions and classes a test file defines (helpers a doc cites)."""
  with open(os.path.join(ROOT, 'tests', file), encoding='utf-8') as handle:
    tree = ast.parse(handle.read())
  return {node.name for node in tree.body
          if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def citation_exists(kind: str, what: str, test_ids: list,
                    helpers: set) -> bool:
  """Whether a citation of `kind` names something in its file."""
  if kind == 'file':
    return True  # checked by its existence on disk
  if kind == 'case':
    return any(test_id.endswith(f'[{what}]') for test_id in test_ids)
  if not what.startswith('test_'):
    return what in helpers
  return any(test_id == what or test_id.startswith(what + '[')
             or fnmatch.fnmatchcase(test_id, what) for test_id in test_ids)


def test_every_test_the_docs_cite_exists():
  """`docs/x.md: test_y.py::name` for every citation naming no test."""
  citations = []
  for doc in doc_blocks.documents():
    with open(os.path.join(ROOT, doc), encoding='utf-8') as handle:
      citations += [(doc, *cited) for cited in cited_tests(handle.read())]
  assert len(citations) > 50  # the parser still finds safety.md's table
  files = sorted({file for _, file, _, _ in citations
                  if os.path.exists(os.path.join(ROOT, 'tests', file))})
  test_ids = collected_tests(files)
  wrong = [f'{doc}: {file or "(no file)"} {kind} {what}'
           for doc, file, kind, what in citations
           if file not in test_ids or not citation_exists(
               kind, what, test_ids[file], top_level_names(file))]
  assert not wrong, '\n'.join(wrong)


def imported_names(tree: ast.AST) -> set:
  """The names `tree`'s imports bind."""
  return {(alias.asname or alias.name).split('.')[0]
          for node in ast.walk(tree)
          if isinstance(node, (ast.Import, ast.ImportFrom))
          for alias in node.names}


def assigned_names(tree: ast.AST) -> set:
  """The names `tree` binds otherwise: assignments, loop and with targets,
  functions and classes."""
  return ({node.id for node in ast.walk(tree)
           if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
          | {node.name for node in ast.walk(tree)
             if isinstance(node, (ast.FunctionDef, ast.ClassDef))})


def test_no_doc_rebinds_a_name_it_imports():
  """A reader runs a page's python blocks one after the other: a block that
  assigns to a name an earlier one imported (`cu_seqlens, max_seqlen =
  cu_seqlens(...)`) breaks the next call."""
  rebound = []
  for doc in doc_blocks.documents():
    trees = [ast.parse(block.code) for block in doc_blocks.blocks(doc)
             if block.language == 'python']
    imported = set().union(*map(imported_names, trees))
    assigned = set().union(*map(assigned_names, trees))
    rebound += [f'{doc}: {name}' for name in sorted(imported & assigned)]
  assert not rebound, rebound
