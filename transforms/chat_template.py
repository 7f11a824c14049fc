"""Rendering conversations with a chat template, as HuggingFace does, with
a bound on each render's time and size.

`ChatTemplate(source, variables)` compiles a Jinja chat template once and
renders exactly what `tokenizer.apply_chat_template(messages, tools=tools,
add_generation_prompt=..., tokenize=False, **kwargs)` renders in
transformers 5.23 (tests/test_chat_template.py compares them on real
data): the same sandboxed Jinja environment, filters and globals, message
keys whose value is null dropped, reasoning under any of its three names
seen under all three, and the tokenizer's special tokens (`eos_token`,
...) as template variables.

What HuggingFace does not do: a render that runs longer than
`max_seconds` or writes more than `max_chars` characters raises
RenderLimit (the record is rejected, the run goes on), so a template that
loops for ever, or multiplies a string by 10**9, costs one record, not
the run. Time is checked at every call, intercepted
operator and output chunk; `range` has a budget per render on top of the
sandbox's own cap per call.
"""

import datetime
import json
import threading
import time
from typing import Dict, List, Optional

import jinja2
import jinja2.ext
from jinja2 import sandbox

# Names a message's reasoning goes by; the template sees it under all.
REASONING_FIELDS = ('reasoning_content', 'thinking', 'reasoning')
# Elements all `range()` calls of one render may yield together.
_RANGE_BUDGET = 1_000_000


class RenderLimit(Exception):
  """A render ran longer, or wrote more, than its bounds allow."""


class _Generation(jinja2.ext.Extension):
  """Accepts `{% generation %}...{% endgeneration %}` (HuggingFace's
  assistant-mask tags) and renders the body unchanged."""
  tags = {'generation'}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(['name:endgeneration'], drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method('_body'), [], [],
                                  body).set_lineno(lineno)

  def _body(self, caller):
    return caller()


class _Budget:
  """The deadline and budgets of the render under way."""

  def __init__(self, max_seconds: float, max_chars: int):
    self.deadline = time.monotonic() + max_seconds
    self.max_seconds = max_seconds
    self.max_chars = max_chars
    self.range_left = _RANGE_BUDGET

  def check_time(self):
    if time.monotonic() > self.deadline:
      raise RenderLimit(f'the chat template ran longer than '
                        f'{self.max_seconds:g} s on this conversation')

  def check_product(self, left, right):
    """Refuses `sequence * n` before it is built when it is too long."""
    for sequence, times in ((left, right), (right, left)):
      if isinstance(sequence, (str, list, tuple)) and isinstance(times, int):
        self.check_size(len(sequence) * times)

  def check_size(self, chars: int):
    if chars > self.max_chars:
      raise RenderLimit(f'the chat template wrote more than '
                        f'{self.max_chars:,} characters for this '
                        'conversation')


class _BoundedEnvironment(sandbox.ImmutableSandboxedEnvironment):
  """HuggingFace's chat-template sandbox, with the render's budget
  checked at every call and every `*` and `**`, and the size of what each
  `+` builds. The budget is per thread: one compiled template serves all
  of a process's threads."""
  intercepted_binops = frozenset(['*', '+', '**'])

  def __init__(self, **options):
    super().__init__(**options)
    self.local = threading.local()

  def call(__self, __context, __obj, *args, **kwargs):  # pylint: disable=no-self-argument
    budget = getattr(__self.local, 'budget', None)
    if budget is not None:
      budget.check_time()
    return super().call(__context, __obj, *args, **kwargs)

  def call_binop(self, context, operator, left, right):
    budget = getattr(self.local, 'budget', None)
    if budget is not None and operator != '+':
      budget.check_time()
      if operator == '*':
        budget.check_product(left, right)
      elif isinstance(right, int) and right > 4096:  # '**'
        raise RenderLimit(f'the chat template raised a number to the '
                          f'power {right}')
    result = self.binop_table[operator](left, right)
    if budget is not None and isinstance(result, str) and len(
        result) > budget.max_chars:
      budget.check_size(len(result))
    return result


def _tojson(value, ensure_ascii=False, indent=None, separators=None,
            sort_keys=False):
  # HuggingFace's: no HTML escaping, and these options.
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                    separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def _strftime_now(format_string):
  return datetime.datetime.now().strftime(format_string)


class _TemplateDict:
  """`dict(...)` for templates, as HuggingFace gives it."""

  def __call__(self, *args, **kwargs):
    return dict(*args, **kwargs)

  def fromkeys(self, *args, **kwargs):
    return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
  """`namespace(...)` refusing underscore attributes, as HuggingFace's."""

  def __init__(*args, **kwargs):  # pylint: disable=no-method-argument
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _Namespace._check_name(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name, value):
    _Namespace._check_name(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check_name(name):
    if isinstance(name, str) and name.startswith('_'):
      raise jinja2.exceptions.SecurityError(
          'chat templates cannot store underscore-prefixed attributes on a '
          f'namespace, but got {name!r}')


def template_messages(messages) -> List[dict]:
  """The messages as HuggingFace hands them to a template: keys whose
  value is null dropped, and reasoning under all of REASONING_FIELDS."""
  prepared = []
  for message in messages:
    message = {key: value for key, value in message.items()
               if value is not None}
    reasoning = next((message[key] for key in REASONING_FIELDS
                      if key in message), None)
    if reasoning is not None:
      message = {'thinking': reasoning, **message,
                 'reasoning_content': reasoning}
    prepared.append(message)
  return prepared


class ChatTemplate:
  """A compiled chat template; renders conversations within bounds.

  Args:
    source: the Jinja text (a syntax error raises TemplateSyntaxError).
    variables: what every render sees besides the conversation: the
      tokenizer's special tokens map (`eos_token`, ...).
    max_seconds, max_chars: the bounds of one render.
  """

  def __init__(self, source: str, variables: Dict[str, object], *,
               max_seconds: float = 5.0, max_chars: int = 64 << 20):
    self.source = source
    self.max_seconds = max_seconds
    self.max_chars = max_chars
    self._variables = dict(variables)
    self._environment = _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_Generation, jinja2.ext.loopcontrols])
    self._environment.filters['tojson'] = _tojson
    self._environment.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now,
        dict=_TemplateDict(), namespace=_Namespace, range=self._range)
    self._template = self._environment.from_string(source)

  def _range(self, *args):
    budget = getattr(self._environment.local, 'budget', None)
    values = sandbox.safe_range(*args)
    if budget is not None:
      budget.range_left -= len(values)
      if budget.range_left < 0:
        raise RenderLimit(f'the chat template iterated over more than '
                          f'{_RANGE_BUDGET:,} numbers')
    return values

  def render(self, messages, tools: Optional[list] = None,
             template_kwargs: Optional[dict] = None,
             add_generation_prompt: bool = False) -> str:
    """The text of `messages` (dicts; not modified) as the template
    writes it. Raises RenderLimit past the bounds; whatever the template
    raises (TemplateError from `raise_exception`, a TypeError...) passes
    through."""
    context = {**self._variables, **(template_kwargs or {}),
               'messages': template_messages(messages), 'tools': tools,
               'documents': None,
               'add_generation_prompt': add_generation_prompt}
    budget = _Budget(self.max_seconds, self.max_chars)
    self._environment.local.budget = budget
    try:
      chunks, size = [], 0
      for chunk in self._template.generate(**context):
        size += len(chunk)
        budget.check_size(size)
        budget.check_time()
        chunks.append(chunk)
      return ''.join(chunks)
    finally:
      self._environment.local.budget = None
