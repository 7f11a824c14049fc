"""Building TokenChunks for tests from plain id lists."""

from sftbeam.transforms.records import TokenChunk


def pairs_chunk(prompt_ids, output_ids, example_ids=None):
  """A TokenChunk of records given as prompt and output id lists: prompt
  tokens then output tokens, the output tokens supervised."""
  example_ids = example_ids or [f'r{index}' for index in range(len(prompt_ids))]
  return TokenChunk.from_sequences(
      example_ids,
      [list(prompt) + list(output) for prompt, output in zip(prompt_ids,
                                                             output_ids)],
      [[False] * len(prompt) + [True] * len(output)
       for prompt, output in zip(prompt_ids, output_ids)])
