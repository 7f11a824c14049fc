"""sftbeam installed the way a Dataflow worker installs it, then run.

With --setup_file, Beam stages `python setup.py sdist` as workflow.tar.gz
and the worker pip-installs it. Here the same sdist is pip-installed into a
fresh virtual environment, offline (no index, no build isolation). Its
dependencies are borrowed from the project's .venv through a path entry in
a .pth file: a plain path, so that .venv's own .pth files, among them the
editable install that maps to the checkout, are not processed. The checkout
is never importable: the pipeline runs from the installation, in a
directory outside the checkout.
"""

import ast
import glob
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT, SAMPLE, offline, run_sftbeam
from output_rows import record_counts, rejected_lines, rows_by_id

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

# Repository folder -> installed package (setup.py's package_dir).
PACKAGES = {'sftbeam': 'sftbeam', 'pipeline': 'sftbeam/pipeline',
            'transforms': 'sftbeam/transforms'}
# Imported only when a caller asks for it -> the extra that installs it:
# read_tf_dataset, torch_dataset (or return_tensors), stats --plot.
OPTIONAL_IMPORTS = {'tensorflow': 'tf', 'torch': 'torch', 'matplotlib': 'plot'}


def _run(command, cwd, timeout=600):
  env = {name: value for name, value in os.environ.items()
         if name != 'PYTHONPATH'}
  result = subprocess.run(offline(command), cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          check=False)
  assert result.returncode == 0, f'{command}:\n{result.stdout}\n{result.stderr}'
  return result


@pytest.fixture(scope='module')
def venv(tmp_path_factory):
  """A fresh venv holding sftbeam pip-installed from its sdist."""
  work = tmp_path_factory.mktemp('install')
  _run([sys.executable, 'setup.py', '--quiet', 'sdist', '--dist-dir',
        str(work / 'dist')], cwd=ROOT)
  (sdist,) = glob.glob(str(work / 'dist' / 'sftbeam-*.tar.gz'))
  _run([sys.executable, '-m', 'venv', '--without-pip', str(work / 'venv')],
       cwd=work)
  python = str(work / 'venv' / 'bin' / 'python')
  site_packages = _run([python, '-c', 'import sysconfig; '
                        'print(sysconfig.get_paths()["purelib"])'],
                       cwd=work).stdout.strip()
  with open(os.path.join(site_packages, 'borrowed-dependencies.pth'), 'w',
            encoding='utf-8') as handle:
    handle.write(sysconfig.get_paths()['purelib'] + '\n')
  # --ignore-installed: never touch the .venv's sftbeam seen through the .pth.
  _run([python, '-m', 'pip', 'install', '--quiet', '--no-deps', '--no-index',
        '--no-build-isolation', '--ignore-installed', sdist], cwd=work)
  return {'work': work, 'python': python, 'site_packages': site_packages}


def test_imports_come_from_the_installation(venv):
  probe = ('import json, sys, sftbeam, sftbeam.pipeline.cli, '
           'sftbeam.transforms.spec_arithmetic; print(json.dumps({"files": ['
           'sftbeam.__file__, sftbeam.pipeline.cli.__file__, '
           'sftbeam.transforms.spec_arithmetic.__file__], "path": sys.path}))')
  found = json.loads(_run([venv['python'], '-c', probe],
                          cwd=venv['work']).stdout)
  for path in found['files']:
    assert path.startswith(venv['site_packages']), path
  borrowed = sysconfig.get_paths()['purelib']
  assert not [entry for entry in found['path'] if entry != borrowed and (
      entry == ROOT or entry.startswith(ROOT + os.sep))]


def test_every_module_is_installed(venv):
  for folder, package in PACKAGES.items():
    checkout = {os.path.basename(path)
                for path in glob.glob(os.path.join(ROOT, folder, '*.py'))}
    installed = set(os.listdir(os.path.join(venv['site_packages'], package)))
    assert checkout <= installed, checkout - installed


def test_one_top_level_package(venv):
  """Nothing generic such as `pipeline` lands in site-packages."""
  (record,) = glob.glob(os.path.join(venv['site_packages'],
                                     'sftbeam-*.dist-info', 'RECORD'))
  with open(record, encoding='utf-8') as handle:
    tops = {line.split('/', 1)[0] for line in handle if '/' in line}
  # '..' is the console script, installed into the venv's bin/.
  assert {top for top in tops if not top.endswith('.dist-info')} == {
      'sftbeam', '..'}
  for name in ('pipeline', 'transforms'):
    probe = f'import importlib.util; print(importlib.util.find_spec({name!r}))'
    assert _run([venv['python'], '-c', probe],
                cwd=venv['work']).stdout.strip() == 'None'


def _imported_top_level_names(package_dir):
  names = set()
  for path in glob.glob(os.path.join(package_dir, '*.py')):
    with open(path, encoding='utf-8') as handle:
      tree = ast.parse(handle.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names.update(alias.name.split('.')[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names.add(node.module.split('.')[0])
  return names


def _normalized(name):
  return re.sub(r'[-_.]+', '-', name).lower()


def _requirement(requires_dist: str) -> str:
  """The normalized distribution name of a METADATA Requires-Dist line."""
  return _normalized(re.split(r'[ =<>\[;]',
                              requires_dist[len('Requires-Dist: '):])[0])


def test_install_requires_covers_every_import(venv):
  (metadata,) = glob.glob(os.path.join(venv['site_packages'],
                                       'sftbeam-*.dist-info', 'METADATA'))
  with open(metadata, encoding='utf-8') as handle:
    requires = [line for line in handle if line.startswith('Requires-Dist:')]
  required = {_requirement(line) for line in requires
              if 'extra ==' not in line}
  distributions = importlib.metadata.packages_distributions()
  imported = set()
  for package in PACKAGES.values():
    imported |= _imported_top_level_names(
        os.path.join(venv['site_packages'], package))
  third_party = imported - set(sys.stdlib_module_names) - {
      'sftbeam'} - set(OPTIONAL_IMPORTS)
  assert {'apache_beam', 'numpy', 'transformers', 'yaml'} <= third_party
  for module, extra in OPTIONAL_IMPORTS.items():
    owners = {_normalized(name) for name in distributions.get(module, ())} or {
        _normalized(module)}  # not installed here: named as it imports
    assert any(_requirement(line) in owners and
               f'extra == "{extra}"' in line for line in requires), module
  for module in sorted(third_party):
    owners = {_normalized(name) for name in distributions.get(module, ())}
    assert owners & required, f'{module} (from {owners}) not in install_requires'


def test_installed_pipeline_runs_outside_the_checkout(venv, tmp_path):
  data = venv['work'] / 'data'
  data.mkdir()
  shutil.copy(SAMPLE, data / 'sample.jsonl')
  _run([os.path.join(os.path.dirname(venv['python']), 'sftbeam'), 'run',
        '--input', 'data/sample.jsonl', '--output', 'installed',
        '--runner', 'FnApiRunner'], cwd=venv['work'])
  checkout_output = str(tmp_path / 'checkout')
  run_sftbeam('run', '--input', SAMPLE, '--output', checkout_output,
              network=False, check=True)
  installed_output = str(venv['work'] / 'installed')
  rows = rows_by_id(installed_output)
  assert len(rows) > 200
  assert rows == rows_by_id(checkout_output)
  assert rejected_lines(installed_output) == rejected_lines(checkout_output)
  assert record_counts(installed_output) == record_counts(checkout_output)

