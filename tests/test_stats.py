"""transforms/stats.py: summing stats and the summary's counts."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from conftest import beam_test_pipeline
from sftbeam.transforms.stats import SumStatsFn, padded_batch_stats, summarize


@pytest.mark.slow
def test_sum_stats_directly_and_in_pipeline():
  fn = SumStatsFn()
  accumulator = fn.add_input(fn.create_accumulator(), {'lines': 2})
  accumulator = fn.merge_accumulators([accumulator, fn.add_input(
      fn.create_accumulator(), {'lines': 3, 'rejected/too_long': 1})])
  assert fn.extract_output(accumulator) == {'lines': 5, 'rejected/too_long': 1}
  with beam_test_pipeline() as root:
    total = (root | beam.Create([{'a': 1}, {'a': 2, 'b': 1}])
             | beam.CombineGlobally(SumStatsFn()))
    assert_that(total, equal_to([{'a': 3, 'b': 1}]))


def test_summarize_reconciles():
  stats = {'lines': 5, 'blank_lines': 1, 'rejected/invalid_json': 1,
           **padded_batch_stats(8, {'input_ids': np.zeros((3, 8)),
                             'response_mask': np.zeros((3, 8), bool),
                             'prompt_lengths': np.array([1, 2, 3]),
                             'output_lengths': np.array([1, 1, 1])})}
  counts = summarize(stats)
  assert counts['records_in'] == 4
  assert counts['reconciled']
  assert counts['buckets'] == {'8': {'records': 3, 'batches': 1}}
  assert counts['padding_efficiency'] == pytest.approx(6 / 24)
  assert not summarize(dict(stats, lines=6))['reconciled']
