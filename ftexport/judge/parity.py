"""`ftexport validate`: the parity gate, one engine for every task (Polygraphy-style).

The runner per backend is the runtime's Predictor (what ships); the task supplies the
comparison: its `ParityCase` runs the PyTorch reference on the held-out split once and then
scores each (variant, backend) against it; the engine applies each precision's gate, files
the results in parity.json / parity.md and says in one line per variant whether it passed.
A backend this machine cannot run is a failed result, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftexport_runtime import Predictor
from ftexport_runtime.bundle import Bundle

from ..core import progress
from ..core.artifacts import StageRecord, key_of, make_key, stage_dir
from ..core.errors import BackendUnavailable
from ..core.gates import apply_gate
from ..core.hf import check_reference, cuda_matmul_precision, reference_labels
from ..core.reports import PARITY_JSON, ParityReport, VariantResult, reference_shortfall
from ..data import fingerprint
from ..tasks import DEFAULT_TASK, get_task
from ..tasks.base import Incomparable

PARITY_MD = "parity.md"


def validate_key(
    bundle_dir: Path,
    reference_dir: Path,
    data: Any,
    split: str,
    gates: dict[str, Any],
    backends: list[str],
    settings: Any = None,
    batch_size: int = 64,
) -> str:
    keys = [key_of(d) or str(Path(d).resolve()) for d in (bundle_dir, reference_dir)]
    extra = [settings.model_dump()] if settings is not None else []  # a task's own parity settings (a decoder's greedy check)
    gate_json = {k: g.model_dump() for k, g in gates.items()}
    # batch_size: dynamic int8 scales each call's activations as a whole, so its answers (and the verdict) depend on the batch
    return make_key("validate", keys, fingerprint(data), split, gate_json, backends, batch_size, *extra)


def result_name(variant: str, backend: str) -> str:
    return variant if backend == "cpu" else f"{variant}@{backend}"


def each_predictor(
    bundle: Bundle, names: list[str], backends: Any, batch_size: int, report: ParityReport
) -> Iterator[tuple[str, str, Any, Predictor]]:
    """A Predictor for every (variant, backend) pair to judge. A backend this machine cannot
    run goes into the report as a failed result (a GPU build that never ran must not pass)."""
    for backend in backends:
        # on a bundle with TensorRT engines, backend tensorrt judges the engines (fp16, int8...), not ORT's provider
        engines = bundle.manifest.engines if backend == "tensorrt" else {}
        for name in list(engines) or names:
            variant = engines[name] if engines else bundle.variant(name)
            key = result_name(name, backend)
            try:
                predictor = Predictor(bundle, variant=name, backend=backend, max_batch=batch_size)
            except BackendUnavailable as e:
                report.variants[key] = unavailable(variant.precision, backend, str(e))
                progress.info(f"{key:14s} FAIL: {e}")
                continue
            yield key, backend, variant, predictor


def unavailable(precision: str, backend: str, reason: str) -> VariantResult:
    """A variant that could not run where it was asked to, or be compared: a failed check, never a skip."""
    return VariantResult(precision, backend, [{"name": "backend", "value": reason, "limit": backend, "passed": False}], False, reason)


def validate(
    bundle_dir: str | Path,
    reference_dir: str | Path,
    data: Any,
    gates: dict[str, Any],
    output: str | Path,
    split: str = "test",
    batch_size: int = 64,
    backends: list[str] | tuple[str, ...] = ("cpu",),
    variants: list[str] | None = None,
    settings: Any = None,
) -> ParityReport:
    """Measure parity on `split`, write parity.json and parity.md to `output`, return the report.
    `settings` are the task's own parity settings (Task.parity_settings of the recipe's validate section)."""
    bundle_dir, reference_dir, output = Path(bundle_dir), Path(reference_dir), Path(output)
    bundle = Bundle.open(bundle_dir)
    manifest = bundle.manifest
    task = get_task(manifest.task)
    check_reference(reference_dir, "reference model")
    task.check_reference_labels(reference_labels(reference_dir), manifest.labels)
    names = variants or list(manifest.variants)
    for v in names:
        bundle.variant(v)
    progress.step(f"validate: the {split} split, PyTorch vs {', '.join(names)} on {', '.join(backends)}")
    with cuda_matmul_precision("ieee"):  # the reference in plain fp32, whatever TF32 setting the process has
        case = task.parity_case(bundle, reference_dir, data, split, batch_size, settings)
        report = ParityReport(task.name, case.split, case.examples, case.labels, case.reference, details=case.details)
        for key, backend, variant, predictor in each_predictor(bundle, names, backends, batch_size, report):
            try:
                measured = case.score(predictor)
            except Incomparable as e:
                report.variants[key] = unavailable(variant.precision, backend, str(e))
                progress.info(f"{key:14s} FAIL: {e}")
                continue
            result = {**measured, "providers": predictor.providers}
            checks = apply_gate(result, case.reference_metric, case.gate(variant.precision, gates), task.all_gate_fields(), case.metric)
            report.variants[key] = VariantResult(variant.precision, backend, checks, all(c["passed"] for c in checks), metrics=result)
            progress.info(f"{key:14s} {case.summary(result)}  {'PASS' if report.variants[key].passed else 'FAIL'}")
    # A score floor that the PyTorch model itself misses is the training's shortfall, not the export's.
    floors = [c["limit"] for v in report.variants.values() for c in v.checks if c["name"] == "min_accuracy" and not c["passed"]]
    floor = max(floors, default=None)
    if floor is not None and case.reference_metric < floor:
        report.details["reference_below_gate"] = {"metric": case.metric, "value": case.reference_metric, "limit": floor}
    with stage_dir(output) as tmp:
        (tmp / PARITY_JSON).write_text(report.dumps())
        (tmp / PARITY_MD).write_text(parity_table(report) + "\n")
        StageRecord(
            "validate",
            validate_key(bundle_dir, reference_dir, data, split, gates, list(backends), settings, batch_size),
            {"bundle": key_of(bundle_dir), "reference": key_of(reference_dir)},
            {"split": split, "gates": {k: g.model_dump() for k, g in gates.items()}, "backends": list(backends), "batch_size": batch_size},
            {"passed": report.passed},
        ).write(tmp)
    return report


def parity_table(report: Any) -> str:
    """The parity table of a report, by the task that wrote it (and, under it, a score floor that
    the PyTorch model itself misses)."""
    shortfall = reference_shortfall(report)
    return get_task(report.get("task") or DEFAULT_TASK).parity_table(report) + (f"\n\nNote: {shortfall}." if shortfall else "")
