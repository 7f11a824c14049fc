"""The fast set (`pytest -m "not slow"`) starts no pipeline and imports no
TensorFlow: a test that needs either is marked slow.

A pytest plugin (tests/conftest.py loads it). A test module that imports
TensorFlow when collected fails to collect: the fast set collects every
module, so TensorFlow is imported inside the slow tests that use it. A test
not marked slow fails when it runs a Beam pipeline or imports TensorFlow.
tests/test_fast_set.py shows each refusal.
"""

import sys

import apache_beam as beam
import pytest

TENSORFLOW = 'tensorflow'


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
  """Fails the collection of a test module whose import loads TensorFlow."""
  loaded_before = TENSORFLOW in sys.modules
  outcome = yield
  if (isinstance(collector, pytest.Module) and not loaded_before and
      TENSORFLOW in sys.modules):
    report = outcome.get_result()
    report.outcome = 'failed'
    report.longrepr = (
        f'{collector.path.name} imports TensorFlow when collected, so the '
        'fast set would load it: import it inside the slow tests that use it')


@pytest.fixture(autouse=True)
def fast_set_guard(request, monkeypatch):
  """A test not marked slow runs no pipeline and imports no TensorFlow."""
  if request.node.get_closest_marker('slow'):
    yield
    return
  name = request.node.nodeid

  def refuse_to_run(pipeline, *args, **kwargs):
    pytest.fail(f'{name} runs a Beam pipeline: mark it @pytest.mark.slow',
                pytrace=False)

  monkeypatch.setattr(beam.Pipeline, 'run', refuse_to_run)
  loaded_before = TENSORFLOW in sys.modules
  yield
  if not loaded_before and TENSORFLOW in sys.modules:
    pytest.fail(f'{name} imports TensorFlow: mark it @pytest.mark.slow',
                pytrace=False)
