"""Benchmark: conversations/s of `tokenize_conversations` (transforms/chat.py).

Run from the project root:

  .venv/bin/python benchmarks/chat_benchmark.py
  .venv/bin/python benchmarks/chat_benchmark.py --input ../shared/data/bfcl_tool_calls.jsonl
  .venv/bin/python benchmarks/chat_benchmark.py --chat_rows per_turn --repeat 5

Input: chat records, one a line (default ../shared/data/gsm8k_chat.jsonl),
parsed once, untimed. Timed: every conversation through
`tokenize_conversations` in slices of --slice records, as the pipeline's
tokenizing step calls it, on one thread, with the embedded Qwen template
and fastokens encoding (`encode_batch`), train_on assistant, no
truncation. The best of --repeat rounds is reported, in wall and CPU
seconds (the machine may be shared: the load average is printed), next to
`apply_chat_template` alone (one render per conversation; a row takes one
more per learned message, for its generation prompt, and one per field
that must be in the row, tools or tool calls, to see that it is).
"""

import argparse
import json
import os
import time

import fastokens

from sftbeam.transforms import chat, chat_records
from sftbeam.transforms.tokenizer_source import (EMBEDDED,
                                                 embedded_tokenizer_dir,
                                                 load_tokenizer)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_INPUT = os.path.join(os.path.dirname(ROOT), 'shared', 'data',
                             'gsm8k_chat.jsonl')


def read_conversations(path):
  with open(path, encoding='utf-8') as lines:
    return [chat_records.parse_conversation(json.loads(line))
            for line in lines]


def fastokens_encode():
  fast = fastokens.Tokenizer.from_file(
      os.path.join(embedded_tokenizer_dir(), 'tokenizer.json'))

  def encode(texts, split_special_tokens):
    return [encoding.ids for encoding in fast.encode_batch(
        texts, add_special_tokens=False,
        split_special_tokens=split_special_tokens)]
  return encode


def best_of(repeat, work):
  """(wall seconds, CPU seconds) of the fastest of `repeat` runs of work()."""
  timings = []
  for _ in range(repeat):
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    timings.append((time.perf_counter() - wall, time.process_time() - cpu))
  return min(timings)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input', default=DEFAULT_INPUT)
  parser.add_argument('--slice', type=int, default=512,
                      help='conversations per tokenize_conversations call')
  parser.add_argument('--repeat', type=int, default=3)
  parser.add_argument('--chat_rows', choices=('whole', 'per_turn'),
                      default='whole')
  args = parser.parse_args()

  conversations = read_conversations(args.input)
  tokenizer = load_tokenizer(EMBEDDED)
  renderer = chat.renderer_for(tokenizer)
  encode = fastokens_encode()
  settings = chat.ChatSettings(chat_rows=args.chat_rows, max_seq_len=1 << 20)
  slices = [conversations[start:start + args.slice]
            for start in range(0, len(conversations), args.slice)]

  def tokenize_all():
    for conversation_slice in slices:
      outcome = chat.tokenize_conversations(
          conversation_slice, renderer=renderer, encode=encode,
          settings=settings)
      assert not outcome.rejected, outcome.rejected[0]

  def render_all():
    for conversation in conversations:
      tokenizer.apply_chat_template(list(conversation.messages),
                                    tools=conversation.tools, tokenize=False)

  load = os.getloadavg()[0]
  count = len(conversations)
  messages = sum(len(c.messages) for c in conversations)
  print(f'{count} conversations ({messages} messages) from {args.input}; '
        f'{args.chat_rows} rows; slices of {args.slice}; best of '
        f'{args.repeat}; load {load:.2f} on {os.cpu_count()} cores')
  for name, work in (('tokenize_conversations', tokenize_all),
                     ('apply_chat_template only', render_all)):
    wall, cpu = best_of(args.repeat, work)
    print(f'{name:26} {count / wall:8.0f} conversations/s '
          f'({wall:.2f} s wall, {count / cpu:.0f} per CPU second)')


if __name__ == '__main__':
  main()
