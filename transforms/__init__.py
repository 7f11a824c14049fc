"""sftbeam's DoFns and PTransforms, one concern a module.

The spec's function is public here:
  from transforms import tokenize_prompt_and_output
"""

from transforms.sft import tokenize_prompt_and_output

__all__ = ['tokenize_prompt_and_output']
