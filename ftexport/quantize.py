"""`ftexport quantize`: add compressed variants to a bundle.

Reads a bundle, writes a new bundle holding the same files plus one model per mode:

    optimize O1-O3  model.opt.onnx          fp32, fused by ORT's transformer optimizer (Optimum)
    dynamic         model.int8.onnx         int8 weights, activations scaled at run time (CPU),
                                            stored as ONNX Runtime's CPU rewrite of the graph
    static          model.int8-static.onnx  int8 weights and activations, ranges calibrated on
                                            training texts; QDQ (portable, TensorRT) or QOperator
    fp16 / O4       model.fp16.onnx         fp16, fused for the GPU (CUDA, TensorRT)

int8 models are made from the optimized graph when `optimize` is set. Quantization itself is
ONNX Runtime's (`onnxruntime.quantization`), called directly rather than through Optimum's
ORTQuantizer: only the former takes `DefaultTensorType`, without which quantizing a fused
graph fails in shape inference ("Unable to find data type for weight_name ..."), and a
calibration reader that needs no `datasets` object.

Accuracy-aware mode: when an int8 model misses the recipe's int8 gate on validation texts
(measured against the fp32 ONNX model, which export already holds to PyTorch within 1e-5),
each layer is quantized alone to measure how much error it brings, the most sensitive
layers are kept in fp32 one at a time until the gate passes or `max_fp32_layers` is
reached, and the variant records what was kept and what it cost in latency.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftexport_runtime import Predictor
from ftexport_runtime.bundle import Bundle, Manifest, Variant, write_manifest

from . import progress
from .artifacts import link_tree, make_key, read_record, stage_dir, write_record
from .data import fingerprint, load_data
from .errors import BundleError, DataError, RecipeError, first_line
from .export import onnx_io, optimize_onnx
from .recipe import DataSection, Gate, QuantizeSection

MODES = {"dynamic": ("int8", "model.int8.onnx"), "static": ("int8-static", "model.int8-static.onnx"), "fp16": ("fp16", "model.fp16.onnx")}
OPT_VARIANT, OPT_FILE = "opt", "model.opt.onnx"

# Operators worth quantizing in an encoder: the MatMuls (where the time goes), the embedding
# Gather (where the bytes are) and, in a fused graph, Attention (QKV projections inside).
DYNAMIC_OPS = ["MatMul", "Gather", "Attention"]
STATIC_OPS = ["MatMul", "Gather"]


# What a quantize stage writes beyond its settings, part of its key so that stages written
# before a change are redone: 2 = the dynamic int8 file is ORT's CPU rewrite (cpu_preoptimize)
# and GPU backends default to fp32. The ORT version is in the key too: the file is its output.
OUTPUT_FORMAT = 2


def quantize_key(bundle_dir: Path, section: QuantizeSection, data: DataSection | None = None, gate: Gate | None = None) -> str:
    import onnxruntime as ort

    rec = read_record(bundle_dir) or {}
    needs_data = "static" in section.modes or section.accuracy_aware.enabled
    return make_key(
        "quantize", rec.get("key") or str(bundle_dir.resolve()), section.model_dump(), OUTPUT_FORMAT, ort.__version__,
        fingerprint(data) if needs_data and data is not None else None,
        gate.model_dump() if gate is not None and section.accuracy_aware.enabled else None,
    )


class _Reader:
    """onnxruntime CalibrationDataReader over tokenized texts, one text per call (no padding,
    so pad positions never widen the activation ranges)."""

    def __init__(self, predictor: Predictor, texts: Sequence[str]):
        self._feeds = [predictor.encode([t]) for t in texts]
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._feeds):
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def rewind(self) -> None:
        self._i = 0


def int8_onnx(
    src: Path,
    dst: Path,
    static: bool,
    section: QuantizeSection,
    reader: _Reader | None = None,
    nodes_to_quantize: list[str] | None = None,
    nodes_to_exclude: list[str] | None = None,
) -> dict[str, Any]:
    """Quantize `src` to `dst` with ONNX Runtime; returns the settings for the manifest."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    # Contrib ops of a fused graph (Attention, SkipLayerNormalization, ...) have no ONNX
    # type inference; without a default type the quantizer cannot find their weights' types.
    extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    common = dict(per_channel=section.per_channel, reduce_range=section.reduce_range, weight_type=QuantType.QInt8,
                  nodes_to_quantize=nodes_to_quantize or [], nodes_to_exclude=nodes_to_exclude or [], extra_options=extra)
    root = logging.getLogger()  # the quantizer warns through the root logger, one line per tensor
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        if static:
            if reader is None:
                raise RecipeError("static int8 needs calibration texts; give a recipe with a data.train split (ftexport quantize --recipe R)")
            reader.rewind()
            cal = section.calibration
            # symmetric: int8 activations with zero point 0, the only int8 TensorRT's explicit quantization reads
            extra.update({"ActivationSymmetric": section.symmetric, "WeightSymmetric": True, "CalibPercentile": cal.percentile})
            method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[cal.method]
            fmt = QuantFormat.QDQ if section.format == "qdq" else QuantFormat.QOperator
            quantize_static(str(src), str(dst), reader, quant_format=fmt, op_types_to_quantize=STATIC_OPS,
                            activation_type=QuantType.QInt8 if section.symmetric else QuantType.QUInt8, calibrate_method=method, **common)
            detail = {"mode": "static", "format": section.format, "calibration": cal.model_dump(), "operators": STATIC_OPS,
                      "activations": "int8 symmetric (calibrated)" if section.symmetric else "uint8 (calibrated)"}
        else:
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=DYNAMIC_OPS, **common)
            detail = {"mode": "dynamic", "format": "qoperator", "operators": DYNAMIC_OPS, "activations": "uint8 (scaled at run time)"}
    except (RecipeError, DataError):
        raise
    except Exception as e:  # onnxruntime's quantizer raises bare Exceptions and ValueErrors
        raise BundleError(f"{src}: ONNX Runtime could not quantize this model ({first_line(e)})") from None
    finally:
        root.setLevel(level)
    for tmp in dst.parent.glob("augmented_model*.onnx"):
        tmp.unlink()
    return {**detail, "weights": "int8", "per_channel": section.per_channel, "reduce_range": section.reduce_range}


# ---- accuracy-aware quantization ----------------------------------------------------------


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


class _Scorer:
    """Logits of any ONNX file on fixed texts, compared with the fp32 reference."""

    def __init__(self, predictor: Predictor, texts: list[str], labels: list[int], threads: int | None):
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

    def score(self, path: Path, gate: Gate) -> dict[str, Any]:
        from .validate import apply_gate, compare

        logits = self.logits(path)
        result: dict[str, Any] = {**compare(self.reference, logits), "accuracy": float((logits.argmax(-1) == self.labels).mean())}
        # min_accuracy is a property of the test split; here only parity with fp32 is judged
        checks = apply_gate(result, self.reference_accuracy, gate.model_copy(update={"min_accuracy": None}))
        result["passed"] = all(c["passed"] for c in checks)
        result["failed"] = [c["name"] for c in checks if not c["passed"]]
        return result

    def p50_ms(self, path: Path, feeds: dict[str, np.ndarray], iterations: int = 20) -> float:
        from .bench import time_calls

        s = self.session(path)
        return float(np.median(time_calls(lambda: s.run(None, feeds), 3, iterations)) * 1e3)


def accuracy_aware(
    src: Path,
    dst: Path,
    build: Callable[[Path, list[str] | None, list[str]], dict[str, Any]],
    op_types: list[str],
    scorer: _Scorer,
    gate: Gate,
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

    progress.info(f"accuracy-aware: all-int8 fails {', '.join(first['failed'])} (agreement {first['agreement']:.4f}); measuring layer sensitivity")
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


# ---- the stage -----------------------------------------------------------------------------


def quantize(
    bundle_dir: str | Path,
    output: str | Path,
    section: QuantizeSection | None = None,
    data: DataSection | None = None,
    gate: Gate | None = None,
) -> Manifest:
    """Write `output`: the bundle at `bundle_dir` plus the variants `section` asks for.

    `data` (the recipe's) feeds static calibration and the accuracy-aware loop; `gate` (the
    recipe's int8 gate) is what the accuracy-aware loop must pass."""
    bundle_dir, output = Path(bundle_dir), Path(output)
    section = section or QuantizeSection()
    modes = list(dict.fromkeys(section.modes))
    if section.optimize == "O4" and "fp16" not in modes:
        modes.append("fp16")  # O4 is Optimum's fp16 level: it makes the fp16 variant
    if not modes and not section.optimize:
        raise RecipeError("quantize: nothing to do; give a mode (" + ", ".join(MODES) + ") or an optimization level (O1-O4)")
    int8_modes = [m for m in modes if m in ("dynamic", "static")]
    if "static" in modes and (data is None or (data.hub is None and data.split_path(section.calibration.split) is None)):
        raise RecipeError(f"quantize: static int8 needs calibration data; give a recipe whose data.{section.calibration.split} split exists (--recipe R)")
    if section.accuracy_aware.enabled and (data is None or gate is None or not int8_modes):
        raise RecipeError("quantize: accuracy-aware int8 needs a recipe (validation texts and the int8 gate) and an int8 mode")

    bundle = Bundle.open(bundle_dir)  # refuses a tampered or truncated model before any work
    if bundle.manifest.task == "text-generation" and (set(modes) - {"dynamic"} or section.optimize or section.accuracy_aware.enabled):
        raise RecipeError("quantize: a text-generation bundle takes dynamic int8 only; static calibration, fusion and fp16 of the "
                          "KV-cache decoder are not supported yet (use --mode dynamic)")
    if section.accuracy_aware.enabled and bundle.manifest.task != "text-classification":
        raise RecipeError(f"quantize.accuracy_aware: supported for text-classification only, not {bundle.manifest.task}; "
                          "turn it off (validate's int8 gate still judges the int8 model)")
    src = bundle.variant("fp32")
    onnx_io(bundle.path_of(src.file))
    manifest = bundle.manifest
    fused = section.optimize in ("O1", "O2", "O3")  # the CPU levels; O4 is the fp16 variant
    needs_texts = "static" in int8_modes or section.accuracy_aware.enabled
    predictor = Predictor(bundle, variant="fp32") if (needs_texts and data is not None) else None
    with stage_dir(output) as tmp:
        link_tree(bundle_dir, tmp)
        int8_source = tmp / src.file
        if fused:
            progress.step(f"quantize: graph optimization {section.optimize} through Optimum's ORTOptimizer")
            _add_optimized(manifest, tmp, src.file, section.optimize, OPT_VARIANT, OPT_FILE, "fp32", {})
            int8_source = tmp / OPT_FILE
            if int8_modes:
                int8_source = _typed(int8_source, tmp / "_typed.onnx")

        reader = scorer = timing = None
        if predictor is not None and data is not None:
            if "static" in int8_modes:
                cal = section.calibration
                texts = _texts(data, cal.split, cal.samples)
                progress.info(f"calibration: {len(texts)} {cal.split} texts, {cal.method}")
                reader = _Reader(predictor, texts)
            if section.accuracy_aware.enabled:
                aa = section.accuracy_aware
                split = load_data(data.model_copy(update={"max_eval_samples": aa.samples}), ("validation",)).splits.get("validation")
                if split is None:
                    raise RecipeError("quantize: accuracy-aware int8 needs a data.validation split to measure on (the test split stays unseen)")
                scorer = _Scorer(predictor, split.texts, split.labels, None)
                timing = predictor.encode([max(split.texts, key=len)])

        for mode in int8_modes:
            name, file = MODES[mode]
            static = mode == "static"
            progress.step(f"quantize: {mode} int8 through ONNX Runtime" + (f" from the {section.optimize} graph" if fused else ""))

            def build(dst: Path, only: list[str] | None, exclude: list[str], static: bool = static) -> dict[str, Any]:
                return int8_onnx(int8_source, dst, static, section, reader, only, exclude)

            if scorer is not None and gate is not None:
                detail = accuracy_aware(int8_source, tmp / file, build, STATIC_OPS if static else DYNAMIC_OPS, scorer, gate,
                                        section.accuracy_aware.max_fp32_layers, timing)
            else:
                detail = build(tmp / file, None, [])
            if fused:
                detail["optimization_level"] = section.optimize
            if not static:
                detail["ort_graph"] = cpu_preoptimize(tmp / file)
            _add_variant(manifest, tmp, name, file, "int8", detail)

        if "fp16" in modes:
            progress.step("quantize: fp16 through Optimum's ORTOptimizer (O4: O3 fusions + fp16, for the GPU)")
            _add_optimized(manifest, tmp, src.file, "O4", "fp16", MODES["fp16"][1], "fp16", {"mode": "fp16"})

        (tmp / "_typed.onnx").unlink(missing_ok=True)
        # CPU default: the int8 model (dynamic first: it needs no calibration to stay valid),
        # else the optimized graph; GPU defaults: see _gpu_defaults.
        for candidate in ("int8", "int8-static", OPT_VARIANT):
            if candidate in manifest.variants:
                manifest.default_variant = candidate
                break
        _gpu_defaults(manifest, tmp)
        write_manifest(tmp, manifest)
        write_record(
            tmp, "quantize", quantize_key(bundle_dir, section, data, gate),
            {"bundle": (read_record(bundle_dir) or {}).get("key")}, section.model_dump(), {},
        )
    return manifest


def _gpu_defaults(manifest: Manifest, tmp: Path) -> None:
    """fp16 when there is one. Otherwise, when the CPU default is int8, fp32 rather than that
    graph: dynamic int8 (stored as ORT's CPU rewrite) and QOperator int8 are CPU-provider
    operators that a GPU session would run node by node on the CPU, with copies between
    devices, and CUDA runs a QDQ graph as fp32 with extra work. TensorRT does read a QDQ int8
    graph when it is symmetric and free of ORT contrib ops (tensorrt.int8_problems); such a
    variant is its default then."""
    if "fp16" in manifest.variants:
        manifest.backend_defaults["cuda"] = "fp16"
        manifest.backend_defaults["tensorrt"] = "fp16"
        return
    if manifest.variants[manifest.default_variant].precision != "int8":
        return
    from .tensorrt import int8_problems

    manifest.backend_defaults.setdefault("cuda", "fp32")
    readable = [v.name for v in manifest.variants.values() if v.precision == "int8" and not int8_problems(tmp / v.file)]
    manifest.backend_defaults.setdefault("tensorrt", readable[0] if readable else "fp32")


def cpu_preoptimize(path: Path) -> dict[str, Any]:
    """Replace a CPU-only model (dynamic int8: its quantized operators run on the CPU only)
    with ONNX Runtime's own EXTENDED-level rewrite of it for the CPU execution provider.

    Every session runs these fusions at load anyway; done once here, the runtime's session
    set-up finds nothing left to fuse and starts faster (0.044 s instead of 0.081 s for the
    quickstart int8 model on a Zen 5 core), with bit-identical outputs: the same rewrite,
    made earlier. EXTENDED, not ALL: the levels above it may bake in layouts for this
    machine's CPU (ORT warns so), which a bundle must not carry to another machine."""
    import onnxruntime as ort

    work = path.with_name(f"_{path.stem}.ortopt.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(work)
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        work.unlink(missing_ok=True)
        raise BundleError(f"{path.name}: ONNX Runtime could not optimize the quantized model ({first_line(e)})") from None
    work.replace(path)
    return {"level": "extended", "execution_provider": "CPUExecutionProvider", "onnxruntime": ort.__version__}


def _typed(src: Path, dst: Path) -> Path:
    """Symbolic shape inference over a fused graph, so the quantizer knows the type and shape of
    every tensor between contrib ops (ONNX's own inference stops at the first Attention node)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_optimization=True, auto_merge=True)
    except Exception as e:  # the symbolic inferencer raises bare Exceptions
        progress.info(f"shape inference on the fused graph failed ({str(e)[:120]}); quantizing with default types")
        return src
    return dst


def _texts(data: DataSection, split: str, n: int) -> list[str]:
    limit = {"train": "max_train_samples", "validation": "max_eval_samples"}[split]
    loaded = load_data(data.model_copy(update={limit: n}), (split,)).splits.get(split)
    if loaded is None or not loaded.texts:
        raise RecipeError(f"quantize: no {split} texts to calibrate on; set data.{split}")
    return loaded.texts


def _add_optimized(manifest: Manifest, tmp: Path, src_file: str, level: str, name: str, file: str, precision: str, extra: dict[str, Any]) -> None:
    """Optimize the fp32 model at `level` (Optimum) into `file` and record it as variant `name`."""
    work = tmp / f"_{name}"
    produced, detail = optimize_onnx(tmp, src_file, work, level)
    shutil.move(str(produced), tmp / file)
    shutil.rmtree(work)
    _add_variant(manifest, tmp, name, file, precision, {**extra, **detail})


def _add_variant(manifest: Manifest, tmp: Path, name: str, file: str, precision: str, detail: dict[str, Any]) -> None:
    onnx_io(tmp / file)  # a readable model, or a one-line error
    manifest.variants[name] = Variant(name, file, precision, details=detail)
    fp32 = manifest.variants["fp32"].file
    progress.info(f"{file}: {(tmp / file).stat().st_size / 2**20:.1f} MiB (fp32 {(tmp / fp32).stat().st_size / 2**20:.1f} MiB)")
