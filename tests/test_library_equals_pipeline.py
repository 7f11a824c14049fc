"""The library function and the pipeline give the same row for a record.

For every option they share (special tokens in text, add_special_tokens,
append_eos, pad id), `tokenize_prompt_and_output` on a batch's records
equals what the pipeline wrote for that batch with `pad_to: longest`; in
the default mode both equal a plain reference of the spec, which calls the
HuggingFace tokenizer as the spec does (`tokenizer(prompt)`). The input
mixes ordinary records with records holding special-token strings.
"""

import json

import numpy as np
import pytest

from conftest import run_sftbeam, shared_data
from sftbeam import tokenize_prompt_and_output
from sftbeam.pipeline.readers import iter_numpy_batches, load_dataset_info

# Runs the pipeline or large references: `pytest -m "not slow"` skips it.
pytestmark = pytest.mark.slow

SPECIAL_RECORDS = [
    ('im-end-in-output', 'Say goodbye.', 'Goodbye!<|im_end|>'),
    ('rendered-chat', '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n',
     'hello<|im_end|>'),
    ('endoftext', 'Complete: <|endoftext|> is', 'the end-of-text token.'),
    ('object-ref', 'Where is <|object_ref_start|>the cat<|object_ref_end|>?',
     'On the mat.'),
    ('inside-words', 'a<|im_end|>b', 'c<|endoftext|>d'),
]

OPTION_SETS = [
    ('special', {}),
    ('text', {}),
    ('special', {'add_special_tokens': False, 'append_eos': True,
                 'pad_id': 7}),
    ('text', {'add_special_tokens': True, 'append_eos': True, 'pad_id': 0}),
]


@pytest.fixture(scope='module')
def mixed_input(tmp_path_factory):
  """200 GSM8K records and the special-token records, as JSONL."""
  records = {}
  with open(shared_data('gsm8k_test.jsonl'), encoding='utf-8') as handle:
    for number, line in zip(range(200), handle):
      record = json.loads(line)
      records[f'gsm8k-{number}'] = (record['prompt'], record['output'])
  records.update({example_id: (prompt, output)
                  for example_id, prompt, output in SPECIAL_RECORDS})
  path = tmp_path_factory.mktemp('mixed') / 'mixed.jsonl'
  with open(path, 'w', encoding='utf-8') as handle:
    for example_id, (prompt, output) in records.items():
      handle.write(json.dumps({'id': example_id, 'prompt': prompt,
                               'output': output}) + '\n')
  return str(path), records


def _flags(mode, options):
  flags = ['--special_tokens_in_text', mode]
  for name, value in options.items():
    flags += [f'--{name}', str(value).lower()]
  return flags


def reference_row(tokenizer, prompt, output):
  """The spec, plainly: tokenizer(prompt) + tokenizer(output), shifted."""
  prompt_ids = tokenizer(prompt)['input_ids']
  output_ids = tokenizer(output, add_special_tokens=False)['input_ids']
  sequence = prompt_ids + output_ids
  mask = [len(prompt_ids) - 1 <= j < len(sequence) - 1
          for j in range(len(sequence) - 1)]
  return sequence[:-1], sequence[1:], mask


@pytest.mark.parametrize('mode, options', OPTION_SETS)
def test_library_rows_equal_pipeline_rows(mixed_input, tmp_path, qwen, mode,
                                          options):
  path, records = mixed_input
  result = run_sftbeam('run', '--config', 'configs/local.yaml', '--input',
                       path, '--output', str(tmp_path), '--pad_to', 'longest',
                       *_flags(mode, options), network=False, check=True)
  counts = load_dataset_info(str(tmp_path))['counts']
  assert counts['records_written'] == len(records)
  assert counts['records_with_special_token_text'] == len(SPECIAL_RECORDS)
  expected_word = ('mapped to special ids' if mode == 'special'
                   else 'kept as text')
  assert f'{len(SPECIAL_RECORDS)} ({expected_word})' in result.stdout
  seen = set()
  for batch in iter_numpy_batches(str(tmp_path)):
    prompts, outputs = zip(*(records[i] for i in batch['example_ids']))
    library = tokenize_prompt_and_output(
        list(prompts), list(outputs), qwen, special_tokens_in_text=mode,
        **options)
    for name in ('input_ids', 'labels', 'response_mask'):
      np.testing.assert_array_equal(batch[name], library[name], name)
    if mode == 'special' and not options:
      for row, example_id in enumerate(batch['example_ids']):
        length = batch['prompt_lengths'][row] + batch['output_lengths'][row] - 1
        expected = reference_row(qwen, *records[example_id])
        for name, values in zip(('input_ids', 'labels', 'response_mask'),
                                expected):
          assert batch[name][row][:length].tolist() == values, (example_id,
                                                               name)
    seen.update(batch['example_ids'])
  assert seen == set(records)


def test_special_mode_maps_to_special_ids_and_text_mode_does_not(qwen):
  prompt, output = SPECIAL_RECORDS[1][1:]
  im_end = qwen.convert_tokens_to_ids('<|im_end|>')
  special = tokenize_prompt_and_output([prompt], [output], qwen)
  text = tokenize_prompt_and_output([prompt], [output], qwen,
                                    special_tokens_in_text='text')
  assert im_end in special['labels'][0]
  assert im_end not in text['labels'][0]
  assert text['labels'].shape[1] > special['labels'].shape[1]


@pytest.mark.parametrize('return_tensors', ['np', 'pt', 'tf'])
def test_arrays_are_independent(qwen, return_tensors):
  """labels[~response_mask] = -100, the usual next step, leaves input_ids
  as they were."""
  batch = tokenize_prompt_and_output(['Hello, world!', '2+2='],
                                     ['Hi there!', '4'], qwen,
                                     return_tensors=return_tensors)
  arrays = {name: np.array(value) for name, value in batch.items()}
  before = arrays['input_ids'].copy()
  if return_tensors == 'tf':
    pytest.importorskip('tensorflow')
    labels = np.asarray(batch['labels'].numpy())  # tf tensors are immutable
    assert not np.shares_memory(labels, np.asarray(batch['input_ids']))
    return
  labels = batch['labels']
  labels[~batch['response_mask']] = -100
  assert np.array_equal(np.array(batch['input_ids']), before)
  assert (np.array(batch['labels']) == -100).any()

