"""sftbeam: supervised fine-tuning batches at scale, with Apache Beam.

The public names:

  from sftbeam import tokenize_prompt_and_output   # the spec, in a notebook
  from sftbeam.readers import iter_numpy_batches   # reading a finished run
  from sftbeam.transforms import ...               # the PTransforms

`sftbeam.pipeline` holds the command line and the graph assembly. Importing
sftbeam sets no environment variables and prints nothing.
"""

from sftbeam.transforms.sft import tokenize_prompt_and_output
from sftbeam.version import VERSION as __version__

__all__ = ['tokenize_prompt_and_output', '__version__']
