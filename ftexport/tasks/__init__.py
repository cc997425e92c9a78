"""Tasks are plug-ins: a `Task` object per task name, registered here (as peft registers its
tuners). Stages call `get_task(name)` and ask it, never compare the name. Adding a task is one
folder under tasks/ plus one `register_task` call below (docs/extending.md)."""

from __future__ import annotations

from ..core.errors import RecipeError
from .base import Task
from .feature_extraction import FeatureExtraction
from .text_classification import TextClassification
from .text_generation import TextGeneration
from .token_classification import TokenClassification

TASKS: dict[str, Task] = {}
DEFAULT_TASK = TextClassification.name


def register_task(task: Task) -> Task:
    """Make `task` available under `task.name` (to recipes, stages and `ftexport` commands)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise RecipeError(f"recipe.task: unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


register_task(TextClassification())
register_task(TokenClassification())
register_task(TextGeneration())
register_task(FeatureExtraction())
