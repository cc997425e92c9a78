"""The parity report (parity.json) and the bench report (bench.json): typed, versioned, and read
and written here only. Both also read like the JSON they are (`report["variants"]`), so a
caller that only looks things up needs no attribute names."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import JsonView
from .errors import ModelError, RecipeError

PARITY_JSON = "parity.json"
BENCH_JSON = "bench.json"
PARITY_VERSION = 1
BENCH_VERSION = 2  # version 2 only added fields (and real-traffic cells) to version 1


@dataclass
class VariantResult(JsonView):
    """One variant on one backend: its measurements, the gate's checks, and the verdict; or
    the reason it could not run (`error`), which fails the gate."""

    precision: str
    backend: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = False
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # everything the task measured

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision, "backend": self.backend, **self.metrics}
        if self.error is not None:
            out["error"] = self.error
        out["checks"] = self.checks
        out["passed"] = self.passed
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VariantResult:
        known = {"precision", "backend", "checks", "passed", "error"}
        return cls(
            data.get("precision", "?"),
            data.get("backend", "cpu"),
            list(data.get("checks", [])),
            bool(data.get("passed")),
            data.get("error"),
            {k: v for k, v in data.items() if k not in known},
        )


@dataclass
class ParityReport(JsonView):
    """What `ftexport validate` found: the PyTorch reference's scores and every variant's."""

    task: str | None
    split: str
    examples: int
    labels: list[str]
    reference: dict[str, Any]
    variants: dict[str, VariantResult] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # task-specific header fields (metric, words, prompts...)
    schema_version: int = PARITY_VERSION

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.variants.values())

    @property
    def metric(self) -> str:
        return str(self.details.get("metric", "accuracy"))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "task": self.task,
            **self.details,
            "split": self.split,
            "examples": self.examples,
            "labels": list(self.labels),
            "reference": self.reference,
            "variants": {k: v.to_json() for k, v in self.variants.items()},
            "passed": self.passed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ParityReport:
        head = {"schema_version", "task", "split", "examples", "labels", "reference", "variants", "passed"}
        return cls(
            data.get("task"),
            data["split"],
            int(data["examples"]),
            list(data.get("labels", [])),
            dict(data["reference"]),
            {k: VariantResult.from_json(v) for k, v in data["variants"].items()},
            {k: v for k, v in data.items() if k not in head},
            int(data.get("schema_version", 0)),
        )

    @classmethod
    def load(cls, directory: str | Path) -> ParityReport:
        path = Path(directory) / PARITY_JSON
        if not path.is_file():
            raise ModelError(f"{directory}: no {PARITY_JSON} (run `ftexport validate` first)")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelError(f"{path}: not a readable parity report ({e}); re-run `ftexport validate`") from None

    def failures(self) -> list[str]:
        """One phrase per failed check: 'int8: min_agreement 0.95 (limit 0.97)'."""
        out = []
        for name, v in self.variants.items():
            for c in v.checks:
                if not c["passed"]:
                    value, limit = c["value"], c["limit"]
                    shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
                    limit_shown = f"{limit:.4g}" if isinstance(limit, (int, float)) else str(limit)
                    out.append(f"{name}: {c['name']} {shown} (limit {limit_shown})")
        shortfall = reference_shortfall(self)
        return out + ([shortfall] if shortfall else [])


def reference_shortfall(report: Mapping[str, Any]) -> str | None:
    """Where a score floor (min_accuracy) failed and the PyTorch model itself is under it too:
    the phrase that says so, since no export or quantization could have passed it."""
    below = report.get("reference_below_gate")
    if not below:
        return None
    return (
        f"the PyTorch model itself scores {below['value']:.4g} {below['metric']}, under the min_accuracy limit {below['limit']:.4g}: "
        "the training fell short (see the train stage's dev metrics), not the export or quantization"
    )


@dataclass
class BenchReport(JsonView):
    """What `ftexport bench` measured: one row per (backend, batch, sequence length[, phase])."""

    machine: dict[str, Any]
    threads: int
    seq_len: int
    batch_sizes: list[int]
    warmup: int
    iterations: int
    repeats: int
    baseline: str
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cold_start: dict[str, Any] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # grid and task fields (seq_lens, traffic, task, new_tokens...)
    schema_version: int = BENCH_VERSION

    def to_json(self) -> dict[str, Any]:
        out = {"schema_version": self.schema_version, **self.details}
        for f in dataclasses.fields(self):
            if f.name not in ("schema_version", "details"):
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchReport:
        names = {f.name for f in dataclasses.fields(cls)} - {"details"}
        return cls(**{k: v for k, v in data.items() if k in names}, details={k: v for k, v in data.items() if k not in names})

    @classmethod
    def load(cls, directory: str | Path) -> BenchReport:
        """bench.json from a bench stage folder, or a bench.json file (`bench --compare OLD`)."""
        path = Path(directory)
        if path.is_dir() or not path.suffix:
            path = path / BENCH_JSON
        if not path.exists():
            raise RecipeError(f"{directory}: no {BENCH_JSON} (run `ftexport bench` first)")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RecipeError(f"{path}: not a readable bench.json ({str(e)[:120]})") from None
        if not isinstance(data, dict) or data.get("schema_version") not in (1, BENCH_VERSION) or "results" not in data:
            raise RecipeError(f"{path}: not a bench.json of schema version {BENCH_VERSION}; re-run `ftexport bench` to make one")
        try:
            return cls.from_json(data)
        except TypeError as e:
            raise RecipeError(f"{path}: a bench.json with missing fields ({e}); re-run `ftexport bench`") from None
