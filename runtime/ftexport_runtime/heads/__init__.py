"""Heads: the task half of a Predictor. Each head serves one manifest `task`: it checks that
task's part of the manifest, turns model outputs into answers, and says how the task is used
from outside: its `ftexport-runtime` commands and its HTTP routes. This registry finds it; the
CLI and the server ask it, and never name a task.

A head is a class with:
    name      the manifest task it serves ("text-classification", ...)
    encoder   True when the model maps tokenizer encodings to one output (encode, run, logits)
    hint      what to call on such a bundle ("use predict()"), for one-line refusals
    does      (optional) what such a bundle does ("makes sentence embeddings"), for refusals
    command   its main ftexport-runtime command ("predict", "generate", "embed")
    commands  the Commands it adds to `ftexport-runtime` (heads.base.Command: name, help,
              arguments(parser), run(args, load)); heads may share one (classify and
              entities both offer `predict`)
    routes    the Routes `ftexport-runtime serve` answers for it (heads.base.Route: method,
              path, handle(request, api), openapi(config, info), batch, error)
    serves    True when it has routes
    serve_options  (optional) ServeOptions its routes read (`serve --NAME`)
    check_manifest(data, where) -> dict   raises BundleError on a bad task-specific field;
              returns the Manifest fields the task owns (e.g. {"generation": {...}})
    describe(manifest) -> [str]           (optional) lines `ftexport-runtime info` adds
    __init__(predictor)                    built once the predictor's engine runs
    info() -> dict                         (optional) what Predictor.metadata() adds
and the task's methods, each taking the predictor first: predict(p, texts),
predict_batch(p, texts, batch_size), format_text(text, answer) for the labelling encoders;
entities, entities_from_words, word_logits; embed; generate, chat, stream. A Predictor
method the head lacks is refused with `refusal`, which asks the head that has it
(`refuse(method, head)`) for the message.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import BundleError
from .base import Command, Route, ServeOption
from .classify import ClassifyHead
from .embed import EmbedHead
from .entities import EntitiesHead
from .generate import GenerateHead


class Head(Protocol):
    name: str
    encoder: bool
    serves: bool
    hint: str
    command: str
    commands: tuple[Command, ...]
    routes: tuple[Route, ...]

    @staticmethod
    def check_manifest(data: dict[str, Any], where: str) -> dict[str, Any]: ...

    def __init__(self, predictor: Any) -> None: ...


_HEADS: dict[str, type[Head]] = {}


def register_head(head: type[Head]) -> type[Head]:
    """Make `head` answer bundles of task `head.name` (usable as a class decorator)."""
    _HEADS[head.name] = head
    return head


def task_names(serves: bool | None = None) -> tuple[str, ...]:
    """The manifest tasks this runtime supports, in registration order (serves=True: those
    `ftexport-runtime serve` answers)."""
    return tuple(name for name, head in _HEADS.items() if serves is None or bool(head.routes) == serves)


def get_head(task: str) -> type[Head]:
    """The head for a manifest task; BundleError (without a file name) when none serves it."""
    head = _HEADS.get(task)
    if head is None:
        raise BundleError(f"task {task!r} is not supported by this runtime (supports {', '.join(_HEADS)})")
    return head


def all_commands() -> list[Command]:
    """Every head's commands, in registration order, each name once."""
    seen: dict[str, Command] = {}
    for head in _HEADS.values():
        for command in head.commands:
            if seen.setdefault(command.name, command) is not command:
                raise RuntimeError(f"two heads offer different `{command.name}` commands; share one Command or rename one")
    return list(seen.values())


def serve_options() -> list[ServeOption]:
    """Every head's serve options, each name once (the `serve` command offers them all)."""
    seen: dict[str, ServeOption] = {}
    for head in _HEADS.values():
        for option in getattr(head, "serve_options", ()):
            seen.setdefault(option.name, option)
    return list(seen.values())


def route_owners() -> dict[str, list[type[Head]]]:
    """Which heads answer each route path (for the hint a server of another task gives)."""
    owners: dict[str, list[type[Head]]] = {}
    for head in _HEADS.values():
        for route in head.routes:
            owners.setdefault(route.path, []).append(head)
    return owners


def refusal(method: str, head: Head | type[Head]) -> str:
    """The one-line error for calling Predictor.`method` when `head` (the bundle's) lacks it."""
    owner = next((h for h in _HEADS.values() if h is not head and h is not type(head) and hasattr(h, method)), None)
    custom = getattr(owner, "refuse", None)
    if custom is not None:
        return custom(method, head)
    does = getattr(head, "does", None)
    if does:
        return f"{method}(): this bundle {does} ({head.name}); {head.hint}"
    return f"{method}(): this bundle's task is {head.name}; {head.hint}"


for _head in (ClassifyHead, EntitiesHead, GenerateHead, EmbedHead):
    register_head(_head)
