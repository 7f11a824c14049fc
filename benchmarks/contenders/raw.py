"""raw: the tokenizer limit.

The embedded Qwen tokenizer's Rust backend, `encode_batch_fast` on 1000
prompts then 1000 outputs at a time. The records are read into memory
first; only tokenization is timed. TOKENIZERS_PARALLELISM and thread counts
are left at their defaults (the Rust encoder then uses every core).
"""

import time

from contenders.common import RAW_BATCH, hf_tokenizer, read_jsonl


def work(input_path, out_dir, tokenizer_dir):
  """Tokenizes every record in memory with the Rust backend, batched."""
  del out_dir  # writes nothing
  records = read_jsonl(input_path)
  prompts = [record['prompt'] for record in records]
  outputs = [record['output'] for record in records]
  backend = hf_tokenizer(tokenizer_dir).backend_tokenizer
  real_tokens = 0
  started = time.perf_counter()
  for start in range(0, len(records), RAW_BATCH):
    prompt_encodings = backend.encode_batch_fast(
        prompts[start:start + RAW_BATCH], add_special_tokens=True)
    output_encodings = backend.encode_batch_fast(
        outputs[start:start + RAW_BATCH], add_special_tokens=False)
    # `.ids` builds the id lists any consumer of the tokenizer needs.
    real_tokens += sum(len(prompt.ids) + len(output.ids) - 1 for prompt, output
                       in zip(prompt_encodings, output_encodings))
  return {'timed_s': time.perf_counter() - started, 'records': len(records),
          'records_written': None, 'real_tokens': real_tokens,
          'stored_tokens': None}
