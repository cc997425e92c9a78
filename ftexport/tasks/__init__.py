"""Tasks are plug-ins: each module says how to build the model, tokenize a split, score
predictions and which Optimum export task to use. Adding a task touches this package only."""

from __future__ import annotations

from ..errors import RecipeError
from .text_classification import TextClassification

TASKS = {TextClassification.name: TextClassification()}


def get_task(name: str) -> TextClassification:
    if name not in TASKS:
        raise RecipeError(f"recipe.task: unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]
