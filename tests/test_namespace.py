"""One namespace, quiet to import, and one tokenizer per process."""

import json
import os
import subprocess
import sys

import pytest

from conftest import SAMPLE
from sftbeam.pipeline import cli
from sftbeam.transforms import tokenizer_source


def test_importing_sftbeam_prints_nothing_and_sets_no_environment(tmp_path):
  probe = ('import json, os; before = dict(os.environ); import sftbeam, '
           'sftbeam.readers; from sftbeam import tokenize_prompt_and_output; '
           'print(json.dumps({"changed": sorted(set(os.environ.items()) ^ '
           'set(before.items())), "version": sftbeam.__version__}))')
  result = subprocess.run([sys.executable, '-c', probe], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
  assert result.stderr == ''
  report = json.loads(result.stdout)
  assert report['changed'] == []
  assert report['version']


@pytest.mark.slow
def test_the_tokenizer_is_loaded_once_per_process(tmp_path, tokenizer_loads,
                                                  capsys):
  """The CLI's check and every step of a local run share one load."""
  # A tokenizer nothing else in this process loaded: the embedded one's
  # files under another path.
  copy = tmp_path / 'tokenizer'
  copy.mkdir()
  for name in os.listdir(tokenizer_source.embedded_tokenizer_dir()):
    (copy / name).write_bytes(open(os.path.join(
        tokenizer_source.embedded_tokenizer_dir(), name), 'rb').read())
  assert cli.main(['run', '--input', SAMPLE, '--output',
                   str(tmp_path / 'out'), '--tokenizer', str(copy)]) == 0
  capsys.readouterr()
  assert tokenizer_loads == [str(copy)]
