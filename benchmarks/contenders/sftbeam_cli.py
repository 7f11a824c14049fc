"""sftbeam and its variants: the real CLI, each in its own process.

  sftbeam         `sftbeam run --input ... --output ... --overwrite` with
                  the default config and runner. Timed: the pipeline's own
                  "wall time" summary line (records in -> shards and
                  dataset_info.json written); the process wall time, which
                  adds interpreter start, imports and the config checks, is
                  shown too. The default local runner works on every core
                  for input of 160 MiB or more, in one process below.
  sftbeam-1w      the CLI with --workers 1: every step in its one process,
                  on any input.
  sftbeam-hf      the CLI with --tokenizer_backend hf: HuggingFace's encoder,
                  sftbeam's fallback backend.
  sftbeam-packed  the CLI with --layout packed --pack_length 2048; its pad
                  eff is the packing efficiency (dataset_info.json's
                  real / stored tokens, as for every sftbeam contender).
  sftbeam-chat    the CLI with the default options on the chat input. Its
                  records are conversations (2 to 6 messages) and its tokens
                  every row's L, so it has no "x raw".
"""

import json
import os
import re
import sys

import measure

SFTBEAM = os.path.join(os.path.dirname(sys.executable), 'sftbeam')
# The CLI arguments each variant adds to the default run.
VARIANTS = {'sftbeam': (), 'sftbeam-1w': ('--workers', '1'),
            'sftbeam-hf': ('--tokenizer_backend', 'hf'),
            'sftbeam-packed': ('--layout', 'packed', '--pack_length', '2048'),
            'sftbeam-chat': ()}


def run(input_path, workdir, name='sftbeam', options=()):
  """The real CLI, default config but `options` (CLI arguments); timed by
  its own summary's wall time."""
  log_prefix = measure.log_path_prefix(workdir, name)
  out_dir = measure.fresh_dir(os.path.join(workdir, f'out-{name}'))
  command = [SFTBEAM, 'run', '--input', input_path, '--output', out_dir,
             '--overwrite', *options]
  measured = measure.run_measured(command, measure.BASE_ENV, log_prefix)
  if measured.exit_code:
    return measure.failure(name, measured.exit_code, log_prefix)
  with open(log_prefix + '.stdout', encoding='utf-8') as handle:
    wall = re.search(r'^wall time\s+([\d.]+) s', handle.read(), re.MULTILINE)
  with open(os.path.join(out_dir, 'dataset_info.json'),
            encoding='utf-8') as handle:
    counts = json.load(handle)['counts']
  return measure.make_row(name, measured, float(wall.group(1)), {
      'records': counts['records_in'],
      'records_written': counts['records_written'],
      'real_tokens': counts['real_tokens'],
      'stored_tokens': counts['stored_tokens']}, out_dir)
