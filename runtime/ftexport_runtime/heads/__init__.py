"""Heads: the task half of a Predictor. Each head serves one manifest `task`: it checks that
task's part of the manifest and turns model outputs into answers; this registry finds it.

A head is a class with:
    name     the manifest task it serves ("text-classification", ...)
    encoder  True when the model maps tokenizer encodings to logits (predict, logits, encode)
    serves   True when `ftexport-runtime serve` can answer POST /v1/predict with it
    hint     what to call on such a bundle ("use predict()"), for one-line refusals
    command  the ftexport-runtime command for such a bundle ("predict", "generate")
    check_manifest(data, where) -> dict   raises BundleError on a bad task-specific field;
             returns the Manifest fields the task owns (e.g. {"generation": {...}})
    __init__(predictor)                    built once the predictor's engine runs
and the task's methods, each taking the predictor first: predict(p, texts),
predict_batch(p, texts, batch_size), format_text(text, answer) for encoders; entities,
entities_from_words, word_logits; generate. A Predictor method the head lacks is refused
with `refusal`, which asks the head that has it (`refuse(method, head)`) for the message.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import BundleError
from .classify import ClassifyHead
from .entities import EntitiesHead
from .generate import GenerateHead


class Head(Protocol):
    name: str
    encoder: bool
    serves: bool
    hint: str
    command: str

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
    return tuple(name for name, head in _HEADS.items() if serves is None or head.serves == serves)


def get_head(task: str) -> type[Head]:
    """The head for a manifest task; BundleError (without a file name) when none serves it."""
    head = _HEADS.get(task)
    if head is None:
        raise BundleError(f"task {task!r} is not supported by this runtime (supports {', '.join(_HEADS)})")
    return head


def refusal(method: str, head: Head | type[Head]) -> str:
    """The one-line error for calling Predictor.`method` when `head` (the bundle's) lacks it."""
    owner = next((h for h in _HEADS.values() if h is not head and h is not type(head) and hasattr(h, method)), None)
    custom = getattr(owner, "refuse", None)
    if custom is not None:
        return custom(method, head)
    return f"{method}(): this bundle's task is {head.name}; {head.hint}"


for _head in (ClassifyHead, EntitiesHead, GenerateHead):
    register_head(_head)
