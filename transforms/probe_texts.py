"""Texts that tell whether two tokenizer backends encode alike.

`tokenizer_backend: auto` encodes these with both backends before trusting
the fast one (see transforms/tokenizer_backend.py). They cover what
tokenizers get wrong most often: many scripts, code, whitespace runs,
digits, emoji sequences, combining marks, control characters, special-token
strings, and long texts. Built here, not read from a file, so the package
ships them without package data.
"""

import itertools

_SCRIPTS = (
    'The quick brown fox jumps over the lazy dog.',
    'Ça va? Déjà vu, naïve façade, coöperate, Smørrebrød, Straße, İstanbul.',
    'Γειά σου Κόσμε· ἀρχὴ ἥμισυ παντός.',
    'Съешь же ещё этих мягких французских булок, да выпей чаю.',
    'مرحبا بالعالم، كيف حالك اليوم؟ ١٢٣٤٥',
    'שלום עולם! מה שלומך היום?',
    'नमस्ते दुनिया, आप कैसे हैं? क्षत्रिय ज्ञान',
    'สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ',
    '你好，世界！我们今天学习分词。繁體中文：臺灣。',
    'こんにちは世界。カタカナとひらがなと漢字を混ぜる。ｶﾀｶﾅ半角。',
    '안녕하세요 세계! 한국어 형태소 분석.',
    'გამარჯობა მსოფლიო', 'Բարեւ աշխարհ', 'ሰላም ለዓለም',
    'வணக்கம் உலகம்', 'ওহে বিশ্ব', 'Xin chào thế giới, tiếng Việt có dấu.',
    'Witaj świecie, zażółć gęślą jaźń.', 'Ahoj světe, příliš žluťoučký kůň.',
    'Sveika, pasaule! Ēģiptes ķēniņš.', 'Merhaba dünya, ığüşöç.',
    '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 𝒮𝒸𝓇𝒾𝓅𝓉 ∑∫∂√∞≠≤≥ ℵ₀ x²+y³',
    'English with عربي and עברית inside, then 中文 and back.',
)

_CODE = (
    'def add(a, b):\n    """Adds."""\n    return a + b\n',
    'for (let i = 0; i < n; i++) { console.log(`i=${i}`); }',
    '{"key": [1, 2.5e-3, null, true], "nested": {"a": "b\\n"}}',
    'SELECT id, COUNT(*) FROM t WHERE x >= 10 GROUP BY id;',
    '<div class="a"><p>Hello &amp; bye</p></div>',
    r'^(?:[a-z0-9!#$%&\'*+/=?^_`{|}~-]+)@\w+\.[a-z]{2,}$',
    'grep -rn "foo" . | awk -F: \'{print $1}\' && echo $?',
    '#include <stdio.h>\nint main(void) { return 0; }\n',
    'fn main() -> Result<(), Box<dyn Error>> { Ok(()) }',
    '    \tindented\t\tcode  with   odd    spacing    ',
)

_WHITESPACE = tuple(' ' * n for n in (1, 2, 3, 4, 7, 8, 15, 16, 31, 64)) + (
    '\t', '\t\t\t', '\n', '\n\n', '\n\n\n\n', '\r\n', '\r\n\r\n', ' \n \n ',
    'a\u00a0b\u00a0\u00a0c', '\u3000全角\u3000スペース', 'a\u2009b\u200bc\ufeffd',
    'trailing spaces   ', '   leading spaces', 'mixed \t \n \r\n end',
)

_DIGITS = (
    '0', '7', '42', '123', '1234', '12345', '123456789012345678901234567890',
    '3.14159265358979', '-0.001', '1,234,567.89', '1e10', '+1 (555) 123-4567',
    '2024-01-31T12:34:56Z', 'v1.2.3-rc.4', '0x1F4A9', '١٢٣ ٤٥٦', '①②③',
    'Version 10.0.19045.3803 build 22H2', '$1,000,000 and €2.50 and ¥300',
)

_EMOJI = (
    '😀', '👍🏽', '👨\u200d👩\u200d👧\u200d👦', '🏳️\u200d🌈', '🇯🇵🇺🇸🇪🇺', '1️⃣#️⃣',
    'I ❤️ tokenizers 🤖✨', '🧑🏿\u200d💻 writes code', '☕️🍕🎉🎂', '👩‍❤️‍💋‍👨',
)

_COMBINING = (
    'e\u0301', 'a\u0308o\u0308u\u0308', 'n\u0303', 'Z\u0351\u036b\u0343\u036a'
    'a\u0310\u0357\u0358l\u0350g\u0352o\u036e', 'क्\u200dष', 'ﬁﬂ ligatures',
    'Å vs A\u030a', 'ḱṷṓn', '\u0915\u093f\u0924\u093e\u092c',
)

_CONTROL = ('\x00', 'a\x00b', '\x1b[31mred\x1b[0m', '\x07\x08\x0b\x0c',
            '\u2028line\u2029para', '\ufffd', '\u200e\u200f')


def _special_token_texts(special_tokens):
  """Special-token strings alone, adjacent, inside words, and cut short."""
  texts = []
  for token in special_tokens:
    texts += [token, f'a{token}b', f' {token} ', f'{token}{token}',
              f'text\n{token}\nmore', token[:-1], token[1:]]
  if len(special_tokens) >= 2:
    texts.append(''.join(special_tokens))
    texts.append(' '.join(special_tokens))
  return texts


def _long_texts():
  return [
      'word ' * 2000,
      'The quick brown fox, twice over. ' * 500,
      '1234567890' * 600,
      'a' * 10000,
      'x' * 3000 + ' ' * 3000 + 'y' * 3000,
      '日本語のテキスト' * 800,
      '🙂' * 2000,
      ('def f(x):\n    return x\n' * 300),
  ]


def probe_texts(special_tokens=()) -> list:
  """A few hundred texts on which two backends must give the same ids.

  `special_tokens`: the tokenizer's special-token strings (`<|im_end|>`...),
  probed alone and inside other text.
  """
  short = _SCRIPTS + _CODE + _WHITESPACE + _DIGITS + _EMOJI + _COMBINING + (
      _CONTROL)
  # Pairs of different kinds joined, as texts mix them: scripts next to
  # digits, emoji against code, whitespace between anything.
  pairs = [a + b for a, b in itertools.islice(
      itertools.product(_SCRIPTS + _EMOJI, _DIGITS + _WHITESPACE + _CODE),
      0, None, 7)]
  return (list(short) + pairs + _special_token_texts(list(special_tokens)) +
          _long_texts() + [''])
