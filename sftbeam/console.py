"""The `sftbeam` command's entry point: Ctrl-C ends any command with one line.

Apart from pipeline/cli.py, whose imports (Beam, transformers) take
seconds: a Ctrl-C while they load is caught here too.
"""

import os
import sys

# Set for the local worker processes the command starts, which inherit it:
# transforms/tokenizer_source.py then hides PyTorch from transformers there
# as main() does here.
HIDE_TORCH_ENV = 'SFTBEAM_HIDE_TORCH'
# What a shell reports for a process ended by SIGINT (128 + 2).
INTERRUPTED_EXIT = 130


def interrupted() -> int:
  """Says on stderr that the command was interrupted; gives its exit code."""
  print('sftbeam: error: interrupted (Ctrl-C)', file=sys.stderr)
  return INTERRUPTED_EXIT


def main() -> int:
  """The `sftbeam` command: pipeline/cli.py's main() in a process of its own.

  transformers imports PyTorch whenever it is installed, seconds of
  start-up, though tokenizers never use it; neither does the command (the
  torch reader runs in the user's training process). Hidden here, not in
  cli.main(), which tests call in a process that uses PyTorch.
  """
  sys.modules.setdefault('torch', None)
  os.environ.setdefault(HIDE_TORCH_ENV, '1')
  try:
    from sftbeam.pipeline import cli  # pylint: disable=import-outside-toplevel
    return cli.main()
  except KeyboardInterrupt:
    return interrupted()
