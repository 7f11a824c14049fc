"""sftbeam: supervised fine-tuning batches at scale, with Apache Beam.

The public names:

  from sftbeam import tokenize_prompt_and_output   # the spec, in a notebook
  from sftbeam.readers import iter_numpy_batches   # reading a finished run
  from sftbeam.transforms import ...               # the PTransforms

`sftbeam.pipeline` holds the command line and the graph assembly. Importing
sftbeam sets no environment variables and prints nothing, and imports
nothing heavy: `tokenize_prompt_and_output` (numpy, transformers) loads on
first use, so that the `sftbeam` command (sftbeam/console.py) catches a
Ctrl-C from its first moments.
"""

from sftbeam.version import VERSION as __version__

__all__ = ['tokenize_prompt_and_output', '__version__']


def __getattr__(name: str):
  """The public names that load on first use (PEP 562)."""
  if name == 'tokenize_prompt_and_output':
    # pylint: disable=import-outside-toplevel
    from sftbeam.transforms.spec_arithmetic import tokenize_prompt_and_output
    return tokenize_prompt_and_output
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
