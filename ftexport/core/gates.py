"""Gates: pass/fail thresholds on a variant's measured results, and the tensor-level comparison
of two arrays of outputs that most of them judge.

A gate field is `min_X` or `max_X` over one result key. The common fields are below; a task
adds its own (entity agreement, greedy match...) through `Task.gate_fields`, and the recipe's
`Gate` section is built from both, so a threshold the task does not measure cannot be set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GateField:
    """One threshold: `name` in the recipe, the result key it judges ("{metric}" stands for the
    task's score), whether the value must stay at or above (min) or at or below (max) it."""

    name: str
    key: str
    bound: str  # "min" or "max"
    description: str
    ge: float | None = None
    le: float | None = None

    def result_key(self, metric: str) -> str:
        return self.key.format(metric=metric)


COMMON_GATE_FIELDS = (
    GateField("max_logit_diff", "max_logit_diff", "max", "max |logit - PyTorch logit| over the split", ge=0),
    GateField("min_agreement", "agreement", "min", "share of top-1 answers equal to PyTorch's", ge=0, le=1),
    GateField("max_accuracy_drop", "{metric}_drop", "max", "PyTorch accuracy minus this accuracy", ge=0, le=1),
    GateField("min_cosine", "min_cosine", "min", "lowest cosine similarity of an output vector to PyTorch's", ge=-1, le=1),
    GateField("min_accuracy", "{metric}", "min", "lowest accuracy (the task's score) allowed", ge=0, le=1),
)


def compare(reference: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Tensor-level agreement between two [n, k] arrays (logits, or any output vectors)."""
    a, b = reference.astype(np.float64), outputs.astype(np.float64)
    diff = np.abs(a - b)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    finite = bool(np.isfinite(outputs).all())
    return {
        "max_logit_diff": float(diff.max()) if finite else float("inf"),
        "mean_logit_diff": float(diff.mean()) if finite else float("inf"),
        "min_cosine": float(cos.min()) if finite else 0.0,
        "mean_cosine": float(cos.mean()) if finite else 0.0,
        "agreement": float((reference.argmax(-1) == outputs.argmax(-1)).mean()),
    }


def apply_gate(
    result: dict[str, Any], reference_metric: float, gate: Any, fields: tuple[GateField, ...] = COMMON_GATE_FIELDS, metric: str = "accuracy"
) -> list[dict[str, Any]]:
    """One check per threshold the gate sets; each says value, limit and whether it passed.
    `metric` is the task score the accuracy fields judge (entity F1 for token classification).
    A threshold whose value the result lacks fails: a gate never passes unmeasured."""
    result[f"{metric}_drop"] = reference_metric - result[metric] if metric in result else None
    checks = []
    for f in fields:
        limit = getattr(gate, f.name, None)
        if limit is None:
            continue
        value = result.get(f.result_key(metric))
        if value is None:
            ok = False
        elif f.bound == "min":
            ok = value >= limit
        else:
            ok = value <= limit + (1e-12 if f.name == "max_accuracy_drop" else 0.0)
        checks.append({"name": f.name, "value": value, "limit": limit, "passed": bool(ok)})
    return checks


class override:  # noqa: N801 - reads like a function at the call site
    """A gate with some thresholds replaced (None: not checked), the recipe's gate untouched."""

    def __init__(self, gate: Any, **values: Any):
        self._gate, self._values = gate, values

    def __getattr__(self, name: str) -> Any:
        return self._values[name] if name in self._values else getattr(self._gate, name, None)
