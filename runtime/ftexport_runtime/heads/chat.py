"""Chat templates: a conversation ([{"role": ..., "content": ...}, ...]) rendered into the prompt
text a chat model was trained on, with the model's own Jinja template (the manifest's
`generation.chat_template`).

Rendered with jinja2 the way transformers' `apply_chat_template` renders it, so a bundle gives
the very prompt its model saw in training: a sandboxed `ImmutableSandboxedEnvironment` (a
template cannot reach Python internals or change the messages) with trim_blocks and
lstrip_blocks, the loopcontrols extension, a `tojson` filter that does not escape HTML, and the
`raise_exception` and `strftime_now` globals; the variables are `messages`,
`add_generation_prompt`, `tools` and `documents` (None) and the special tokens (`bos_token`,
`eos_token`). jinja2 is imported on the first render only, never by `import ftexport_runtime`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..errors import BundleError, FtexportError, PredictError, check_unicode


def check_messages(messages: Any, where: str = "chat()") -> list[dict[str, Any]]:
    """A conversation as plain dicts, or a one-line PredictError naming the bad message."""
    shape = "a non-empty list of {'role': ..., 'content': ...} messages"
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, (list, tuple)):
        raise PredictError(f"{where} takes {shape}, got {type(messages).__name__}")
    if not messages:
        raise PredictError(f"{where} got an empty conversation; pass {shape}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise PredictError(f"{where}: message #{i} is a {type(m).__name__}, not a {{'role': ..., 'content': ...}} mapping")
        for key in ("role", "content"):
            if key not in m:
                raise PredictError(f"{where}: message #{i} has no {key!r}")
            if not isinstance(m[key], str):
                raise PredictError(f"{where}: message #{i}'s {key!r} is a {type(m[key]).__name__}, not a string")
        if not m["role"]:
            raise PredictError(f"{where}: message #{i}'s 'role' is empty (system, user or assistant)")
        check_unicode(m["content"], f"{where}: message #{i}'s content")
        out.append(dict(m))
    return out


def compile_template(source: str, where: str) -> Any:
    """The compiled template; BundleError (naming `where`) when it is not valid Jinja."""
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise FtexportError("chat templates are rendered with jinja2, which is not installed: pip install 'jinja2>=3.1'") from None

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        # transformers' filter: Jinja's own escapes HTML characters, which a prompt must not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise BundleError(
            f"{where}: generation.chat_template is not a valid Jinja template (line {e.lineno}: {e.message}); re-export it"
        ) from None


def render(template: Any, messages: list[dict[str, Any]], add_generation_prompt: bool, special_tokens: dict[str, str]) -> str:
    """The prompt text of a conversation; a template's refusal (raise_exception, a missing key)
    becomes a one-line PredictError."""
    try:
        return str(
            template.render(messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **special_tokens)
        )
    except Exception as e:  # noqa: BLE001  # jinja2's TemplateError, or a TypeError inside the template
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise PredictError(f"chat(): the model's chat template refused these messages ({first})") from None
