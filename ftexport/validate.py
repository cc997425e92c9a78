"""`ftexport validate`: the parity gate. Runs the PyTorch reference and every bundle variant
(through the runtime's Predictor, i.e. what ships) on a held-out split, and checks each
variant against the thresholds for its precision.

Tensor level: max and mean |logit difference|, cosine similarity, top-1 agreement.
Task level: accuracy and macro-F1, with the drop against PyTorch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ftexport_runtime import Predictor
from ftexport_runtime.bundle import Bundle

from . import progress
from .artifacts import make_key, read_record, stage_dir, write_record
from .data import fingerprint, load_data
from .errors import BackendUnavailable, ModelError
from .recipe import DataSection, Gate, GenerationCheck
from .report import parity_table
from .tasks import get_task
from .methods import check_reference, load_reference, reference_labels
from .train import load_tokenizer, predict_logits

PARITY_JSON = "parity.json"
PARITY_MD = "parity.md"


def compare(reference: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Tensor-level agreement between two [n, labels] logit arrays."""
    diff = np.abs(reference.astype(np.float64) - logits.astype(np.float64))
    a, b = reference.astype(np.float64), logits.astype(np.float64)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    finite = bool(np.isfinite(logits).all())
    return {
        "max_logit_diff": float(diff.max()) if finite else float("inf"),
        "mean_logit_diff": float(diff.mean()) if finite else float("inf"),
        "min_cosine": float(cos.min()) if finite else 0.0,
        "mean_cosine": float(cos.mean()) if finite else 0.0,
        "agreement": float((reference.argmax(-1) == logits.argmax(-1)).mean()),
    }


def apply_gate(result: dict[str, Any], reference_metric: float, gate: Gate, metric: str = "accuracy") -> list[dict[str, Any]]:
    """One check per threshold the gate sets; each says value, limit and whether it passed.
    `metric` is the task score the accuracy fields judge (entity F1 for token classification)."""
    checks = []

    def check(name: str, value: float, limit: float | None, ok: bool) -> None:
        if limit is not None:
            checks.append({"name": name, "value": value, "limit": limit, "passed": bool(ok)})

    drop = reference_metric - result[metric]
    result[f"{metric}_drop"] = drop
    if gate.max_logit_diff is not None:
        check("max_logit_diff", result["max_logit_diff"], gate.max_logit_diff, result["max_logit_diff"] <= gate.max_logit_diff)
    if gate.min_agreement is not None:
        check("min_agreement", result["agreement"], gate.min_agreement, result["agreement"] >= gate.min_agreement)
    if gate.max_accuracy_drop is not None:
        check("max_accuracy_drop", drop, gate.max_accuracy_drop, drop <= gate.max_accuracy_drop + 1e-12)
    if gate.min_cosine is not None:
        check("min_cosine", result["min_cosine"], gate.min_cosine, result["min_cosine"] >= gate.min_cosine)
    if gate.min_accuracy is not None:
        check("min_accuracy", result[metric], gate.min_accuracy, result[metric] >= gate.min_accuracy)
    if gate.min_entity_agreement is not None and "entity_agreement" in result:
        check("min_entity_agreement", result["entity_agreement"], gate.min_entity_agreement, result["entity_agreement"] >= gate.min_entity_agreement)
    if gate.min_greedy_match is not None and "greedy_match" in result:
        check("min_greedy_match", result["greedy_match"], gate.min_greedy_match, result["greedy_match"] >= gate.min_greedy_match)
    if gate.max_perplexity_ratio is not None and "perplexity_ratio" in result:
        check("max_perplexity_ratio", result["perplexity_ratio"], gate.max_perplexity_ratio, result["perplexity_ratio"] <= gate.max_perplexity_ratio)
    return checks


def settle(report: dict[str, Any], key: str, result: dict[str, Any], checks: list[dict[str, Any]], summary: str) -> None:
    """File one variant's result under its checks, and say it in one progress line."""
    result["checks"] = checks
    result["passed"] = all(c["passed"] for c in checks)
    report["variants"][key] = result
    progress.info(f"{key:14s} {summary}  {'PASS' if result['passed'] else 'FAIL'}")


def validate_key(bundle_dir: Path, reference_dir: Path, data: DataSection, split: str, gates: dict[str, Gate], backends: list[str],
                 generation: GenerationCheck | None = None) -> str:
    keys = [(read_record(d) or {}).get("key") or str(d.resolve()) for d in (bundle_dir, reference_dir)]
    extra = [generation.model_dump()] if generation is not None else []  # text-generation only: classifier keys stay as they were
    return make_key("validate", keys, fingerprint(data), split, {k: g.model_dump() for k, g in gates.items()}, backends, *extra)


def result_name(variant: str, backend: str) -> str:
    return variant if backend == "cpu" else f"{variant}@{backend}"


def each_predictor(bundle: Bundle, names: list[str], backends: Any, batch_size: int, report: dict[str, Any]) -> Iterator[tuple[str, str, Any, Predictor]]:
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
                report["variants"][key] = _unavailable(variant.precision, backend, str(e))
                progress.info(f"{key:14s} FAIL: {e}")
                continue
            yield key, backend, variant, predictor


def _unavailable(precision: str, backend: str, reason: str) -> dict[str, Any]:
    """A variant that could not run where it was asked to: a failed check, never a skip."""
    return {"precision": precision, "backend": backend, "error": reason,
            "checks": [{"name": "backend", "value": reason, "limit": backend, "passed": False}], "passed": False}


def validate(
    bundle_dir: str | Path,
    reference_dir: str | Path,
    data: DataSection,
    gates: dict[str, Gate],
    output: str | Path,
    split: str = "test",
    batch_size: int = 64,
    backends: list[str] | tuple[str, ...] = ("cpu",),
    variants: list[str] | None = None,
    generation: GenerationCheck | None = None,
) -> dict[str, Any]:
    """Measure parity on `split`, write parity.json and parity.md to `output`, return the report.
    A text-generation bundle is judged by validate_lm (greedy continuations and perplexity)."""
    import torch

    bundle_dir, reference_dir, output = Path(bundle_dir), Path(reference_dir), Path(output)
    bundle = Bundle.open(bundle_dir)
    manifest = bundle.manifest
    check_reference(reference_dir, "reference model")
    if manifest.task == "text-generation":
        from . import validate_lm

        generation = generation or GenerationCheck()
        names = variants or list(manifest.variants)
        for v in names:
            bundle.variant(v)
        texts = load_data(data, (split,), labelled=False)[split].texts
        model = validate_lm.model_for(reference_dir)
        if torch.cuda.is_available():
            model = model.to("cuda")
        report = validate_lm.validate_generation(bundle, model, texts, gates, names, list(backends), batch_size, generation, split)
        del model
        _write(output, report, validate_key(bundle_dir, reference_dir, data, split, gates, list(backends), generation), bundle_dir, reference_dir, split, gates, backends)
        return report
    ref_labels = reference_labels(reference_dir)
    if ref_labels and ref_labels != manifest.labels:
        raise ModelError(f"reference model labels {ref_labels} differ from the bundle's {manifest.labels}; compare the model the bundle was exported from")
    names = variants or list(manifest.variants)
    for v in names:
        bundle.variant(v)
    task = get_task(manifest.task)
    if manifest.task == "token-classification":  # word-level logits and entity-level scores
        from .validate_tokens import validate_tokens

        report = validate_tokens(bundle, reference_dir, data, gates, split, batch_size, backends, names)
        _write(output, report, validate_key(bundle_dir, reference_dir, data, split, gates, list(backends)), bundle_dir, reference_dir, split, gates, backends)
        return report
    # The bundle's labels are the label set: data labels must map onto them.
    section = data.model_copy(update={"label_names": manifest.labels})
    held_out = load_data(section, (split,))[split]
    texts, labels = held_out.texts, np.asarray(held_out.labels)
    progress.step(f"validate: {len(texts)} examples of the {split} split, PyTorch vs {', '.join(names)} on {', '.join(backends)}")

    model = load_reference(reference_dir, task)
    if torch.cuda.is_available():
        model = model.to("cuda")  # fp32 either way; only faster
    ref_logits = predict_logits(model, load_tokenizer(reference_dir, "reference model"), texts, manifest.max_length, batch_size)
    ref_metrics = task.metrics(ref_logits, labels, len(manifest.labels))
    progress.info(f"pytorch   accuracy {ref_metrics['accuracy']:.4f}")

    report: dict[str, Any] = {
        "split": split,
        "examples": len(texts),
        "labels": manifest.labels,
        "reference": {"backend": "pytorch", "device": str(next(model.parameters()).device), **ref_metrics},
        "variants": {},
    }
    del model
    for key, backend, variant, predictor in each_predictor(bundle, names, backends, batch_size, report):
        logits = predictor.logits(texts)
        result = {"precision": variant.precision, "backend": backend, "providers": predictor.providers}
        result.update(task.metrics(logits, labels, len(manifest.labels)))
        result.update(compare(ref_logits, logits))
        settle(report, key, result, apply_gate(result, ref_metrics["accuracy"], gates.get(variant.precision, Gate())),
               f"accuracy {result['accuracy']:.4f}  agreement {result['agreement']:.4f}  max |dlogit| {result['max_logit_diff']:.2e}")
    report["passed"] = all(v["passed"] for v in report["variants"].values())
    _write(output, report, validate_key(bundle_dir, reference_dir, data, split, gates, list(backends)), bundle_dir, reference_dir, split, gates, backends)
    return report


def _write(output: Path, report: dict[str, Any], key: str, bundle_dir: Path, reference_dir: Path, split: str, gates: dict[str, Gate], backends: Any) -> None:
    with stage_dir(output) as tmp:
        (tmp / PARITY_JSON).write_text(json.dumps(report, indent=2) + "\n")
        (tmp / PARITY_MD).write_text(parity_table(report) + "\n")
        write_record(
            tmp, "validate", key,
            {"bundle": (read_record(bundle_dir) or {}).get("key"), "reference": (read_record(reference_dir) or {}).get("key")},
            {"split": split, "gates": {k: g.model_dump() for k, g in gates.items()}, "backends": list(backends)},
            {"passed": report["passed"]},
        )


def load_report(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / PARITY_JSON
    if not path.is_file():
        raise ModelError(f"{directory}: no {PARITY_JSON} (run `ftexport validate` first)")
    return json.loads(path.read_text())
