"""`sftbeam inspect`: one row, position by position, as the spec shows it.

  sftbeam inspect OUTPUT_DIR --id ID            the row holding example ID
  sftbeam inspect OUTPUT_DIR --batch N --row I  row I of batch N (batches
                                                counted over the shards in
                                                dataset_info.json's order)
  sftbeam inspect --prompt TEXT --output TEXT [--tokenizer NAME]
  sftbeam inspect --messages JSON [--tokenizer NAME]   a conversation

One line per position: the input token and the label token (id and text),
the response mask (T where the label is an output token, so where the loss
counts) and, in packed rows, the segment. Token texts show whitespace and
special tokens: a space as `␣`, `\\n`, `\\t`, other control characters
escaped, bytes of an incomplete UTF-8 character as `<0xE4>`, special tokens
such as `<|im_end|>` as they are. A row's padding tail is one line.
"""

import argparse
import json

import numpy as np

from sftbeam.pipeline import readers
from sftbeam.pipeline.options import ConfigError
from sftbeam.transforms import chat, chat_records, example_codec, schema
from sftbeam.transforms.chat_rows import CHAT_ROWS, TRAIN_ON
from sftbeam.transforms.lines_to_batches import chat_template_text
from sftbeam.transforms.spec_arithmetic import (SPECIAL_TOKEN_MODES,
                                                tokenize_prompt_and_output)
from sftbeam.transforms.tokenizer_backend import HfEncoder, segment_encode
from sftbeam.transforms.tokenizer_source import (EMBEDDED, TokenizerNotFound,
                                                 load_tokenizer)

_ESCAPES = {' ': '␣', '\n': '\\n', '\t': '\\t', '\r': '\\r'}
_TEXT_WIDTH = 24


def add_parser(commands):
  """Adds the `inspect` subcommand to the CLI's subparsers."""
  parser = commands.add_parser(
      'inspect', help='show one row position by position',
      description=__doc__.split('\n\n')[0])
  parser.add_argument('output_dir', nargs='?',
                      help='a finished run (with --id, or --batch and --row)')
  parser.add_argument('--id', help='the example id whose row to show')
  parser.add_argument('--batch', type=int, help='batch number, from 0')
  parser.add_argument('--row', type=int, help='row of that batch, from 0')
  parser.add_argument('--prompt', help='tokenize this prompt (no run needed)')
  parser.add_argument('--output', help='... and this output')
  parser.add_argument('--tokenizer', help='default: the run\'s tokenizer, '
                      f'or {EMBEDDED} with --prompt')
  parser.add_argument('--append_eos', action='store_true',
                      help='with --prompt: append eos to the output')
  parser.add_argument('--messages',
                      help='a conversation as JSON: a list of messages, or a '
                      'chat record ({"messages": [...]} or {"prompt": [...], '
                      '"completion": [...]}, with "tools" and '
                      '"chat_template_kwargs" if it has them)')
  parser.add_argument('--special_tokens_in_text', choices=SPECIAL_TOKEN_MODES,
                      default='special', help='with --prompt or --messages')
  parser.add_argument('--chat_template', default='',
                      help='with --messages: a Jinja template file')
  parser.add_argument('--chat_template_kwargs', type=_json_object,
                      default={}, help='with --messages: template variables '
                      'as a JSON object (the record\'s own override them)')
  parser.add_argument('--train_on', choices=TRAIN_ON,
                      default='assistant', help='with --messages')
  parser.add_argument('--chat_rows', choices=CHAT_ROWS, default='whole',
                      help='with --messages: one row, or one per learned '
                      'turn')
  parser.set_defaults(handler=run)


def _byte_decoder() -> dict:
  """GPT-2 byte-level BPE's printable stand-in character -> its byte."""
  printable = (list(range(ord('!'), ord('~') + 1)) +
               list(range(ord('¡'), ord('¬') + 1)) +
               list(range(ord('®'), ord('ÿ') + 1)))
  stand_ins = dict(zip(printable, printable))
  extra = 0
  for byte in range(256):
    if byte not in stand_ins:
      stand_ins[byte] = 256 + extra
      extra += 1
  return {chr(stand_in): byte for byte, stand_in in stand_ins.items()}


_BYTE_DECODER = _byte_decoder()


def visible(text: str) -> str:
  """`text` with whitespace and control characters made visible."""
  return ''.join(_ESCAPES.get(char) or (
      f'\\x{ord(char):02x}' if not char.isprintable() else char)
                 for char in text)


def token_texts(tokenizer, ids) -> list:
  """A visible text per token id (one batched decode for the row)."""
  ids = [int(token_id) for token_id in ids]
  texts = tokenizer.batch_decode([[token_id] for token_id in ids],
                                 skip_special_tokens=False,
                                 clean_up_tokenization_spaces=False)
  shown = []
  for token_id, text in zip(ids, texts):
    if '\ufffd' in text:  # part of a UTF-8 character: show its bytes
      piece = tokenizer.convert_ids_to_tokens(token_id) or ''
      if piece and all(char in _BYTE_DECODER for char in piece):
        text = ''.join(f'<0x{_BYTE_DECODER[char]:02X}>' for char in piece)
    shown.append(visible(text))
  return shown


def _cell(token_id: int, text: str) -> str:
  if len(text) > _TEXT_WIDTH:
    text = text[:_TEXT_WIDTH - 1] + '…'
  return f'{token_id:>7} {text:<{_TEXT_WIDTH}}'


def format_row(tokenizer, input_ids, labels, mask, segments=None,
               shown=None) -> list:
  """The lines for one row: a header, then a line per position.

  The first `shown` positions get a line each (default: all); the rest,
  where input and label are both padding, one line.
  """
  shown = len(input_ids) if shown is None else min(shown, len(input_ids))
  inputs = token_texts(tokenizer, input_ids[:shown])
  targets = token_texts(tokenizer, labels[:shown])
  segment_header = '  segment' if segments is not None else ''
  lines = [f'{"pos":>5}  {"input":<{_TEXT_WIDTH + 8}}'
           f'{"label":<{_TEXT_WIDTH + 8}}mask{segment_header}']
  first_output = True
  for position in range(shown):
    line = (f'{position:>5}  {_cell(input_ids[position], inputs[position])}'
            f'{_cell(labels[position], targets[position])}'
            f'{"T" if mask[position] else "F":>4}')
    if segments is not None:
      line += f'{segments[position]:>9}'
    if mask[position] and first_output:
      line += '   <- first output token predicted'
      first_output = False
    lines.append(line)
  if shown < len(input_ids):
    pad_id = int(input_ids[shown])
    pad_text = token_texts(tokenizer, [pad_id])[0]
    lines.append(f'{shown:>5}..{len(input_ids) - 1}: padding '
                 f'({pad_id} {pad_text} in input and label, mask F)')
  return lines


def _record_lines(args) -> list:
  """inspect --prompt/--output: the row of that one record."""
  tokenizer = _load(args.tokenizer or EMBEDDED)
  arrays = tokenize_prompt_and_output(
      [args.prompt], [args.output], tokenizer, append_eos=args.append_eos,
      special_tokens_in_text=args.special_tokens_in_text,
      tokenizer_backend='hf')
  mask = arrays['response_mask'][0]
  output_length = int(mask.sum())
  prompt_length = int(np.argmax(mask)) + 1 if output_length else (
      mask.size + 1)
  header = (f'prompt {prompt_length} tokens, output {output_length} tokens '
            f'({args.tokenizer or EMBEDDED})')
  return [header] + format_row(tokenizer, arrays['input_ids'][0],
                               arrays['labels'][0], mask)


def _json_object(text: str) -> dict:
  value = json.loads(text)
  if not isinstance(value, dict):
    raise ValueError('not a JSON object')
  return value


def _conversation(text: str) -> chat_records.Conversation:
  try:
    value = json.loads(text)
  except ValueError as error:
    raise ConfigError(f'--messages is not JSON: {error}') from None
  if not isinstance(value, (list, dict)):
    raise ConfigError('--messages: a JSON array of messages or a chat record '
                      f'object, not {chat_records.json_type(value)}')
  try:
    return chat_records.parse_conversation(
        {'messages': value} if isinstance(value, list) else value)
  except chat_records.ChatRejected as rejected:
    raise ConfigError(f'--messages would be rejected ({rejected.reason}): '
                      f'{rejected}') from None


def _conversation_lines(args) -> list:
  """inspect --messages: the rows of that one conversation."""
  tokenizer = _load(args.tokenizer or EMBEDDED)
  try:
    renderer = chat.renderer_for(tokenizer,
                                 chat_template_text(args.chat_template),
                                 args.chat_template_kwargs)
  except ValueError as error:
    raise ConfigError(f'--messages: {error}') from None
  outcome = chat.tokenize_conversations(
      [_conversation(args.messages)], renderer=renderer,
      encode=segment_encode(HfEncoder(tokenizer)),
      settings=chat.ChatSettings(args.special_tokens_in_text, args.train_on,
                                 args.chat_rows, 1 << 30, 'none'))
  for _, why in outcome.rejected:
    raise ConfigError(f'--messages would be rejected ({why.reason}): {why}')
  stats = outcome.stats
  lines = [f'conversation: {len(outcome.rows)} row(s), '
           f'{stats["assistant_turns"]} assistant turn(s) learned, '
           f'{stats["tool_calls_learned"]} tool call(s), '
           f'{stats["reasoning_turns_learned"]} with reasoning '
           f'({args.tokenizer or EMBEDDED})']
  for row in outcome.rows:
    first = row.supervised.index(True)
    lines.append(f'row{row.suffix or ""}: {len(row.ids)} tokens, learned '
                 f'from token {first} on')
    lines += format_row(tokenizer, np.array(row.ids[:-1]),
                        np.array(row.ids[1:]), np.array(row.supervised[1:]))
  return lines


def _load(name: str):
  try:
    return load_tokenizer(name)
  except TokenizerNotFound as error:
    raise ConfigError(f'{error} (pass --tokenizer)') from None


def _batches(output_dir: str):
  """(shard name, batch number, Example bytes) in dataset_info.json's
  order."""
  number = 0
  for shard in readers.verified_shards(output_dir):
    for record in readers.shard_records(shard):
      yield shard.name, number, record
      number += 1


def find_row(output_dir: str, example_id=None, batch=None, row=None):
  """(shard name, batch number, decoded batch, row) holding example_id, or
  row `row` of batch `batch`."""
  batches = 0
  for shard_name, number, record in _batches(output_dir):
    batches += 1
    if example_id is not None:
      ids = example_codec.decode_batch(record,
                                       names=(schema.ID_FEATURE,))
      if example_id not in ids[schema.ID_FEATURE]:
        continue
      decoded = readers.numpy_batch(record)
      index = decoded[schema.ID_FEATURE].index(example_id)
      if 'examples_per_row' in decoded:  # packed: the row holding example
        index = int(np.repeat(np.arange(decoded['input_ids'].shape[0]),
                              decoded['examples_per_row'])[index])
      return shard_name, number, decoded, index
    if number == batch:
      decoded = readers.numpy_batch(record)
      rows = decoded['input_ids'].shape[0]
      if not 0 <= row < rows:
        raise ConfigError(f'batch {batch} has rows 0..{rows - 1}, not {row}')
      return shard_name, number, decoded, row
  if example_id is not None:
    raise ConfigError(f'no example with id {example_id!r} in {output_dir}')
  raise ConfigError(f'{output_dir} has {batches} batches; there is no batch '
                    f'{batch}')


def _row_examples(batch: dict, row: int):
  """(ids, prompt lengths, output lengths) of the examples in a row."""
  per_row = batch.get('examples_per_row')
  if per_row is None:
    return ([batch[schema.ID_FEATURE][row]], [batch['prompt_lengths'][row]],
            [batch['output_lengths'][row]])
  first = int(per_row[:row].sum())
  examples = slice(first, first + int(per_row[row]))
  return (batch[schema.ID_FEATURE][examples], batch['prompt_lengths'][examples],
          batch['output_lengths'][examples])


def _output_dir_lines(args) -> list:
  """inspect OUTPUT_DIR: the row named by --id or --batch/--row."""
  try:
    info = readers.load_dataset_info(args.output_dir)
    shard_name, number, batch, row = find_row(args.output_dir, args.id,
                                              args.batch, args.row)
  except readers.IncompleteOutput as error:
    raise ConfigError(str(error)) from None
  tokenizer = _load(args.tokenizer or info['tokenizer']['name'])
  ids, prompt_lengths, output_lengths = _row_examples(batch, row)
  # Labels are real for prompt + output - 1 positions; the input one more
  # (the last token, whose label is padding), as in the spec.
  shown = int(sum(p + o - 1 for p, o in zip(prompt_lengths,
                                            output_lengths))) + 1
  rows, width = batch['input_ids'].shape
  lines = [f'batch {number} (shard {shard_name}), row {row} of {rows}, '
           f'width {width}']
  lines += [f'example {example_id}: prompt {p} tokens, output {o} tokens'
            for example_id, p, o in zip(ids, prompt_lengths, output_lengths)]
  segments = batch['segment_ids'][row] if 'segment_ids' in batch else None
  return lines + format_row(
      tokenizer, batch['input_ids'][row], batch['labels'][row],
      batch['response_mask'][row], segments, shown)


def run(args: argparse.Namespace) -> int:
  """The `inspect` command: prints the row; gives the exit code."""
  if args.messages is not None:
    if args.output_dir or args.prompt is not None or args.output is not None:
      raise ConfigError('inspect --messages JSON takes no OUTPUT_DIR, '
                        '--prompt or --output')
    lines = _conversation_lines(args)
  elif args.prompt is not None or args.output is not None:
    if args.prompt is None or args.output is None or args.output_dir:
      raise ConfigError('inspect --prompt TEXT --output TEXT takes no '
                        'OUTPUT_DIR and needs both texts')
    lines = _record_lines(args)
  else:
    if not args.output_dir or (args.id is None) == (args.batch is None) or (
        (args.batch is None) != (args.row is None)):
      raise ConfigError('inspect needs OUTPUT_DIR with --id ID or with '
                        '--batch N --row I (or --prompt and --output)')
    lines = _output_dir_lines(args)
  print('\n'.join(lines))
  return 0
