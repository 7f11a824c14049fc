"""raw-fast: the tokenizer limit with the fast backend.

fastokens (sftbeam's default encoder) from the embedded tokenizer.json,
`encode_batch_flat` on raw's texts and batches (prompts with the tokenizer's
own specials, outputs without). Records in memory; only tokenizing timed.
fastokens encodes a call on about one core.
"""

import time

import numpy as np

from contenders.common import RAW_BATCH, fastokens_tokenizer, read_jsonl


def work(input_path, out_dir, tokenizer_dir):
  """The raw worker's texts and batches through fastokens' flat encoding."""
  del out_dir  # writes nothing
  records = read_jsonl(input_path)
  prompts = [record['prompt'] for record in records]
  outputs = [record['output'] for record in records]
  tokenizer = fastokens_tokenizer(tokenizer_dir)
  real_tokens = 0
  started = time.perf_counter()
  for start in range(0, len(records), RAW_BATCH):
    batch_prompts = prompts[start:start + RAW_BATCH]
    # The ids stay in their buffer, as a consumer takes them; the last
    # offset is the batch's token count.
    _, prompt_offsets = tokenizer.encode_batch_flat(batch_prompts,
                                                    add_special_tokens=True)
    _, output_offsets = tokenizer.encode_batch_flat(
        outputs[start:start + RAW_BATCH], add_special_tokens=False)
    real_tokens += int(np.frombuffer(prompt_offsets, '<u8')[-1] +
                       np.frombuffer(output_offsets, '<u8')[-1]) - len(
                           batch_prompts)
  return {'timed_s': time.perf_counter() - started, 'records': len(records),
          'records_written': None, 'real_tokens': real_tokens,
          'stored_tokens': None}
