"""Accuracy-aware int8: when an int8 model misses the recipe's int8 gate on validation texts
(measured against the fp32 ONNX model, which export already holds to PyTorch), each layer is
quantized alone to measure how much error it brings, the most sensitive layers are kept in
fp32 one at a time until the gate passes or `max_fp32_layers` is reached, and the variant
records what was kept and what it cost in latency."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...core import progress
from ...core.gates import apply_gate, compare, override
from ...core.timing import time_calls


def layer_of(node_name: str) -> str:
    """The layer a node belongs to: 'layer.3' for '/bert/encoder/layer.3/attention/...',
    else the first two path parts ('/bert/embeddings'), else the node itself."""
    m = re.search(r"layers?[._/](\d+)", node_name)
    if m:
        return f"layer.{m.group(1)}"
    parts = [p for p in node_name.split("/") if p]
    return "/".join(parts[:2]) if len(parts) > 2 else node_name


def quantizable_layers(model_path: Path, op_types: list[str]) -> dict[str, list[str]]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    layers: dict[str, list[str]] = {}
    for node in graph.node:
        # activation x activation MatMuls (attention scores) count too: the dynamic
        # quantizer quantizes both of their inputs at run time
        if node.op_type in op_types and node.name:
            layers.setdefault(layer_of(node.name), []).append(node.name)
    return layers


class Scorer:
    """Logits of any ONNX file on fixed texts, compared with the fp32 reference."""

    def __init__(self, predictor: Any, texts: list[str], labels: list[int], threads: int | None):
        import onnxruntime as ort

        self._ort = ort
        self.threads = threads
        self.feeds = [predictor.encode(texts[i : i + 32]) for i in range(0, len(texts), 32)]
        self.labels = np.asarray(labels)
        self.reference = self.logits(predictor.bundle.path_of(predictor.variant.file))
        self.reference_accuracy = float((self.reference.argmax(-1) == self.labels).mean())

    def session(self, path: Path) -> Any:
        opts = self._ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        return self._ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def logits(self, path: Path) -> np.ndarray:
        s = self.session(path)
        return np.concatenate([s.run(None, f)[0] for f in self.feeds]).astype(np.float32)

    def score(self, path: Path, gate: Any) -> dict[str, Any]:
        logits = self.logits(path)
        result: dict[str, Any] = {**compare(self.reference, logits), "accuracy": float((logits.argmax(-1) == self.labels).mean())}
        # min_accuracy is a property of the test split; here only parity with fp32 is judged
        checks = apply_gate(result, self.reference_accuracy, override(gate, min_accuracy=None))
        result["passed"] = all(c["passed"] for c in checks)
        result["failed"] = [c["name"] for c in checks if not c["passed"]]
        return result

    def p50_ms(self, path: Path, feeds: dict[str, np.ndarray], iterations: int = 20) -> float:
        s = self.session(path)
        return float(np.median(time_calls(lambda: s.run(None, feeds), 3, iterations)) * 1e3)


def accuracy_aware(
    src: Path,
    dst: Path,
    build: Callable[[Path, list[str] | None, list[str]], dict[str, Any]],
    op_types: list[str],
    scorer: Scorer,
    gate: Any,
    max_layers: int,
    timing_feeds: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Quantize all; if the gate fails, keep the most sensitive layers in fp32 until it passes."""
    work = dst.parent / f"_{dst.stem}.trials"
    work.mkdir(parents=True, exist_ok=True)
    detail = build(dst, None, [])
    first = scorer.score(dst, gate)
    report: dict[str, Any] = {"enabled": True, "samples": len(scorer.labels), "all_int8": _brief(first), "kept_fp32": [], "trials": []}
    if first["passed"]:
        progress.info(f"accuracy-aware: all layers int8 pass the gate (agreement {first['agreement']:.4f})")
        report["passed"] = True
        shutil.rmtree(work)
        return {**detail, "accuracy_aware": report}

    progress.info(
        f"accuracy-aware: all-int8 fails {', '.join(first['failed'])} (agreement {first['agreement']:.4f}); measuring layer sensitivity"
    )
    layers = quantizable_layers(src, op_types)
    sensitivity = []
    for name, nodes in layers.items():
        probe = work / "probe.onnx"
        build(probe, nodes, [])
        r = scorer.score(probe, gate)
        # error this layer alone brings: answers it flips, then how far it moves the logits
        sensitivity.append((1.0 - r["agreement"], r["mean_logit_diff"], name))
    sensitivity.sort(reverse=True)
    report["sensitivity"] = [{"layer": n, "flipped": f, "mean_logit_diff": d} for f, d, n in sensitivity]
    progress.info("most sensitive: " + ", ".join(f"{n} ({d:.3g})" for _, d, n in sensitivity[:max_layers]))

    all_int8_ms = scorer.p50_ms(dst, timing_feeds)
    kept: list[str] = []
    result = first
    for _, _, name in sensitivity[:max_layers]:
        kept.append(name)
        kept_nodes = [n for k in kept for n in layers[k]]
        trial = work / "trial.onnx"
        detail = build(trial, None, kept_nodes)
        result = scorer.score(trial, gate)
        report["trials"].append({"kept_fp32": list(kept), **_brief(result)})
        progress.info(f"keeping {', '.join(kept)} in fp32: agreement {result['agreement']:.4f} {'PASS' if result['passed'] else 'fail'}")
        if result["passed"]:
            shutil.move(str(trial), dst)
            break
    report["kept_fp32"] = kept if result["passed"] else []
    report["passed"] = bool(result["passed"])
    if result["passed"]:
        final_ms = scorer.p50_ms(dst, timing_feeds)
        report["latency_cost"] = {"all_int8_p50_ms": all_int8_ms, "final_p50_ms": final_ms, "ratio": final_ms / all_int8_ms}
        report["kept_fp32_nodes"] = kept_nodes
    else:
        progress.info(f"accuracy-aware: still failing with {max_layers} layers in fp32; keeping the all-int8 model for the gate to judge")
    shutil.rmtree(work)
    return {**detail, "accuracy_aware": report}


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in ("agreement", "accuracy", "accuracy_drop", "max_logit_diff", "mean_logit_diff", "passed")}
