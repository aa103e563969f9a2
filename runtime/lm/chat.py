"""Chat templates: the model's Jinja template rendered in a sandbox (as transformers does, tighter).

A chat template is code that ships with a model. It is rendered in jinja2's
`ImmutableSandboxedEnvironment` (no attribute starting with `_`, no mutating methods on lists and
dicts, bounded `range`), with the helpers Hugging Face templates use (`raise_exception`,
`strftime_now`, a `tojson` filter with `ensure_ascii=False`, loop controls). pocketml tightens it:

- a template naming an attribute or key that starts with `_` anywhere (`''.__class__`,
  `cycler.__init__.__globals__`, `x['__dict__']`), taken or not, is refused before rendering;
- an unsafe access found while rendering raises at once instead of rendering as an empty string;
- template text and rendered text are size-capped.

Refusals are `UnsafeInputError` (exit 4); a template's `raise_exception` (e.g. "roles must
alternate") and malformed messages are the caller's `UsageError` (exit 2).
"""
from __future__ import annotations

import json
from datetime import datetime

from ..errors import UnsafeInputError, UsageError

MAX_TEMPLATE_CHARS = 256 << 10
MAX_RENDERED_CHARS = 4 << 20
ROLES_HINT = "each message is a dict with a 'role' string and a 'content' string (or list of parts)"


class TemplateRaised(Exception):
    """`raise_exception(msg)` called by a template."""


def _raise_exception(message):
    raise TemplateRaised(str(message))


def _strftime_now(fmt):
    return datetime.now().strftime(str(fmt))


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment():
    from jinja2.exceptions import SecurityError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Strict(ImmutableSandboxedEnvironment):
        def unsafe_undefined(self, obj, attribute):      # jinja2 would return an Undefined that prints as ""
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    env = _Strict(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], autoescape=False)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _private_names(ast) -> list[str]:
    """Attribute and constant-key names starting with '_' anywhere in a parsed template."""
    from jinja2 import nodes
    found = [n.attr for n in ast.find_all(nodes.Getattr) if n.attr.startswith("_")]
    found += [n.arg.value for n in ast.find_all(nodes.Getitem)
              if isinstance(n.arg, nodes.Const) and isinstance(n.arg.value, str) and n.arg.value.startswith("_")]
    return found


class ChatTemplate:
    """A compiled chat template. `render(messages)` → the prompt text the model was trained on."""

    def __init__(self, source: str, *, bos_token: str | None = None, eos_token: str | None = None,
                 where: str = "the model's chat template"):
        from jinja2.exceptions import TemplateSyntaxError
        if not isinstance(source, str):
            raise UnsafeInputError(f"{where}: not a string ({type(source).__name__})")
        if len(source) > MAX_TEMPLATE_CHARS:
            raise UnsafeInputError(f"{where}: {len(source)} characters, over the {MAX_TEMPLATE_CHARS} cap")
        self.where, self.bos_token, self.eos_token = where, bos_token or "", eos_token or ""
        self._env = _environment()
        try:
            ast = self._env.parse(source)
        except TemplateSyntaxError as exc:
            raise UnsafeInputError(f"{where}: not a valid Jinja template (line {exc.lineno}: {exc.message})") from None
        private = _private_names(ast)
        if private:
            raise UnsafeInputError(f"{where} reaches for Python internals ({', '.join(sorted(set(private)))}): "
                                   "refused by the sandbox", names=sorted(set(private)))
        self._template = self._env.from_string(source)

    def render(self, messages, *, add_generation_prompt: bool = True, tools=None, **extra) -> str:
        from jinja2.exceptions import SecurityError, TemplateError
        _check_messages(messages)
        context = {"messages": messages, "add_generation_prompt": add_generation_prompt, "bos_token": self.bos_token,
                   "eos_token": self.eos_token, **({"tools": tools} if tools is not None else {}), **extra}
        out, size = [], 0
        try:
            for chunk in self._template.generate(**context):
                size += len(chunk)
                if size > MAX_RENDERED_CHARS:
                    raise UnsafeInputError(f"{self.where}: rendered text over {MAX_RENDERED_CHARS} characters")
                out.append(chunk)
        except TemplateRaised as exc:
            raise UsageError(f"{self.where} refused these messages: {exc}") from None
        except SecurityError as exc:
            raise UnsafeInputError(f"{self.where} was stopped by the sandbox: {exc}") from None
        except TemplateError as exc:
            raise UsageError(f"{self.where} failed on these messages: {type(exc).__name__}: {exc}") from None
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError) as exc:
            raise UsageError(f"{self.where} failed on these messages: {type(exc).__name__}: {exc}") from None
        return "".join(out)


def _check_messages(messages) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise UsageError(f"chat messages must be a non-empty list: {ROLES_HINT}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UsageError(f"chat message {i} has no 'role': {ROLES_HINT}")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise UsageError(f"chat message {i}: 'content' is a {type(content).__name__}: {ROLES_HINT}")


def no_template(model: str = "this model") -> UsageError:
    return UsageError(f"{model} has no chat template: give a plain text prompt instead of chat messages "
                      "(a base model is prompted with text to continue)")
