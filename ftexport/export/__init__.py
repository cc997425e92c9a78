"""Export stages: model folder -> ONNX bundle (stage.py) through an exporter from the registry
below, added variants (quantize/, a registry of modes) and TensorRT engines (tensorrt.py).

An exporter has a `name`, `available()` (None, or why it cannot run here), `supports(task)`
(None, or why it cannot export that task's graph) and
`export(model_dir, task, out_dir, opset, trust_remote_code) -> details`, which writes
model.onnx (and its external data) into out_dir and says what made it. "auto" picks Optimum
where it can run (the design card's exporter), else torch. docs/extending.md says how to add one.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import RecipeError
from .optimum import OptimumExporter
from .torch import TorchExporter

EXPORTERS: dict[str, Any] = {}


def register_exporter(exporter: Any) -> Any:
    if exporter.name in EXPORTERS:
        raise ValueError(f"exporter {exporter.name!r} is registered twice")
    EXPORTERS[exporter.name] = exporter
    return exporter


def exporter_names() -> tuple[str, ...]:
    return tuple(EXPORTERS)


def unable(exporter: Any, task: Any = None) -> str | None:
    """Why `exporter` cannot export `task` here (None when it can)."""
    return exporter.available() or (exporter.supports(task) if task is not None else None)


def resolve_exporter(name: str = "auto", task: Any = None) -> Any:
    """The exporter `name` names, or for "auto" the first registered one that can run here
    (and export `task`); one line naming what to install (and the alternative) when the named
    one cannot."""
    if name == "auto":
        for exporter in EXPORTERS.values():
            if unable(exporter, task) is None:
                return exporter
        reasons = "; ".join(f"{n}: {unable(e, task)}" for n, e in EXPORTERS.items())
        raise RecipeError(f"export: no exporter can run here ({reasons})")
    if name not in EXPORTERS:
        raise RecipeError(f"recipe.export.exporter: unknown exporter {name!r}; choose auto, {', '.join(EXPORTERS)}")
    why = unable(EXPORTERS[name], task)
    if why:
        others = [n for n, e in EXPORTERS.items() if n != name and unable(e, task) is None]
        alternative = f"; or set export.exporter: {others[0]} (--exporter {others[0]})" if others else ""
        raise RecipeError(f"recipe.export.exporter: {name} cannot run here: {why}{alternative}")
    return EXPORTERS[name]


register_exporter(OptimumExporter())
register_exporter(TorchExporter())
