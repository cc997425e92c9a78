"""Tasks are plug-ins: each module says how to build the model, tokenize a split, score
predictions and which Optimum export task to use. Adding a task touches this package only."""

from __future__ import annotations

from typing import Any

from ..errors import RecipeError
from .causal_lm import CausalLM
from .text_classification import TextClassification
from .token_classification import TokenClassification

TASKS: dict[str, Any] = {TextClassification.name: TextClassification(), TokenClassification.name: TokenClassification(), CausalLM.name: CausalLM()}


def get_task(name: str) -> Any:
    if name not in TASKS:
        raise RecipeError(f"recipe.task: unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]
