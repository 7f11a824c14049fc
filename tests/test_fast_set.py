"""tests/fast_set.py refuses what the fast set must not do: each case runs
pytest with the guard on a small test module of its own, in a process of
its own (a stand-in module plays TensorFlow, so no test here loads it)."""

import os
import subprocess
import sys
import textwrap

TESTS = os.path.dirname(os.path.abspath(__file__))
FAKE_TENSORFLOW = ("sys.modules['tensorflow'] = "
                   "types.ModuleType('tensorflow')")


def run_guarded(tmp_path, source: str) -> subprocess.CompletedProcess:
  """pytest with the fast-set guard on `source` as test_case.py."""
  (tmp_path / 'pytest.ini').write_text(
      '[pytest]\nmarkers =\n    slow: slow\n', encoding='utf-8')
  (tmp_path / 'test_case.py').write_text(
      'import sys\nimport types\n\nimport pytest\n\n' +
      textwrap.dedent(source), encoding='utf-8')
  return subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-p', 'fast_set',
       '-p', 'no:cacheprovider', 'test_case.py'],
      cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, PYTHONPATH=TESTS))


def test_a_fast_test_that_runs_a_pipeline_fails(tmp_path):
  result = run_guarded(tmp_path, """
      import apache_beam as beam

      def test_runs_a_pipeline():
        with beam.Pipeline(runner='FnApiRunner') as root:
          _ = root | beam.Create([1])
      """)
  assert result.returncode == 1, result.stdout
  assert ('test_case.py::test_runs_a_pipeline runs a Beam pipeline: mark it '
          '@pytest.mark.slow') in result.stdout


def test_a_fast_test_that_imports_tensorflow_fails(tmp_path):
  result = run_guarded(tmp_path, f"""
      def test_imports_tensorflow():
        {FAKE_TENSORFLOW}
      """)
  assert result.returncode == 1, result.stdout
  assert ('test_case.py::test_imports_tensorflow imports TensorFlow: mark it '
          '@pytest.mark.slow') in result.stdout


def test_a_module_that_imports_tensorflow_fails_to_collect(tmp_path):
  result = run_guarded(tmp_path, f"""
      {FAKE_TENSORFLOW}

      @pytest.mark.slow
      def test_slow():
        pass
      """)
  assert result.returncode == 2, result.stdout
  assert 'test_case.py imports TensorFlow when collected' in result.stdout


def test_a_slow_test_may_do_both(tmp_path):
  result = run_guarded(tmp_path, f"""
      import apache_beam as beam

      @pytest.mark.slow
      def test_slow():
        {FAKE_TENSORFLOW}
        assert beam.Pipeline.run.__qualname__ == 'Pipeline.run'

      def test_fast():
        pass
      """)
  assert result.returncode == 0, result.stdout
  assert '2 passed' in result.stdout
