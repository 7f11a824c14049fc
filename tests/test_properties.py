"""Property-based tests (hypothesis) of the pure functions under the pipeline.

  pad_shift_mask   the spec's arithmetic, over random rows and both pad modes
  fit_lengths      the three truncation modes
  iter_lines       line splitting and the max_line_bytes cap
"""

import io
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sftbeam.transforms.read import iter_lines
from sftbeam.transforms.records import MAX_RAW_CHARS
from sftbeam.transforms.spec_arithmetic import pad_shift_mask
from sftbeam.transforms.spec_arithmetic import TRUNCATION_MODES
from sftbeam.transforms.tokenize import fit_lengths
from token_chunks import pairs_chunk

EXAMPLES = settings(max_examples=200, deadline=None)

token_ids = st.lists(st.integers(0, 151_000), max_size=40)
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


@EXAMPLES
@given(prompt=token_ids.filter(bool), output=token_ids.filter(bool),
       max_seq_len=st.integers(1, 60), mode=st.sampled_from(TRUNCATION_MODES))
def test_fit_lengths_properties(prompt, output, max_seq_len, mode):
  fits = len(prompt) + len(output) - 1 <= max_seq_len
  fit = fit_lengths(np.array([len(prompt)]), np.array([len(output)]),
                    max_seq_len, mode)
  if fit.does_not_fit[0]:
    assert not fits
    expected = {'none': 1,  # too_long
                'output_right': 2,  # prompt_too_long
                'prompt_left': 3}[mode]  # output_too_long
    assert fit.does_not_fit[0] == expected
    # Only a record that truncation cannot save is rejected.
    if mode == 'output_right':
      assert len(prompt) > max_seq_len
    if mode == 'prompt_left':
      assert len(output) > max_seq_len
    return
  new_prompt = prompt[fit.prompt_start[0]:]
  new_output = output[:fit.output_end[0]]
  assert fit.truncated[0] == (not fits)
  if fits:
    assert (list(new_prompt), list(new_output)) == (prompt, output)
    return
  assert mode != 'none'
  # Truncation keeps as much as fits: L is exactly max_seq_len.
  assert len(new_prompt) + len(new_output) - 1 == max_seq_len
  assert new_prompt and new_output
  if mode == 'output_right':
    assert list(new_prompt) == prompt
    assert list(new_output) == output[:len(new_output)]
  else:
    assert list(new_output) == output
    assert list(new_prompt) == prompt[len(prompt) - len(new_prompt):]


line_contents = st.lists(
    st.tuples(st.binary(max_size=30).map(
        lambda data: data.replace(b'\n', b'').replace(b'\r', b'')),
              st.booleans()),  # CRLF?
    max_size=10)


@EXAMPLES
@given(lines=line_contents, final_newline=st.booleans(),
       max_line_bytes=st.integers(1, 25), block_bytes=st.integers(1, 16))
def test_iter_lines_properties(lines, final_newline, max_line_bytes,
                               block_bytes):
  data = b''.join(content + (b'\r\n' if crlf else b'\n')
                  for content, crlf in lines)
  if lines and not final_newline:
    data = data[:-2 if lines[-1][1] else -1]
  with mock.patch('sftbeam.transforms.read._READ_BLOCK_BYTES', block_bytes):
    got = list(iter_lines(io.BytesIO(data), max_line_bytes))
  if lines and not final_newline and not lines[-1][0]:
    lines = lines[:-1]  # "a\n" + "" is one line, not two
  assert len(got) == len(lines)
  for (content, crlf), (line, total) in zip(lines, got):
    if len(content) <= max_line_bytes:
      assert (line, total) == (content, len(content))
    else:
      # Over the limit whatever the block boundaries; only a prefix kept.
      assert line == content[:min(max_line_bytes, MAX_RAW_CHARS)]
      assert total in ((len(content), len(content) + 1) if crlf
                       else (len(content),))
