"""A tiny stand-in tokenizer for unit tests of the arithmetic only.

Each whitespace-separated word `wN` is token id N, so a test can write the
spec's tables literally: "w10 w20 w30 w40" -> [10, 20, 30, 40]. The
end-to-end tests never use it.
"""


class WordIdTokenizer:
  def __init__(self, pad_token_id=0, eos_token_id=None, bos_token_id=None):
    self.pad_token_id = pad_token_id
    self.eos_token_id = eos_token_id
    self.bos_token_id = bos_token_id

  def _ids(self, text, add_special_tokens):
    ids = [int(word[1:]) for word in text.split()]
    if add_special_tokens and self.bos_token_id is not None:
      ids = [self.bos_token_id] + ids
    return ids

  def __call__(self, texts, add_special_tokens=True):
    return {'input_ids': [self._ids(text, add_special_tokens)
                          for text in texts]}
