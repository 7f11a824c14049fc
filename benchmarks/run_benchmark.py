"""Benchmark: sftbeam against the raw tokenizer and the usual alternatives.

Run from the project root (the `datasets` contender needs the benchmark
extra, `.venv/bin/pip install -c requirements-lock.txt -e '.[benchmark]'`,
and is skipped with a message without it):

  .venv/bin/python benchmarks/run_benchmark.py --records 100000
  .venv/bin/python benchmarks/run_benchmark.py --records 100000 --memory-check

Input: gsm8k_train + gsm8k_test + alpaca_5000 from ../shared/data, in that
order, cycled to --records records, each given a unique "id"; written once to
WORKDIR/input-N.jsonl and reused by every contender and later runs. The chat
contender's input: gsm8k_chat.jsonl's conversations cycled to --records
records with unique ids (WORKDIR/chat-input-N.jsonl, written once too).

Contenders, each run in its own subprocess on the same input (--contenders
picks any of them; all by default):
  raw       the tokenizer limit: the embedded Qwen tokenizer's Rust backend,
            `encode_batch_fast` on 1000 prompts then 1000 outputs at a time.
            The records are read into memory first; only tokenization is
            timed. TOKENIZERS_PARALLELISM and thread counts are left at their
            defaults (the Rust encoder then uses every core).
  raw-fast  the limit with the fast backend: fastokens (sftbeam's default
            encoder) from the embedded tokenizer.json, `encode_batch_flat`
            on raw's texts and batches (prompts with the tokenizer's own
            specials, outputs without). Records in memory; only tokenizing
            timed. fastokens encodes a call on about one core (its CPU
            seconds equal its wall seconds here).
  sftbeam   the real CLI, `sftbeam run --input ... --output ... --overwrite`
            with the default config and runner. Timed: the pipeline's own
            "wall time" summary line (records in -> shards and
            dataset_info.json written); the process wall time, which adds
            interpreter start, imports and the config checks, is shown too.
            The default local runner runs every step in this one process.
  sftbeam-hf      the CLI with --tokenizer_backend hf: HuggingFace's encoder,
                  sftbeam's path before fastokens.
  sftbeam-packed  the CLI with --layout packed --pack_length 2048; its pad
                  eff is the packing efficiency (dataset_info.json's
                  real / stored tokens, as for every sftbeam contender).
  sftbeam-chat    the CLI with the default options on the chat input. Its
                  records are conversations (2 to 6 messages) and its tokens
                  every row's L, so it has no "x raw".
                  All sftbeam contenders are timed as sftbeam.
  loop      a plain Python loop implementing the spec per batch of 32: read
            and parse 32 lines, one batched tokenizer `__call__` for the
            prompts and one for the outputs, pad to the batch maximum, shift
            and mask with numpy, one Example per batch through
            tf.io.TFRecordWriter. Timed from opening the input to closing the
            writer (loading the tokenizer and importing TensorFlow excluded).
  loop-fast the loop's output (the same Examples, batch for batch) from the
            fastest single-process loop we could write, timed like the loop:
            orjson per line; fastokens `encode_batch_flat` on FAST_CHUNK
            (4096) records at a time, the next chunk read and tokenized on a
            thread while this one's Examples are built and written; each
            record's tokens put together by one numpy scatter per chunk and
            varint-encoded once (numpy); a row of input_ids is its record's
            bytes but the last token's plus the pad's bytes repeated, labels
            the same but the first token's, the mask a 0/1 byte a position;
            Example headers from the lengths, its parts joined once;
            tf.io.TFRecordWriter. fastokens loads while TensorFlow imports.
  datasets  HuggingFace `datasets`: load_dataset("json") + map(batched=True)
            tokenization, then the loop's padding and writing over
            `Dataset.iter(batch_size=32)`. Offline (HF_DATASETS_OFFLINE=1),
            with a fresh cache under WORKDIR each run, so the JSON-to-Arrow
            conversion is paid as a user would pay it. Timed like the loop.

The loop, loop-fast and datasets contenders implement the spec here on
purpose, apart from transforms/, so that they are what a user would write
without sftbeam. The workers import sftbeam (and with it Apache Beam) only
to load the HuggingFace tokenizer: raw-fast and loop-fast do not.

What loop-fast tried, on 20,000 records (in-process, 2 shared cores, load 2
to 3). Through the protobuf API (upb), a 32 x 250 batch's Example took 3.1 ms
with Int64List(value=array.ravel().tolist()), 4.2 passing the array itself,
1.7 with `.value.extend(list)` into a default Example. The whole loop took
1.5 s with extend, 0.79 s with hand-built bytes (each array's values
varint-encoded), 0.47 s encoding each token once as above. Chunks of 1024 to
8192 records and one call over all texts tokenize alike; orjson per line
parses at 2.7 us a line (json 8.8, orjson over a chunk joined into one array
9.5). The reading thread measured within noise on this loaded machine (best
runs 0.45 against 0.49 s, 0.47 against 0.47 s) at the same CPU seconds; it
stays because fastokens releases the GIL, so with a free core it tokenizes
beside the Example building.
fastokens' segment cache stays off: the input repeats every 13,792 records,
a cache would measure the repetition, and sftbeam does not use one.

Measures per contender:
  records/s     input records / timed seconds
  records/s (process)   input records / the process's wall seconds
  tokens/s      real tokens / timed seconds; real tokens = the sum over
                records of prompt + output - 1 (the model input length L, the
                tokens that carry a label), over the records the contender
                wrote (raw: over every record it tokenized)
  x raw         records/s divided by the raw tokenizer's records/s (not
                for sftbeam-chat)
  pad eff       real tokens / stored tokens (rows x width of every batch);
                sftbeam's from its dataset_info.json
  peak RSS      of the contender's whole process tree: the larger of (a) the
                peak of the summed RSS of the process and all its descendants,
                polled from /proc every 0.5 s (counts pages shared between
                forked workers once per process), and (b) the exact peak of
                its largest single process (wait4's ru_maxrss)
  timed s, process s   see above
  load          the machine's 1-minute load average when the contender
                started: above the core count, other work shared the CPUs
                (then prefer --repeat N: N rounds of every contender,
                each contender's fastest run reported, all listed in the
                JSON)
The JSON also has each contender's CPU seconds (cpu_s_process, user +
system of its whole process tree) and the environment variables that set
thread counts.

It also computes, offline from the token lengths, the padding efficiency of
other schemes with batch 32: every batch padded to the global maximum, each
batch padded to its own maximum in input order (the loop), power-of-two
buckets, and the default boundaries (pipeline.options.DEFAULT_BOUNDARIES)
padded to the bucket and to the longest row. These use the records sftbeam
keeps (it rejects the two Alpaca records with an empty output), so the loop's
own figure, which keeps them, can differ from "batch_max_input_order" in the
third digit.

--memory-check runs only sftbeam, at --records and at 10x --records, and
reports both peak RSS figures and their ratio (target: within 1.25).

After the table, a "ratios" block: records/s of sftbeam over sftbeam-hf,
over loop-fast and over datasets, and of sftbeam-packed over sftbeam, each
from the timed seconds and from the whole process's (the pairs whose
contenders both ran).

Prints the table, the ratios and the padding schemes, and writes everything
as JSON (--json, default WORKDIR/results.json).
"""

import argparse
import collections
import concurrent.futures
import functools
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from typing import NamedTuple

import numpy as np

# sftbeam is imported where it is used: it brings Apache Beam (seconds of
# imports), which the loop-fast and raw-fast processes must not pay.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
SOURCE_FILES = ('gsm8k_train.jsonl', 'gsm8k_test.jsonl', 'alpaca_5000.jsonl')
CHAT_SOURCE = 'gsm8k_chat.jsonl'
CONTENDERS = ('raw', 'raw-fast', 'sftbeam', 'sftbeam-hf', 'sftbeam-packed',
              'sftbeam-chat', 'loop', 'loop-fast', 'datasets')
# The CLI arguments each sftbeam contender adds to the default run.
SFTBEAM_ARGS = {'sftbeam': (), 'sftbeam-hf': ('--tokenizer_backend', 'hf'),
                'sftbeam-packed': ('--layout', 'packed', '--pack_length',
                                   '2048'),
                'sftbeam-chat': ()}
# The ratios block: (numerator, denominator) contenders.
RATIOS = (('sftbeam', 'sftbeam-hf'), ('sftbeam', 'loop-fast'),
          ('sftbeam', 'datasets'), ('sftbeam-packed', 'sftbeam'))
RAW_BATCH = 1000
SPEC_BATCH = 32
# loop-fast: records per tokenizer call (a multiple of SPEC_BATCH, so its
# batches are the loop's).
FAST_CHUNK = 4096
POLL_SECONDS = 0.5
MEMORY_FACTOR = 10
# Recorded with the results: what decides how many threads the contenders use.
THREAD_ENV = ('TOKENIZERS_PARALLELISM', 'RAYON_NUM_THREADS', 'OMP_NUM_THREADS',
              'OPENBLAS_NUM_THREADS', 'OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE',
              'TF_NUM_INTEROP_THREADS', 'TF_NUM_INTRAOP_THREADS')
VERSIONED = ('apache-beam', 'tokenizers', 'transformers', 'tensorflow-cpu',
             'numpy', 'datasets')
MB = 1 << 20


# ---------------------------------------------------------------- the input

def read_jsonl(path):
  with open(path, encoding='utf-8') as handle:
    return [json.loads(line) for line in handle if line.strip()]


def source_records():
  """The shared records, in SOURCE_FILES order, as (prompt, output) pairs."""
  records = []
  for name in SOURCE_FILES:
    records += [(record['prompt'], record['output'])
                for record in read_jsonl(os.path.join(SHARED_DATA, name))]
  return records


def _write_once(path: str, records) -> str:
  """Writes `records` (dicts) as JSONL at `path` unless it exists: under a
  temporary name renamed at the end, so a file found there is complete."""
  if os.path.exists(path):
    return path
  temp_path = path + '.incomplete'
  with open(temp_path, 'w', encoding='utf-8') as handle:
    for record in records:
      handle.write(json.dumps(record, ensure_ascii=False) + '\n')
  os.rename(temp_path, path)
  return path


def build_input(workdir: str, count: int) -> str:
  """WORKDIR/input-COUNT.jsonl: the sources cycled to `count` records.

  Record i is source i % len(sources) with id "bench-i"; written once, then
  reused.
  """
  path = os.path.join(workdir, f'input-{count}.jsonl')
  if os.path.exists(path):
    return path
  sources = source_records()
  return _write_once(path, (
      {'id': f'bench-{index}', 'prompt': prompt, 'output': output}
      for index, (prompt, output) in zip(range(count),
                                         itertools.cycle(sources))))


def build_chat_input(workdir: str, count: int) -> str:
  """WORKDIR/chat-input-COUNT.jsonl: gsm8k_chat's conversations cycled to
  `count` records, record i with id "bench-chat-i"; written once."""
  path = os.path.join(workdir, f'chat-input-{count}.jsonl')
  if os.path.exists(path):
    return path
  conversations = [record['messages'] for record in
                   read_jsonl(os.path.join(SHARED_DATA, CHAT_SOURCE))]
  return _write_once(path, (
      {'id': f'bench-chat-{index}', 'messages': messages}
      for index, messages in zip(range(count),
                                 itertools.cycle(conversations))))


# ------------------------------------------------- measuring a process tree

def _children_by_parent():
  children = collections.defaultdict(list)
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat', encoding='utf-8') as handle:
        # The command name may hold spaces; the fields after ')' do not.
        parent = int(handle.read().rsplit(')', 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
      continue  # the process ended while we looked
    children[parent].append(int(entry))
  return children


def tree_rss_bytes(root_pid: int) -> int:
  """Summed resident memory of `root_pid` and all its descendants."""
  children = _children_by_parent()
  page = os.sysconf('SC_PAGE_SIZE')
  total, pending = 0, [root_pid]
  while pending:
    pid = pending.pop()
    try:
      with open(f'/proc/{pid}/statm', encoding='utf-8') as handle:
        total += int(handle.read().split()[1]) * page
    except (OSError, IndexError, ValueError):
      pass
    pending += children.get(pid, [])
  return total


class Measured(NamedTuple):
  exit_code: int
  wall_s: float
  peak_rss_bytes: int
  cpu_s: float  # user + system, the whole tree that was waited for
  load_before: float  # the machine's 1-minute load average at the start


def run_measured(command, env, log_prefix) -> Measured:
  """Runs `command` to completion and measures it.

  Its stdout and stderr go to LOG_PREFIX.stdout/.stderr.
  """
  load_before = os.getloadavg()[0]
  with open(log_prefix + '.stdout', 'w', encoding='utf-8') as out, open(
      log_prefix + '.stderr', 'w', encoding='utf-8') as err:
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=out, stderr=err, env=env,
                               cwd=ROOT)
    peak = [0]
    done = threading.Event()

    def poll():
      while not done.is_set():
        peak[0] = max(peak[0], tree_rss_bytes(process.pid))
        done.wait(POLL_SECONDS)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    # wait4, not Popen.wait: it also gives the child's own resource usage.
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    poller.join()
  process.returncode = os.waitstatus_to_exitcode(status)
  # ru_maxrss is in KiB on Linux.
  return Measured(process.returncode, wall,
                  max(peak[0], usage.ru_maxrss * 1024),
                  usage.ru_utime + usage.ru_stime, load_before)


# ------------------------------------------------------- the workers (child)

def hf_tokenizer(tokenizer_dir):
  """The HuggingFace tokenizer in `tokenizer_dir`, as sftbeam loads it."""
  from sftbeam.transforms.tokenizer_source import load_tokenizer
  return load_tokenizer(tokenizer_dir)


def _pad_id(tokenizer) -> int:
  pad_id = tokenizer.pad_token_id
  return tokenizer.eos_token_id if pad_id is None else pad_id


def spec_arrays(prompt_ids, output_ids, pad_id):
  """The spec on one batch, written out plainly: pad to the batch max, shift,
  mask. Gives input_ids, labels, response_mask, prompt/output lengths."""
  prompt_lengths = np.array([len(ids) for ids in prompt_ids], np.int64)
  output_lengths = np.array([len(ids) for ids in output_ids], np.int64)
  total_lengths = prompt_lengths + output_lengths
  sequences = np.full((len(prompt_ids), total_lengths.max()), pad_id,
                      np.int64)
  for row, (prompt, output) in enumerate(zip(prompt_ids, output_ids)):
    sequences[row, :total_lengths[row]] = list(prompt) + list(output)
  columns = np.arange(sequences.shape[1] - 1)
  response_mask = ((columns >= prompt_lengths[:, None] - 1) &
                   (columns < total_lengths[:, None] - 1))
  return {'input_ids': sequences[:, :-1], 'labels': sequences[:, 1:],
          'response_mask': response_mask.astype(np.int64),
          'prompt_lengths': prompt_lengths, 'output_lengths': output_lengths}


def worker_raw(input_path, out_dir, tokenizer_dir):
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


def fastokens_tokenizer(tokenizer_dir):
  """fastokens' tokenizer from `tokenizer_dir`/tokenizer.json."""
  import fastokens  # only in the workers that use it
  return fastokens.Tokenizer.from_file(
      os.path.join(tokenizer_dir, 'tokenizer.json'))


def worker_raw_fast(input_path, out_dir, tokenizer_dir):
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


class SpecWriter:
  """Pads, shifts and masks batches per the spec; one Example per batch,
  with the same content as sftbeam's."""

  def __init__(self, path, pad_id):
    import tensorflow as tf  # only in the workers that write
    self._tf = tf
    self._writer = tf.io.TFRecordWriter(path)
    self._pad_id = pad_id
    self.counts = collections.Counter()

  def _ints(self, values):
    return self._tf.train.Feature(
        int64_list=self._tf.train.Int64List(value=values.ravel().tolist()))

  def _example(self, arrays, example_ids) -> bytes:
    train = self._tf.train
    feature = {name: self._ints(values) for name, values in arrays.items()}
    feature['shape'] = self._ints(np.array(arrays['input_ids'].shape))
    feature['example_ids'] = train.Feature(bytes_list=train.BytesList(
        value=[str(example_id).encode('utf-8') for example_id in example_ids]))
    return train.Example(features=train.Features(
        feature=feature)).SerializeToString()

  def write(self, prompt_ids, output_ids, example_ids):
    arrays = spec_arrays(prompt_ids, output_ids, self._pad_id)
    self._writer.write(self._example(arrays, example_ids))
    rows, width = arrays['input_ids'].shape
    self.counts.update(records_written=rows, stored_tokens=rows * width,
                       real_tokens=int((arrays['prompt_lengths'] +
                                        arrays['output_lengths'] - 1).sum()))

  def close(self):
    self._writer.close()


def worker_loop(input_path, out_dir, tokenizer_dir):
  """Reads, tokenizes and writes SPEC_BATCH records at a time."""
  tokenizer = hf_tokenizer(tokenizer_dir)
  # Opened before the clock starts: importing TensorFlow takes seconds.
  writer = SpecWriter(os.path.join(out_dir, 'batches.tfrecord'),
                      _pad_id(tokenizer))
  records = 0
  started = time.perf_counter()

  def flush(batch):
    writer.write(
        tokenizer([record['prompt'] for record in batch])['input_ids'],
        tokenizer([record['output'] for record in batch],
                  add_special_tokens=False)['input_ids'],
        [record['id'] for record in batch])

  batch = []
  with open(input_path, encoding='utf-8') as handle:
    for line in handle:
      batch.append(json.loads(line))
      records += 1
      if len(batch) == SPEC_BATCH:
        flush(batch)
        batch = []
  if batch:
    flush(batch)
  writer.close()
  return dict(writer.counts, timed_s=time.perf_counter() - started,
              records=records)


def worker_datasets(input_path, out_dir, tokenizer_dir):
  """load_dataset("json") + map(batched=True), then the loop's writer."""
  import datasets
  tokenizer = hf_tokenizer(tokenizer_dir)
  cache_dir = os.environ['HF_DATASETS_CACHE']

  def tokenize(batch):
    return {'prompt_ids': tokenizer(batch['prompt'])['input_ids'],
            'output_ids': tokenizer(batch['output'],
                                    add_special_tokens=False)['input_ids']}

  writer = SpecWriter(os.path.join(out_dir, 'batches.tfrecord'),
                      _pad_id(tokenizer))
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


# ----------------------------------------- the fastest loop (child, loop-fast)

def _varint(value: int) -> bytes:
  """A non-negative int as protobuf varint bytes."""
  out = bytearray()
  while value > 0x7f:
    out.append(value & 0x7f | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def varints(values):
  """The protobuf varints of `values` (ints in [0, 2**28)), concatenated,
  and each value's byte count.

  Each varint is built in a uint32 (7 bits a byte, the high bit set when a
  byte follows); one compaction then drops the unused bytes: the zero bytes
  after the first (a varint's later bytes are never zero).
  """
  values = np.asarray(values)
  if values.size and not 0 <= values.min() <= values.max() < 1 << 28:
    raise ValueError('varints() takes ints in [0, 2**28)')
  values = values.astype(np.uint32)
  words = values & 0x7f
  counts = np.ones(values.size, np.int64)
  for group in (1, 2, 3):
    follows = values >= 1 << (7 * group)
    counts += follows
    words |= follows.astype(np.uint32) << (8 * group - 1)
    words |= (values << group) & (0x7f << (8 * group))
  table = words.astype('<u4', copy=False).view(np.uint8).reshape(-1, 4)
  keep = table != 0
  keep[:, 0] = True
  return np.compress(keep.ravel(), table.ravel()).tobytes(), counts


def _starts(counts):
  """Where each of `counts` items starts in their concatenation, and (last)
  where it ends."""
  starts = np.zeros(len(counts) + 1, np.int64)
  np.cumsum(counts, out=starts[1:])
  return starts


def _header(field: int, length: int) -> bytes:
  """Tag and length of a length-delimited protobuf field."""
  return bytes([field << 3 | 2]) + _varint(length)


def _nested(fields, parts) -> list:
  """`parts` (bytes) inside length-delimited `fields`, outermost first: a
  list of bytes to join once (no copy per level of nesting)."""
  length = sum(map(len, parts))
  for field in reversed(fields):
    header = _header(field, length)
    parts = [header] + parts
    length += len(header)
  return parts


def _feature(name: bytes, kind: int, values: list) -> list:
  """A Features.feature map entry: `name` -> a Feature whose list `kind`
  (1 bytes, 3 int64) holds `values` (bytes of its value fields)."""
  return _nested((1,), [_header(1, len(name)), name] +
                 _nested((2, kind), values))


def _int64_feature(name: bytes, packed: bytes) -> list:
  """A map entry `name` -> an Int64List of `packed` varints."""
  return _feature(name, 3, _nested((1,), [packed]))


class FastChunk(NamedTuple):
  """Records parsed and tokenized: record r's prompt then output tokens are
  tokens[starts[r]:starts[r + 1]]; its id is id_fields[r], a BytesList
  value field."""
  id_fields: list
  tokens: np.ndarray
  starts: np.ndarray
  prompt_lengths: np.ndarray
  output_lengths: np.ndarray


def _flat_ids(encoded):
  ids, offsets = encoded
  return (np.frombuffer(ids, '<u4'),
          np.frombuffer(offsets, '<u8').astype(np.int64))


def read_fast_chunk(lines, tokenizer, parse) -> FastChunk:
  """JSON lines -> FastChunk: one fastokens call for the prompts, one for
  the outputs, then each record's tokens put together by one scatter."""
  records = [parse(line) for line in lines]
  id_fields = [_header(1, len(key)) + key for key in
               (str(record['id']).encode('utf-8') for record in records)]
  prompt_ids, prompt_offsets = _flat_ids(tokenizer.encode_batch_flat(
      [record['prompt'] for record in records], add_special_tokens=True))
  output_ids, output_offsets = _flat_ids(tokenizer.encode_batch_flat(
      [record['output'] for record in records], add_special_tokens=False))
  prompt_lengths = np.diff(prompt_offsets)
  output_lengths = np.diff(output_offsets)
  starts = _starts(prompt_lengths + output_lengths)
  tokens = np.empty(starts[-1], np.uint32)
  tokens[np.arange(len(prompt_ids)) + np.repeat(
      starts[:-1] - prompt_offsets[:-1], prompt_lengths)] = prompt_ids
  tokens[np.arange(len(output_ids)) + np.repeat(
      starts[:-1] + prompt_lengths - output_offsets[:-1],
      output_lengths)] = output_ids
  return FastChunk(id_fields, tokens, starts, prompt_lengths, output_lengths)


def fast_examples(chunk: FastChunk, pad_id: int):
  """The loop's Examples for `chunk`: batches of SPEC_BATCH records in
  input order, padded to the batch's longest, shifted, masked.

  Every token is varint-encoded once, padding not at all: a row of
  input_ids is its record's bytes but the last token's, then the pad's
  bytes repeated; labels skip the first token instead. Yields (Example
  bytes, rows, width).
  """
  totals = chunk.prompt_lengths + chunk.output_lengths
  records = len(totals)
  batch_starts = np.arange(0, records, SPEC_BATCH)
  rows = np.diff(np.append(batch_starts, records))
  # At least 1: a batch of empty records has width 0, as the loop's.
  row_widths = np.repeat(
      np.maximum(np.maximum.reduceat(totals, batch_starts), 1), rows)
  token_bytes, counts = varints(chunk.tokens)
  byte_at = _starts(counts)
  starts = chunk.starts[:-1]
  in_input = np.minimum(totals, row_widths - 1)
  label_skip = np.minimum(totals, 1)
  input_from, input_to = (byte_at[starts].tolist(),
                          byte_at[starts + in_input].tolist())
  label_from, label_to = (byte_at[starts + label_skip].tolist(),
                          byte_at[starts + totals].tolist())
  input_pads = (row_widths - 1 - in_input).tolist()
  label_pads = (row_widths - 1 - totals + label_skip).tolist()
  cuts = np.append(batch_starts, records)
  prompt_lengths, output_lengths = (
      _cut(lengths, cuts) for lengths in (chunk.prompt_lengths,
                                          chunk.output_lengths))
  pad = _varint(pad_id)
  tokens = memoryview(token_bytes)
  for batch, (first, last) in enumerate(zip(cuts[:-1].tolist(),
                                            cuts[1:].tolist())):
    width = int(row_widths[first]) - 1
    input_ids = b''.join([piece for row in range(first, last) for piece in (
        tokens[input_from[row]:input_to[row]], pad * input_pads[row])])
    labels = b''.join([piece for row in range(first, last) for piece in (
        tokens[label_from[row]:label_to[row]], pad * label_pads[row])])
    columns = np.arange(width)
    prompt = chunk.prompt_lengths[first:last, None]
    # A bool is one byte, 0 or 1: its own varint.
    mask = ((columns >= prompt - 1) &
            (columns < prompt + chunk.output_lengths[first:last, None] - 1))
    entries = (_int64_feature(b'input_ids', input_ids) +
               _int64_feature(b'labels', labels) +
               _int64_feature(b'response_mask', mask.tobytes()) +
               _int64_feature(b'prompt_lengths', prompt_lengths[batch]) +
               _int64_feature(b'output_lengths', output_lengths[batch]) +
               _int64_feature(b'shape', _varint(last - first) +
                              _varint(width)) +
               _feature(b'example_ids', 1,
                        [b''.join(chunk.id_fields[first:last])]))
    yield b''.join(_nested((1,), entries)), last - first, width


def _cut(values, cuts) -> list:
  """The varints of `values`, as one bytes per slice between `cuts`."""
  data, counts = varints(values)
  at = _starts(counts)[cuts].tolist()
  return [data[start:end] for start, end in zip(at[:-1], at[1:])]


def fast_pad_id(tokenizer_dir, tokenizer) -> int:
  """The id of tokenizer_config.json's pad token, else of its eos token
  (what the loop takes from transformers)."""
  with open(os.path.join(tokenizer_dir, 'tokenizer_config.json'),
            encoding='utf-8') as handle:
    config = json.load(handle)
  for name in ('pad_token', 'eos_token'):
    token = config.get(name)
    token = token.get('content') if isinstance(token, dict) else token
    token_id = None if token is None else tokenizer.token_to_id(token)
    if token_id is not None:
      return token_id
  raise ValueError(f'{tokenizer_dir}: no pad or eos token')


def worker_loop_fast(input_path, out_dir, tokenizer_dir):
  """The loop's output, as fast as a hand-written loop in one process makes
  it: FAST_CHUNK records per tokenizer call, the Example bytes by hand."""
  import orjson  # only in this worker
  with concurrent.futures.ThreadPoolExecutor(1) as loader:
    # fastokens loads (seconds, without the GIL) while TensorFlow imports.
    loading = loader.submit(fastokens_tokenizer, tokenizer_dir)
    import tensorflow as tf
    tokenizer = loading.result()
  pad_id = fast_pad_id(tokenizer_dir, tokenizer)
  writer = tf.io.TFRecordWriter(os.path.join(out_dir, 'batches.tfrecord'))
  counts = collections.Counter()
  started = time.perf_counter()
  with open(input_path, 'rb') as handle, \
      concurrent.futures.ThreadPoolExecutor(1) as reader:

    def read_next():
      lines = list(itertools.islice(handle, FAST_CHUNK))
      return read_fast_chunk(lines, tokenizer, orjson.loads) if lines else None

    # The next chunk is read and tokenized while this one is written.
    pending = reader.submit(read_next)
    while (chunk := pending.result()) is not None:
      pending = reader.submit(read_next)
      for example, rows, width in fast_examples(chunk, pad_id):
        writer.write(example)
        counts.update(records_written=rows, stored_tokens=rows * width)
      records = len(chunk.id_fields)
      counts.update(records=records,
                    real_tokens=int(chunk.starts[-1]) - records)
  writer.close()
  return dict(counts, timed_s=time.perf_counter() - started)


def worker_lengths(input_path, out_dir, tokenizer_dir):
  """Token counts of every source record: (prompt, output) pairs, as JSON."""
  del input_path, out_dir
  sources = source_records()
  backend = hf_tokenizer(tokenizer_dir).backend_tokenizer
  prompts = backend.encode_batch_fast([prompt for prompt, _ in sources],
                                      add_special_tokens=True)
  outputs = backend.encode_batch_fast([output for _, output in sources],
                                      add_special_tokens=False)
  return {'lengths': [[len(prompt), len(output)]
                      for prompt, output in zip(prompts, outputs)]}


WORKERS = {'raw': worker_raw, 'raw-fast': worker_raw_fast, 'loop': worker_loop,
           'loop-fast': worker_loop_fast, 'datasets': worker_datasets,
           'lengths': worker_lengths}


def run_worker(args):
  result = WORKERS[args.worker](args.input, args.out, args.tokenizer_dir)
  result['env'] = {name: os.environ.get(name) for name in THREAD_ENV}
  with open(args.result, 'w', encoding='utf-8') as handle:
    json.dump(result, handle)


# ------------------------------------------------------ the contenders (parent)

# Every child gets this copy of our environment, taken before anything could
# change it: thread settings stay the user's (by default, unset).
BASE_ENV = dict(os.environ)
SFTBEAM = os.path.join(os.path.dirname(sys.executable), 'sftbeam')


@functools.cache
def embedded_dir() -> str:
  """The embedded tokenizer's directory, which every worker loads from."""
  from sftbeam.transforms.tokenizer_source import embedded_tokenizer_dir
  return embedded_tokenizer_dir()


def fresh_dir(path: str) -> str:
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  return path


def _log_prefix(workdir, name):
  logs = os.path.join(workdir, 'logs')
  os.makedirs(logs, exist_ok=True)
  return os.path.join(logs, name)


def _failure(name, code, log_prefix):
  with open(log_prefix + '.stderr', encoding='utf-8') as handle:
    lines = [line for line in handle.read().splitlines() if line.strip()]
  last = lines[-1] if lines else ''
  return {'contender': name,
          'status': f'failed (exit {code}): {last} (see {log_prefix}.stderr)'}


def make_row(name, measured, timed_s, counts):
  """A table row from the process measurement and the contender's counts."""
  records, real = counts['records'], counts['real_tokens']
  stored = counts.get('stored_tokens')
  return {
      'contender': name, 'status': 'ok', 'records': records,
      'records_written': counts.get('records_written'),
      'real_tokens': real, 'stored_tokens': stored,
      'padding_efficiency': real / stored if stored else None,
      'timed_s': timed_s, 'process_s': measured.wall_s,
      'records_per_s': records / timed_s,
      'records_per_s_process': records / measured.wall_s,
      'tokens_per_s': real / timed_s,
      'peak_rss_mb': measured.peak_rss_bytes / MB,
      'cpu_s_process': measured.cpu_s,
      'load_before': measured.load_before,
      'ratio_to_raw': None,
  }


def run_python_worker(name, input_path, workdir, env=None):
  """Runs `name`'s worker function in a measured child process."""
  log_prefix = _log_prefix(workdir, name)
  out_dir = fresh_dir(os.path.join(workdir, f'out-{name}'))
  result_path = log_prefix + '.result.json'
  command = [sys.executable, os.path.abspath(__file__), '--worker', name,
             '--input', input_path, '--out', out_dir, '--result', result_path,
             '--tokenizer-dir', embedded_dir()]
  measured = run_measured(command, env or BASE_ENV, log_prefix)
  if measured.exit_code:
    return None, _failure(name, measured.exit_code, log_prefix)
  with open(result_path, encoding='utf-8') as handle:
    result = json.load(handle)
  row = None
  if 'timed_s' in result:
    row = make_row(name, measured, result['timed_s'], result)
    row['env'] = result['env']
  return result, row


def run_sftbeam(input_path, workdir, name='sftbeam', options=()):
  """The real CLI, default config but `options` (CLI arguments); timed by
  its own summary's wall time."""
  log_prefix = _log_prefix(workdir, name)
  out_dir = fresh_dir(os.path.join(workdir, f'out-{name}'))
  command = [SFTBEAM, 'run', '--input', input_path, '--output', out_dir,
             '--overwrite', *options]
  measured = run_measured(command, BASE_ENV, log_prefix)
  if measured.exit_code:
    return _failure(name, measured.exit_code, log_prefix)
  with open(log_prefix + '.stdout', encoding='utf-8') as handle:
    wall = re.search(r'^wall time\s+([\d.]+) s', handle.read(), re.MULTILINE)
  with open(os.path.join(out_dir, 'dataset_info.json'),
            encoding='utf-8') as handle:
    counts = json.load(handle)['counts']
  return make_row(name, measured, float(wall.group(1)), {
      'records': counts['records_in'],
      'records_written': counts['records_written'],
      'real_tokens': counts['real_tokens'],
      'stored_tokens': counts['stored_tokens']})


def run_datasets(input_path, workdir):
  if importlib.util.find_spec('datasets') is None:
    return {'contender': 'datasets', 'status': (
        "skipped: `datasets` is not installed (.venv/bin/pip install "
        "-c requirements-lock.txt -e '.[benchmark]')")}
  cache_dir = fresh_dir(os.path.join(workdir, 'hf-cache'))
  # A fresh cache each run: a warm one would skip the JSON -> Arrow work.
  env = dict(BASE_ENV, HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1',
             HF_HOME=os.path.join(workdir, 'hf-home'),
             HF_DATASETS_CACHE=cache_dir)
  row = run_python_worker('datasets', input_path, workdir, env)[1]
  shutil.rmtree(cache_dir, ignore_errors=True)
  return row


def run_contender(name, input_path, workdir, records):
  """Runs contender `name` on `input_path` (its prompt/output records) once;
  gives its row."""
  if name == 'sftbeam-chat':
    input_path = build_chat_input(workdir, records)
  if name in SFTBEAM_ARGS:
    return run_sftbeam(input_path, workdir, name, SFTBEAM_ARGS[name])
  if name == 'datasets':
    return run_datasets(input_path, workdir)
  return run_python_worker(name, input_path, workdir)[1]


# ------------------------------------------------ padding schemes (offline)

def source_lengths(workdir):
  """[prompt tokens, output tokens] of every source record, cached."""
  path = os.path.join(workdir, 'source-lengths.json')
  if not os.path.exists(path):
    result, failure = run_python_worker('lengths', '', workdir)
    shutil.rmtree(os.path.join(workdir, 'out-lengths'), ignore_errors=True)
    if result is None:
      raise SystemExit(f'cannot compute token lengths: {failure["status"]}')
    with open(path + '.incomplete', 'w', encoding='utf-8') as handle:
      json.dump(result['lengths'], handle)
    os.rename(path + '.incomplete', path)
  with open(path, encoding='utf-8') as handle:
    return json.load(handle)


def _batch_max_stored(lengths, batch_size):
  """Stored tokens when consecutive batches are padded to their own max."""
  if not len(lengths):
    return 0
  starts = np.arange(0, len(lengths), batch_size)
  sizes = np.diff(np.append(starts, len(lengths)))
  return int((np.maximum.reduceat(lengths, starts) * sizes).sum())


def padding_schemes(pairs, count, batch_size=SPEC_BATCH):
  """Padding efficiency of several schemes on the input's token lengths.

  Uses the records sftbeam keeps by default (prompt and output each at least
  one token, L = prompt + output - 1 within the largest default boundary),
  in input order.
  """
  from sftbeam.pipeline.options import DEFAULT_BOUNDARIES
  pairs = np.asarray(pairs, np.int64)[np.arange(count) % len(pairs)]
  kept = pairs[(pairs[:, 0] > 0) & (pairs[:, 1] > 0)]
  lengths = kept.sum(axis=1) - 1
  boundaries = np.asarray(DEFAULT_BOUNDARIES)
  lengths = lengths[lengths <= boundaries[-1]]
  buckets = boundaries[np.searchsorted(boundaries, lengths)]
  real = int(lengths.sum())
  stored = {
      'global_max': len(lengths) * int(lengths.max()),
      'batch_max_input_order': _batch_max_stored(lengths, batch_size),
      'pow2_buckets': int((2 ** np.ceil(np.log2(lengths))).sum()),
      'default_buckets_pad_to_bucket': int(buckets.sum()),
      'default_buckets_pad_to_longest': sum(
          _batch_max_stored(lengths[buckets == bucket], batch_size)
          for bucket in np.unique(buckets)),
  }
  return [{'scheme': scheme, 'batch_size': batch_size,
           'efficiency': real / value} for scheme, value in stored.items()]


# ------------------------------------------------------------ the report

def versions():
  found = {}
  for name in VERSIONED:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def _cell(value, digits=0):
  if value is None:
    return '-'
  return f'{value:,.{digits}f}' if isinstance(value, float) else str(value)


COLUMNS = (('contender', 'contender', None), ('records', 'records', None),
           ('records/s', 'records_per_s', 0),
           ('records/s (process)', 'records_per_s_process', 0),
           ('tokens/s', 'tokens_per_s', 0), ('x raw', 'ratio_to_raw', 2),
           ('pad eff', 'padding_efficiency', 3),
           ('peak RSS MiB', 'peak_rss_mb', 0), ('timed s', 'timed_s', 1),
           ('process s', 'process_s', 1), ('load', 'load_before', 1))


def format_table(rows) -> str:
  """A Markdown table of the contender rows, and one line per non-ok row."""
  lines = ['| ' + ' | '.join(title for title, _, _ in COLUMNS) + ' |',
           '|' + '---|' * len(COLUMNS)]
  notes = []
  for row in rows:
    if row['status'] != 'ok':
      notes.append(f'{row["contender"]}: {row["status"]}')
      continue
    lines.append('| ' + ' | '.join(_cell(row[key], digits)
                                   for _, key, digits in COLUMNS) + ' |')
  return '\n'.join(lines + notes)


def format_padding(schemes) -> str:
  return '\n'.join(
      [f'padding efficiency on the input, batch {schemes[0]["batch_size"]}:'] +
      [f'  {scheme["scheme"]:<32} {scheme["efficiency"]:.3f}'
       for scheme in schemes])


def best_run(runs) -> dict:
  """The fastest of a contender's runs (the least disturbed on a shared
  machine), with every run's records/s; a failed run wins, to be seen."""
  failed = [run for run in runs if run['status'] != 'ok']
  if failed:
    return failed[0]
  best = max(runs, key=lambda run: run['records_per_s'])
  return dict(best, runs_records_per_s=[run['records_per_s'] for run in runs])


def set_ratios(rows):
  """Sets each ok row's ratio_to_raw, but sftbeam-chat's (other input)."""
  raw = [row for row in rows if row['contender'] == 'raw' and
         row['status'] == 'ok']
  for row in rows:
    if raw and row['status'] == 'ok' and row['contender'] != 'sftbeam-chat':
      row['ratio_to_raw'] = row['records_per_s'] / raw[0]['records_per_s']


def ratios(rows) -> list:
  """Records/s of each RATIOS pair whose contenders both ran: the first's
  over the second's, timed and whole-process."""
  ok = {row['contender']: row for row in rows if row['status'] == 'ok'}
  return [{'ratio': f'{top} / {bottom}',
           'timed': ok[top]['records_per_s'] / ok[bottom]['records_per_s'],
           'process': ok[top]['records_per_s_process'] /
                      ok[bottom]['records_per_s_process']}
          for top, bottom in RATIOS if top in ok and bottom in ok]


def format_ratios(pairs) -> str:
  return '\n'.join(
      [f'{"ratios of records/s:":<34}{"timed":>7}{"process":>9}'] +
      [f'  {pair["ratio"]:<32}{pair["timed"]:7.2f}{pair["process"]:9.2f}'
       for pair in pairs])


def benchmark(args) -> dict:
  input_path = build_input(args.workdir, args.records)
  report = {'input': input_path, 'records': args.records,
            'padding': padding_schemes(source_lengths(args.workdir),
                                       args.records),
            'contenders': []}
  runs = collections.defaultdict(list)
  # Round after round, so a burst of other work on a shared machine hits
  # every contender alike rather than all runs of one.
  for attempt in range(1, args.repeat + 1):
    for name in args.contenders:
      print(f'running {name} on {args.records} records (round {attempt}/'
            f'{args.repeat}) ...', flush=True)
      runs[name].append(run_contender(name, input_path, args.workdir,
                                      args.records))
      if not args.keep_outputs:
        shutil.rmtree(os.path.join(args.workdir, f'out-{name}'),
                      ignore_errors=True)
  report['contenders'] = [best_run(runs[name]) for name in args.contenders]
  set_ratios(report['contenders'])
  report['ratios'] = ratios(report['contenders'])
  print(format_table(report['contenders']))
  if report['ratios']:
    print(format_ratios(report['ratios']))
  print(format_padding(report['padding']))
  return report


def memory_check(args) -> dict:
  rows = []
  for count in (args.records, args.records * MEMORY_FACTOR):
    print(f'running sftbeam on {count} records ...', flush=True)
    row = run_sftbeam(build_input(args.workdir, count), args.workdir,
                      name=f'sftbeam-{count}')
    rows.append(row)
    if not args.keep_outputs:
      shutil.rmtree(os.path.join(args.workdir, f'out-sftbeam-{count}'),
                    ignore_errors=True)
  ratio = None
  if all(row['status'] == 'ok' for row in rows):
    ratio = rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']
  print(format_table(rows))
  print(f'peak RSS at {args.records * MEMORY_FACTOR} records / at '
        f'{args.records} records: {_cell(ratio, 2)} (target <= 1.25)')
  return {'memory_check': {'records': [args.records,
                                      args.records * MEMORY_FACTOR],
                           'peak_rss_ratio': ratio},
          'contenders': rows}


def _parser():
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='See the module docstring for what each number means.')
  parser.add_argument('--records', type=int, default=100_000,
                      help='input records (default 100000)')
  parser.add_argument('--contenders', default=','.join(CONTENDERS),
                      help=f'comma-separated subset of {",".join(CONTENDERS)}')
  parser.add_argument('--workdir', default='/tmp/sftbeam-bench',
                      help='input files, outputs, logs and caches')
  parser.add_argument('--json', help='results file (default '
                      'WORKDIR/results.json)')
  parser.add_argument('--memory-check', action='store_true',
                      help=f'only sftbeam, at --records and {MEMORY_FACTOR}x '
                      '--records: compare peak RSS')
  parser.add_argument('--repeat', type=int, default=1,
                      help='rounds of runs of every contender; each '
                      'contender\'s fastest run is reported')
  parser.add_argument('--keep-outputs', action='store_true',
                      help='keep each contender\'s output under WORKDIR')
  # Internal: how the parent runs one contender in a child process.
  for name in ('--worker', '--input', '--out', '--result', '--tokenizer-dir'):
    parser.add_argument(name, help=argparse.SUPPRESS)
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.worker:
    run_worker(args)
    return 0
  args.contenders = [name for name in args.contenders.split(',') if name]
  unknown = set(args.contenders) - set(CONTENDERS)
  if unknown:
    _parser().error(f'unknown contenders {sorted(unknown)}')
  if args.records < 1 or args.repeat < 1:
    _parser().error('--records and --repeat must be positive')
  if not os.path.isdir(SHARED_DATA):
    _parser().error(f'{SHARED_DATA} not found: the input is built from it')
  args.workdir = os.path.abspath(args.workdir)
  os.makedirs(args.workdir, exist_ok=True)
  report = memory_check(args) if args.memory_check else benchmark(args)
  report.update(command=' '.join([os.path.relpath(sys.argv[0], ROOT)] +
                                 sys.argv[1:]),
                machine={'cpus': os.cpu_count(),
                         'platform': platform.platform(),
                         'python': platform.python_version()},
                env={name: BASE_ENV.get(name) for name in THREAD_ENV},
                versions=versions())
  json_path = args.json or os.path.join(args.workdir, 'results.json')
  with open(json_path, 'w', encoding='utf-8') as handle:
    json.dump(report, handle, indent=2)
  print(f'results: {json_path}')
  failed = [row for row in report['contenders']
            if row['status'].startswith('failed')]
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
