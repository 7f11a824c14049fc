"""The spec's function: worked examples, the public API, its errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fake_tokenizer import WordIdTokenizer
from sftbeam import tokenize_prompt_and_output
from sftbeam.transforms.spec_arithmetic import pad_shift_mask
from strategies import EXAMPLES, token_ids
from token_chunks import pairs_chunk

F, T = False, True


def test_spec_example_tables_literally():
  """docs/spec.md's table: [10,20,30,40] + [50,60,70,80]."""
  result = tokenize_prompt_and_output(['w10 w20 w30 w40'],
                                      ['w50 w60 w70 w80'], WordIdTokenizer())
  assert result['input_ids'].tolist() == [[10, 20, 30, 40, 50, 60, 70]]
  assert result['labels'].tolist() == [[20, 30, 40, 50, 60, 70, 80]]
  assert result['response_mask'].tolist() == [[F, F, F, T, T, T, T]]


def test_spec_hello_world_walkthrough():
  """docs/spec.md's walkthrough: [100, 200] + [300, 400]."""
  result = tokenize_prompt_and_output(['w100 w200'], ['w300 w400'],
                                      WordIdTokenizer())
  assert result['input_ids'].tolist() == [[100, 200, 300]]
  assert result['labels'].tolist() == [[200, 300, 400]]
  assert result['response_mask'].tolist() == [[F, T, T]]


def test_spec_batch_with_padding_example():
  """4+3, 2+5 and 3+2 tokens: max length 7, the third row padded by 2."""
  prompts = ['w1 w2 w3 w4', 'w11 w12', 'w21 w22 w23']
  outputs = ['w5 w6 w7', 'w13 w14 w15 w16 w17', 'w24 w25']
  result = tokenize_prompt_and_output(prompts, outputs,
                                      WordIdTokenizer(pad_token_id=99))
  assert result['input_ids'].shape == (3, 6)
  assert result['input_ids'][2].tolist() == [21, 22, 23, 24, 25, 99]
  assert result['labels'][2].tolist() == [22, 23, 24, 25, 99, 99]
  assert result['response_mask'].tolist() == [
      [F, F, F, T, T, T],
      [F, T, T, T, T, T],
      [F, F, T, T, F, F],
  ]


def test_qwen_three_strings(qwen):
  strings = ['Hello, world!', 'This is a test.', 'This is another test.']
  result = tokenize_prompt_and_output(strings, strings, qwen)
  assert result['input_ids'].shape == (3, 9)
  assert result['labels'].shape == (3, 9)
  assert result['response_mask'].shape == (3, 9)
  assert result['input_ids'].dtype == np.int64
  assert result['labels'].dtype == np.int64
  assert result['response_mask'].dtype == np.bool_
  # Row 0 is 4 + 4 tokens: one pad at the end of input_ids, two in labels.
  assert result['input_ids'][0, -1] == 151643
  assert result['labels'][0, -2:].tolist() == [151643, 151643]
  assert ''.join('T' if v else 'F' for v in result['response_mask'][0]) == (
      'FFFTTTTFF')


def test_qwen_tokenizes_parts_not_the_joined_string(qwen):
  """'store.' + 'No' gives ['.', 'No'] apart but ['.No'] joined."""
  result = tokenize_prompt_and_output(['I went to the store.'], ['No'], qwen)
  prompt_ids = qwen('I went to the store.')['input_ids']
  output_ids = qwen('No', add_special_tokens=False)['input_ids']
  assert result['labels'][0].tolist() == prompt_ids[1:] + output_ids
  joined = qwen('I went to the store.No')['input_ids']
  assert joined != prompt_ids + output_ids


def test_append_eos_and_pad_id(qwen):
  result = tokenize_prompt_and_output(['Hi'], ['there'], qwen, append_eos=True,
                                      pad_id=7)
  assert result['labels'][0, -1] == qwen.eos_token_id
  assert result['response_mask'][0].sum() == 2  # 'there' + eos
  padded = tokenize_prompt_and_output(['Hi', 'Hi'], ['there', 'there you go'],
                                      qwen, pad_id=7)
  assert padded['input_ids'][0, -1] == 7


def test_add_special_tokens_adds_bos_to_prompts_only():
  tokenizer = WordIdTokenizer(bos_token_id=1)
  result = tokenize_prompt_and_output(['w5'], ['w6 w7'], tokenizer)
  assert result['input_ids'].tolist() == [[1, 5, 6]]
  assert result['response_mask'].tolist() == [[F, T, T]]
  without = tokenize_prompt_and_output(['w5'], ['w6 w7'], tokenizer,
                                       add_special_tokens=False)
  assert without['input_ids'].tolist() == [[5, 6]]


@pytest.mark.parametrize('prompts, outputs, message', [
    (['a'], ['b', 'c'], 'prompt_strs has 1 items but output_strs has 2'),
    ([], [], 'empty'),
    (['w1', 3], ['w2', 'w3'], r'prompt_strs\[1\] is a int'),
    (['w1'], [None], r'output_strs\[0\] is a NoneType'),
    (['w1', ''], ['w2', 'w3'], r'prompt_strs\[1\] has no tokens'),
])
def test_bad_inputs_name_the_problem(prompts, outputs, message):
  with pytest.raises(ValueError, match=message):
    tokenize_prompt_and_output(prompts, outputs, WordIdTokenizer())


def test_tokenizer_without_pad_or_eos():
  with pytest.raises(ValueError, match='neither a pad_token_id nor an eos'):
    tokenize_prompt_and_output(['w1'], ['w2'],
                               WordIdTokenizer(pad_token_id=None))


@pytest.mark.slow
def test_return_tensors_tf_and_bad_value():
  import tensorflow as tf
  result = tokenize_prompt_and_output(['w1 w2'], ['w3'], WordIdTokenizer(),
                                      return_tensors='tf')
  assert isinstance(result['input_ids'], tf.Tensor)
  assert result['input_ids'].dtype == tf.int64
  assert result['response_mask'].dtype == tf.bool
  with pytest.raises(ValueError, match='return_tensors'):
    tokenize_prompt_and_output(['w1'], ['w2'], WordIdTokenizer(),
                               return_tensors='jax')


def test_return_tensors_pt():
  try:
    import torch
  except ImportError:
    with pytest.raises(ImportError, match='needs PyTorch'):
      tokenize_prompt_and_output(['w1'], ['w2'], WordIdTokenizer(),
                                 return_tensors='pt')
    return
  result = tokenize_prompt_and_output(['w1 w2'], ['w3'], WordIdTokenizer(),
                                      return_tensors='pt')
  assert result['input_ids'].dtype == torch.int64
  assert result['response_mask'].dtype == torch.bool


def test_pad_shift_mask_to_a_wider_bucket():
  arrays = pad_shift_mask(pairs_chunk([[1, 2]], [[3]]), pad_id=0, width=5)
  assert arrays['input_ids'].tolist() == [[1, 2, 3, 0, 0]]
  assert arrays['labels'].tolist() == [[2, 3, 0, 0, 0]]
  assert arrays['response_mask'].tolist() == [[F, T, F, F, F]]
  with pytest.raises(ValueError, match='shorter than the longest row'):
    pad_shift_mask(pairs_chunk([[1, 2, 3]], [[4]]), pad_id=0, width=2)


rows = st.lists(st.tuples(token_ids.filter(bool), token_ids),
                min_size=1, max_size=12)


@EXAMPLES
@given(rows=rows, pad_id=st.integers(0, 151_000),
       extra_width=st.none() | st.integers(0, 20))
def test_pad_shift_mask_properties(rows, pad_id, extra_width):
  prompts = [prompt for prompt, _ in rows]
  outputs = [output for _, output in rows]
  longest = max(len(p) + len(o) for p, o in rows) - 1
  width = None if extra_width is None else longest + extra_width
  arrays = pad_shift_mask(pairs_chunk(prompts, outputs), pad_id, width=width)

  expected_width = longest if width is None else width
  for name in ('input_ids', 'labels', 'response_mask'):
    assert arrays[name].shape == (len(rows), expected_width), name
  assert arrays['input_ids'].dtype == np.int64
  assert arrays['labels'].dtype == np.int64
  assert arrays['response_mask'].dtype == np.bool_
  assert arrays['prompt_lengths'].tolist() == [len(p) for p in prompts]
  assert arrays['output_lengths'].tolist() == [len(o) for o in outputs]

  for row, (prompt, output) in enumerate(rows):
    sequence = prompt + output
    real = len(sequence) - 1  # the row's real length: its label positions
    input_ids = arrays['input_ids'][row]
    labels = arrays['labels'][row]
    mask = arrays['response_mask'][row]
    # seq[:-1] and seq[1:]; labels are input_ids shifted by one.
    assert input_ids[:real].tolist() == sequence[:-1]
    assert labels[:real].tolist() == sequence[1:]
    shifted = min(real, expected_width - 1)
    assert labels[:shifted].tolist() == input_ids[1:shifted + 1].tolist()
    # The mask is True exactly where the label is an output token.
    label_is_output = [position + 1 >= len(prompt) for position in range(real)]
    assert mask[:real].tolist() == label_is_output
    assert int(mask.sum()) == len(output)
    # Padding, never masked: labels from the real length on; input_ids one
    # later, as input_ids[real] is the last real token (the spec's padded
    # row [21, 22, 23, 24, 25, pad]).
    assert (labels[real:] == pad_id).all()
    assert (input_ids[real + 1:] == pad_id).all()
    if real < expected_width:
      assert input_ids[real] == sequence[-1]
    assert not mask[real:].any()


@EXAMPLES
@given(rows=rows, shortfall=st.integers(1, 5))
def test_pad_shift_mask_refuses_a_width_below_the_longest_row(rows, shortfall):
  longest = max(len(p) + len(o) for p, o in rows) - 1
  with pytest.raises(ValueError, match='shorter than the longest row'):
    pad_shift_mask(pairs_chunk([p for p, _ in rows], [o for _, o in rows]),
                   0, width=longest - shortfall)
