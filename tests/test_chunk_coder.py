"""transforms/chunk_coder.py: chunks pickled, sized without encoding."""

import pickle

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest

from sftbeam.pipeline.options import defaults, make_config
from sftbeam.transforms import chunk_coder
from sftbeam.transforms.lines_to_batches import LinesToBatches
from sftbeam.transforms.records import LineChunk, RecordChunk
from token_chunks import pairs_chunk


def _token_chunk(records=300, tokens=150):
  rng = np.random.default_rng(0)
  return pairs_chunk(
      [rng.integers(0, 150_000, tokens // 3) for _ in range(records)],
      [rng.integers(0, 150_000, tokens - tokens // 3) for _ in range(records)],
      [f'gsm8k-{index:07d}' for index in range(records)])


def _record_chunk(records=300):
  prompts = [f'Question {index}: ' + 'how many apples? ' * 20
             for index in range(records)]
  outputs = [f'Answer {index}: ' + 'six apples. ' * 40
             for index in range(records)]
  lines = [f'{{"prompt": "{prompt}", "output": "{output}"}}'.encode()
           for prompt, output in zip(prompts, outputs)]
  return RecordChunk('in.jsonl', list(range(1, records + 1)),
                     [f'id-{index}' for index in range(records)], prompts,
                     outputs, [None] * records, lines)


def _parquet_record_chunk(records=300):
  chunk = _record_chunk(records)
  rows = pa.RecordBatch.from_pydict({'prompt': chunk.prompts,
                                     'output': chunk.outputs})
  return chunk._replace(inputs=list(range(records)), rows=rows)


@pytest.mark.parametrize('make', [_token_chunk, _record_chunk,
                                  _parquet_record_chunk])
def test_a_chunk_round_trips_and_is_sized_near_its_pickle(make, monkeypatch):
  chunk = make()
  coder = chunk_coder.ChunkCoder()
  pickled = len(coder.encode(chunk))
  assert pickle.dumps(coder.decode(coder.encode(chunk))) == pickle.dumps(chunk)

  def no_pickling(*args, **kwargs):
    raise AssertionError('estimate_size pickled the chunk')

  monkeypatch.setattr(chunk_coder.pickle, 'dumps', no_pickling)
  estimate = coder.estimate_size(chunk)
  assert pickled / 2 < estimate < pickled * 2, (estimate, pickled)


def test_a_parquet_chunks_arrow_rows_count():
  chunk = _parquet_record_chunk()
  without_rows = chunk._replace(rows=None)
  assert (chunk_coder.estimated_size(chunk) >
          chunk_coder.estimated_size(without_rows) + chunk.rows.nbytes // 2)


def test_a_long_list_is_sized_from_its_first_items():
  assert chunk_coder.estimated_size(['ab'] * 1000) == 2000
  assert chunk_coder.estimated_size([b'x' * 10] * 5 + [b'y']) == 51


def _coders_by_step(config, batching, max_buffering_seconds):
  """{step label: the coder of its main output} of LinesToBatches' graph."""
  pipeline = beam.Pipeline()
  chunks = pipeline | beam.Create([LineChunk('in.jsonl', [(1, b'{}', 2)])])
  _ = chunks | LinesToBatches(config, batching, max_buffering_seconds)
  coders = {}

  class Visitor(beam.pipeline.PipelineVisitor):

    def visit_transform(self, node):
      if None in node.outputs:
        coders[node.full_label.rsplit('/', 1)[-1]] = (
            beam.coders.registry.get_coder(node.outputs[None].element_type))

  pipeline.visit(Visitor())
  return coders


def _holds_chunk_coder(coder) -> bool:
  return isinstance(coder, chunk_coder.ChunkCoder) or any(
      map(_holds_chunk_coder, coder._get_component_coders()))  # pylint: disable=protected-access


@pytest.mark.parametrize('layout,batching,buffering,steps', [
    ('padded', 'bundle', None, ['BatchWithinBundle']),
    ('padded', 'global', None, ['ByBucket', 'BatchPerBucket']),
    ('packed', 'bundle', None, ['PackWithinBundle']),
    ('packed', 'global', 5.0, ['PackPerFlush']),  # streaming
])
def test_every_step_that_gives_chunks_gives_them_with_the_chunk_coder(
    layout, batching, buffering, steps):
  config = make_config(dict(defaults(), input=['in.jsonl'], output='out',
                            layout=layout))
  coders = _coders_by_step(config, batching, buffering)
  for step in ['ParDo(ParseChunks)', 'ParDo(TokenizeRecords)'] + steps:
    assert _holds_chunk_coder(coders[step]), (step, coders[step])
