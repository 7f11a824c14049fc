"""datasets: HuggingFace `datasets`, as a user would write it.

load_dataset("json") + map(batched=True) tokenization, then the loop's
padding and writing over `Dataset.iter(batch_size=32)`. Offline
(HF_DATASETS_OFFLINE=1), with a fresh cache under WORKDIR each run, so the
JSON-to-Arrow conversion is paid as a user would pay it. Timed like the
loop. Needs the benchmark extra; skipped with a message without it.
"""

import importlib.util
import os
import shutil
import time

import measure
from contenders.common import SPEC_BATCH, hf_tokenizer, pad_id_of
from contenders.loop import SpecWriter


def run(input_path, workdir):
  """Runs `work` in a measured child process with a fresh cache; gives its
  row, or a skipped one without `datasets`."""
  if importlib.util.find_spec('datasets') is None:
    return {'contender': 'datasets', 'status': (
        "skipped: `datasets` is not installed (.venv/bin/pip install "
        "-c requirements-lock.txt -e '.[benchmark]')")}
  cache_dir = measure.fresh_dir(os.path.join(workdir, 'hf-cache'))
  # A fresh cache each run: a warm one would skip the JSON -> Arrow work.
  env = dict(measure.BASE_ENV, HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1',
             HF_HOME=os.path.join(workdir, 'hf-home'),
             HF_DATASETS_CACHE=cache_dir)
  row = measure.run_python_worker('datasets', input_path, workdir, env)[1]
  shutil.rmtree(cache_dir, ignore_errors=True)
  return row


def work(input_path, out_dir, tokenizer_dir):
  """load_dataset("json") + map(batched=True), then the loop's writer."""
  import datasets
  tokenizer = hf_tokenizer(tokenizer_dir)
  cache_dir = os.environ['HF_DATASETS_CACHE']

  def tokenize(batch):
    return {'prompt_ids': tokenizer(batch['prompt'])['input_ids'],
            'output_ids': tokenizer(batch['output'],
                                    add_special_tokens=False)['input_ids']}

  writer = SpecWriter(os.path.join(out_dir, 'batches.tfrecord'),
                      pad_id_of(tokenizer))
  started = time.perf_counter()
  dataset = datasets.load_dataset('json', data_files=input_path, split='train',
                                  cache_dir=cache_dir)
  dataset = dataset.map(tokenize, batched=True,
                        remove_columns=['prompt', 'output'])
  for batch in dataset.iter(batch_size=SPEC_BATCH):
    writer.write(batch['prompt_ids'], batch['output_ids'], batch['id'])
  writer.close()
  return dict(writer.counts, timed_s=time.perf_counter() - started,
              records=len(dataset))
