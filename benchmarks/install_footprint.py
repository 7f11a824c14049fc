"""What installing sftbeam costs, and how long a worker takes to import it.

For each variant (plain `sftbeam`, `sftbeam[tf]`, ...) the script builds the
sdist of a checkout (what Beam stages for Dataflow workers with
--setup_file), pip-installs it with its dependencies into a fresh venv
(pinned by the checkout's requirements-lock.txt, from whatever index and
cache pip is configured with) and reports:

  site-packages MiB   total size of the venv's site-packages
  distributions       installed distributions
  install s           wall time of that pip install (a worker does it too)
  worker import s     fastest of --repeat fresh interpreters importing what
                      a worker imports (Beam and the DoFn modules), and
                      whether TensorFlow or torch came along

  python benchmarks/install_footprint.py [--source CHECKOUT]
      [--variants ,tf] [--workdir /tmp/sftbeam-footprint] [--json PATH]
  python benchmarks/install_footprint.py --compare_imports PY1,PY2

For a before/after comparison run it on an older checkout too (`git
archive REV | tar -x -C /tmp/old`, then `--source /tmp/old --workdir
/tmp/old-footprint`), then time both venvs' worker imports side by side
with --compare_imports (alternating runs share the machine's load).
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The modules whose DoFns a worker unpickles (pipeline/batch.py's steps).
WORKER_IMPORTS = ('apache_beam', 'sftbeam.transforms.read',
                  'sftbeam.transforms.parse', 'sftbeam.transforms.tokenize',
                  'sftbeam.transforms.padded', 'sftbeam.transforms.packed',
                  'sftbeam.transforms.write', 'sftbeam.transforms.stats')
_IMPORT_PROBE = ('import json, sys, time\n'
                 'started = time.perf_counter()\n'
                 'for name in {names!r}: __import__(name)\n'
                 'print(json.dumps({{"seconds": time.perf_counter() - started,'
                 ' "heavy": [m for m in ("tensorflow", "torch") '
                 'if m in sys.modules]}}))')


def build_sdist(source: str, workdir: str) -> str:
  dist = os.path.join(workdir, 'dist')
  shutil.rmtree(dist, ignore_errors=True)
  subprocess.run([sys.executable, 'setup.py', '--quiet', 'sdist',
                  '--dist-dir', dist], cwd=source, check=True,
                 capture_output=True)
  (sdist,) = glob.glob(os.path.join(dist, 'sftbeam-*.tar.gz'))
  return sdist


def directory_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(folder, name))
             for folder, _, names in os.walk(path) for name in names
             if not os.path.islink(os.path.join(folder, name)))


def install(source: str, sdist: str, variant: str, workdir: str) -> dict:
  """A fresh venv with sdist[variant]; gives its measurements."""
  venv = os.path.join(workdir, f'venv-{variant or "plain"}')
  shutil.rmtree(venv, ignore_errors=True)
  subprocess.run(['python3.11', '-m', 'venv', venv], check=True)
  python = os.path.join(venv, 'bin', 'python')
  requirement = sdist + (f'[{variant}]' if variant else '')
  started = time.time()
  pip = subprocess.run([python, '-m', 'pip', 'install', '--quiet', '-c',
                        os.path.join(source, 'requirements-lock.txt'),
                        requirement], capture_output=True, text=True,
                       check=False)
  install_seconds = time.time() - started
  if pip.returncode:
    sys.exit(f'pip install {requirement} failed:\n{pip.stderr}')
  site_packages = subprocess.run(
      [python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
       '["purelib"])'], check=True, capture_output=True,
      text=True).stdout.strip()
  distributions = len(glob.glob(os.path.join(site_packages, '*.dist-info')))
  return {'variant': variant or 'plain', 'python': python,
          'site_packages_mib': directory_bytes(site_packages) / 2**20,
          'distributions': distributions, 'install_seconds': install_seconds}


def _import_once(python: str) -> dict:
  started = time.time()
  result = subprocess.run(
      [python, '-c', _IMPORT_PROBE.format(names=WORKER_IMPORTS)],
      check=True, capture_output=True, text=True, cwd='/')
  probe = json.loads(result.stdout)
  probe['process_seconds'] = time.time() - started
  return probe


def worker_imports(pythons: list, repeat: int) -> list:
  """Per interpreter, the fastest of `repeat` fresh processes importing
  WORKER_IMPORTS; interpreters alternate, so they share the machine's
  load."""
  runs = {python: [] for python in pythons}
  for _ in range(repeat):
    for python in pythons:
      runs[python].append(_import_once(python))
  results = []
  for python in pythons:
    best = min(runs[python], key=lambda run: run['process_seconds'])
    results.append({'worker_import_seconds': best['seconds'],
                    'worker_process_seconds': best['process_seconds'],
                    'worker_heavy_imports': best['heavy']})
  return results


def report(label: str, measured: dict) -> str:
  sizes = (f'{measured["site_packages_mib"]:7.0f} MiB site-packages, '
           f'{measured["distributions"]} distributions, install '
           f'{measured["install_seconds"]:.0f} s, '
           if 'site_packages_mib' in measured else '')
  return (f'{label:>12}: {sizes}worker import '
          f'{measured["worker_import_seconds"]:.2f} s (process '
          f'{measured["worker_process_seconds"]:.2f} s), heavy modules '
          f'imported: {measured["worker_heavy_imports"] or "none"}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--source', default=ROOT, help='the checkout to install')
  parser.add_argument('--variants', default=',tf',
                      help='comma-separated extras; empty: plain sftbeam')
  parser.add_argument('--workdir', default='/tmp/sftbeam-footprint')
  parser.add_argument('--repeat', type=int, default=5)
  parser.add_argument('--compare_imports', metavar='PYTHON,PYTHON',
                      help='only time worker imports in these interpreters '
                      '(e.g. the venvs of two earlier runs), alternating')
  parser.add_argument('--json', help='also write the results here')
  args = parser.parse_args()
  if args.compare_imports:
    pythons = args.compare_imports.split(',')
    results = worker_imports(pythons, args.repeat)
    for python, measured in zip(pythons, results):
      print(report(python, measured))
    return
  os.makedirs(args.workdir, exist_ok=True)
  sdist = build_sdist(args.source, args.workdir)
  results = []
  for variant in args.variants.split(','):
    measured = install(args.source, sdist, variant, args.workdir)
    measured.update(worker_imports([measured.pop('python')], args.repeat)[0])
    results.append(measured)
    print(report(measured['variant'], measured), flush=True)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as handle:
      json.dump({'source': args.source, 'results': results}, handle, indent=2)


if __name__ == '__main__':
  main()
