"""transforms/lines_to_batches.py: the bundled configs resolve, and every
option reaches the step that uses it."""

import os

import pytest

from conftest import ROOT
from sftbeam.pipeline.config import load_yaml
from sftbeam.pipeline.options import defaults, make_config
from sftbeam.transforms.lines_to_batches import (batch_shape, pack_shape,
                                                 tokenize_settings)
from sftbeam.transforms.packed import PackShape
from sftbeam.transforms.tokenize import TokenizeSettings


@pytest.mark.parametrize('config_file', ['local.yaml', 'dataflow.yaml'])
def test_the_bundled_configs_resolve(config_file):
  values, _ = load_yaml(os.path.join(ROOT, 'configs', config_file))
  config = make_config(dict(defaults(), **values, input=['in.jsonl'],
                            output='out'))
  assert batch_shape(config).rows(512) == 32  # the default batch size


# A value unlike its default for every option the steps take.
NOT_DEFAULT = {
    'tokenizer': '/tokenizers/other', 'max_seq_len': 1000,
    'truncation': 'prompt_left', 'add_special_tokens': True,
    'append_eos': True, 'special_tokens_in_text': 'text',
    'tokenizer_backend': 'hf', 'train_on': 'last_assistant',
    'chat_rows': 'per_turn', 'chat_template_kwargs': {'enable_thinking': False},
    'boundaries': [100, 500, 1000], 'batch_tokens': 3000,
    'pack_length': 1024, 'pack_window': 77,
}


def test_every_option_reaches_the_steps(tmp_path):
  template = tmp_path / 'template.jinja'
  template.write_text('{{ messages }}', encoding='utf-8')
  config = make_config(dict(defaults(), **NOT_DEFAULT, input=['in.jsonl'],
                            output='out', chat_template=str(template)))
  assert all(getattr(config, name) != value
             for name, value in defaults().items() if name in NOT_DEFAULT)
  assert tokenize_settings(config) == TokenizeSettings(
      tokenizer='/tokenizers/other', max_seq_len=1000,
      truncation='prompt_left', add_special_tokens=True, append_eos=True,
      special_tokens_in_text='text', backend='hf', train_on='last_assistant',
      chat_rows='per_turn', chat_template='{{ messages }}',
      chat_template_kwargs={'enable_thinking': False})
  shape = batch_shape(config)
  assert (shape.boundaries.tolist(), shape.batch_size, shape.batch_tokens) == (
      [100, 500, 1000], None, 3000)
  packed = make_config(dict(defaults(), **NOT_DEFAULT, input=['in.jsonl'],
                            output='out', layout='packed'))
  assert pack_shape(packed) == PackShape(1024, 77, 2)
