"""`ftexport quantize`: add compressed variants to a bundle.

Reads a bundle, writes a new bundle holding the same files plus one model per mode. Modes are
plug-ins (`register_mode`); the built-in ones:

    dynamic         model.int8.onnx         int8 weights, activations scaled at run time (CPU),
                                            stored as ONNX Runtime's CPU rewrite of the graph
    static          model.int8-static.onnx  int8 weights and activations, ranges calibrated on
                                            training texts; QDQ (portable, TensorRT) or QOperator
    fp16 / O4       model.fp16.onnx         fp16, fused for ONNX Runtime CUDA (contrib ops: not for TensorRT)
    int8-block      model.int8-block.onnx   8-bit weight-only MatMuls (MatMulNBits, block 64), int8
                                            activations per block at run time: where dynamic int8
                                            loses too much (sentence embeddings)
    int4            model.int4.onnx         4-bit weight-only MatMuls (MatMulNBits, block 32): decoders

and, before them, `optimize` O1-O3: model.opt.onnx, fp32 fused by ORT's transformer optimizer
(through Optimum); int8 models are then made from it. int8 is ONNX Runtime's quantizer (int8.py);
an int8 model that misses the int8 gate can keep its most sensitive layers in fp32 (aware.py).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ftexport_runtime import Predictor
from ftexport_runtime.bundle import Bundle, Manifest, Variant, write_manifest

from ...core import progress
from ...core.artifacts import StageRecord, key_of, link_tree, make_key, stage_dir, unlinked
from ...core.errors import BundleError, RecipeError, first_line
from ...data import fingerprint, load_data
from ...tasks import TASKS, get_task
from ..fusion import optimize_graph
from ..graph import onnx_io
from .aware import Scorer, accuracy_aware
from .int8 import DYNAMIC_OPS, STATIC_OPS, Reader, cpu_preoptimize, int8_onnx, typed, with_constant_weights

OPT_VARIANT, OPT_FILE = "opt", "model.opt.onnx"

# What a quantize stage writes beyond its settings, part of its key so that stages written
# before a change are redone: 2 = the dynamic int8 file is ORT's CPU rewrite (cpu_preoptimize)
# and GPU backends default to fp32; 3 = a tied head (MatMul of a transposed embedding) is
# quantized too, and weight-only variants record min_onnxruntime; 4 = int4 keeps an 8-bit head;
# 5 = with quantize.optimize, weight-only variants are made from the fused graph.
# The ORT version is in the key too: the file is its output.
OUTPUT_FORMAT = 5


@dataclass(frozen=True)
class QuantMode:
    """One quantization mode: the variant it adds and how it is made. `int8` modes are built by
    ONNX Runtime's quantizer from the fp32 (or optimized) graph, so accuracy-aware int8 applies
    to them; the others build their file themselves (`build`)."""

    name: str  # the recipe's quantize.modes value
    variant: str  # the variant's name in the manifest
    file: str
    precision: str  # fp32, fp16 or int8
    int8: bool = False
    static: bool = False  # calibrated on texts (needs data)
    cpu_rewrite: bool = False  # stored as ONNX Runtime's own CPU rewrite (CPU-only operators)
    cpu_default_rank: int | None = None  # lower: preferred as the CPU default variant
    constant_weights: bool = False  # build() quantizes constant weights: give it tied weights folded

    @property
    def ops(self) -> list[str]:
        return STATIC_OPS if self.static else DYNAMIC_OPS

    def build(self, manifest: Manifest, tmp: Path, src_file: str) -> None:
        """Make this mode's variant (non-int8 modes)."""
        raise NotImplementedError(self.name)


class Fp16Mode(QuantMode):
    def build(self, manifest: Manifest, tmp: Path, src_file: str) -> None:
        progress.step("quantize: fp16 (O4: O3 fusions + fp16, for the GPU)")
        _add_optimized(manifest, tmp, src_file, "O4", self.variant, self.file, "fp16", {"mode": "fp16"})


@dataclass(frozen=True)
class WeightOnlyMode(QuantMode):
    """Weight-only: every MatMul's weights in symmetric blocks of `block_size` along the input
    dimension, as ONNX Runtime's MatMulNBits operator. Activations stay float in the graph; with
    accuracy level 4 the CPU kernel quantizes them to int8 per block at run time and multiplies
    in int8, so an outlier channel costs precision in its own block only (dynamic int8 scales a
    whole activation tensor at once). Embedding tables (Gather) stay fp32. With `head_bits`, the
    MatMuls that write a graph output (a language model's head) get that many bits instead: the
    head turns every rounding error of its weights into a logit error; on SmolLM2 it was 40% of
    all-4-bit's error (docs/design-notes.md, "Weight-only quantization")."""

    bits: int = 4
    block_size: int = 32
    accuracy_level: int = 4
    head_bits: int | None = None

    def build(self, manifest: Manifest, tmp: Path, src_file: str) -> None:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        progress.step(f"quantize: {self.bits}-bit weight-only through ONNX Runtime's MatMulNBits quantizer (block {self.block_size})")
        log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")  # one INFO line per node
        level = log.level
        log.setLevel(logging.WARNING)
        try:
            model = onnx.load(str(tmp / src_file))
            matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
            for i, n in enumerate(matmuls):
                n.name = n.name or f"MatMul_{i}"  # the quantizer picks nodes by name
            outputs = {o.name for o in model.graph.output}
            head = [n.name for n in matmuls if outputs.intersection(n.output)]
            head_bits = self.head_bits if self.head_bits not in (None, self.bits) else None
            if head_bits and not head:
                progress.info(f"    no MatMul writes a graph output (the head): every MatMul gets {self.bits} bits")
                head_bits = None
            # the head first, at its own width; the second pass then finds MatMulNBits there, not MatMul
            others = [n.name for n in matmuls if n.name not in head]
            for bits, skip in ([(head_bits, others)] if head_bits else []) + [(self.bits, [])]:
                quantizer = MatMulNBitsQuantizer(
                    model,
                    bits=bits,
                    block_size=self.block_size,
                    is_symmetric=True,
                    accuracy_level=self.accuracy_level,
                    nodes_to_exclude=skip,
                    op_types_to_quantize=("MatMul",),
                )
                quantizer.process()
                model = quantizer.model.model
            onnx.save(model, str(tmp / self.file))
        except Exception as e:  # the quantizer raises bare Exceptions
            raise BundleError(f"{src_file}: ONNX Runtime's MatMulNBits quantizer failed ({first_line(e)})") from None
        finally:
            log.setLevel(level)
        written = onnx.load(str(tmp / self.file), load_external_data=False).graph
        ops = [n.op_type for n in written.node]
        # what the head really got (a head without constant weights stays float)
        heads = [n for n in written.node if n.op_type == "MatMulNBits" and outputs.intersection(n.output)]
        got = {a.i for n in heads for a in n.attribute if a.name == "bits"}
        head_bits = next((b for b in got if b != self.bits), None)
        if "MatMulNBits" not in ops:  # a variant identical to fp32 would pass every gate and mislead
            (tmp / self.file).unlink()
            why = f" (its {ops.count('Gemm')} Gemm nodes, as GPT-2's Conv1D layers export, are not MatMuls)" if "Gemm" in ops else ""
            raise BundleError(f"{src_file}: {self.name} found no MatMul with constant weights to quantize{why}; use quantize mode dynamic")
        _add_variant(
            manifest,
            tmp,
            self.variant,
            self.file,
            self.precision,
            {
                "mode": self.name,
                "source": src_file.removeprefix("_folded_"),
                "weights": f"int{self.bits} (MatMulNBits)" + (f", head int{head_bits}" if head_bits else ""),
                "block_size": self.block_size,
                "symmetric": True,
                "accuracy_level": self.accuracy_level,
                "operators": ["MatMul"],
                **({"head": {"nodes": head, "bits": head_bits}} if head_bits else {}),
                # MatMulNBits' CPU kernel: 4-bit since onnxruntime 1.17, 8-bit on x86 since 1.22
                "min_onnxruntime": "1.22" if 8 in (self.bits, head_bits) else "1.17",
            },
        )


MODES: dict[str, QuantMode] = {}


def register_mode(mode: QuantMode) -> QuantMode:
    if mode.name in MODES:
        raise ValueError(f"quantization mode {mode.name!r} is registered twice")
    MODES[mode.name] = mode
    return mode


def mode_names() -> tuple[str, ...]:
    return tuple(MODES)


register_mode(QuantMode("dynamic", "int8", "model.int8.onnx", "int8", int8=True, cpu_rewrite=True, cpu_default_rank=0))
register_mode(QuantMode("static", "int8-static", "model.int8-static.onnx", "int8", int8=True, static=True, cpu_default_rank=1))
register_mode(Fp16Mode("fp16", "fp16", "model.fp16.onnx", "fp16"))
# int8 weights in blocks of 64 with per-block int8 activations: on all-MiniLM-L6-v2 embeddings
# it holds min cosine 0.996 where dynamic int8 falls to 0.961 (docs/results/embeddings-*.json)
register_mode(
    WeightOnlyMode(
        "int8-block", "int8-block", "model.int8-block.onnx", "int8", cpu_default_rank=2, constant_weights=True, bits=8, block_size=64
    )
)
# int4 with an 8-bit language-model head, as llama.cpp's 4-bit formats keep output.weight wider
# (on SmolLM2 the 4-bit head alone cost most of int4's error; docs/design-notes.md)
register_mode(
    WeightOnlyMode("int4", "int4", "model.int4.onnx", "int4", cpu_default_rank=3, constant_weights=True, bits=4, block_size=32, head_bits=8)
)


def quantize_key(bundle_dir: Path, section: Any, data: Any = None, gate: Any = None) -> str:
    import onnxruntime as ort

    needs_data = any(MODES[m].static for m in section.modes) or section.accuracy_aware.enabled
    return make_key(
        "quantize",
        key_of(bundle_dir) or str(bundle_dir.resolve()),
        section.model_dump(),
        OUTPUT_FORMAT,
        ort.__version__,
        fingerprint(data) if needs_data and data is not None else None,
        gate.model_dump() if gate is not None and section.accuracy_aware.enabled else None,
    )


def quantize(bundle_dir: str | Path, output: str | Path, section: Any, data: Any = None, gate: Any = None) -> Manifest:
    """Write `output`: the bundle at `bundle_dir` plus the variants `section` (the recipe's
    quantize section) asks for.

    `data` (the recipe's) feeds static calibration and the accuracy-aware loop; `gate` (the
    recipe's int8 gate) is what the accuracy-aware loop must pass."""
    bundle_dir, output = Path(bundle_dir), Path(output)
    modes = [MODES[m] for m in dict.fromkeys(section.modes)]
    if section.optimize == "O4" and not any(m.precision == "fp16" for m in modes):
        modes.append(MODES["fp16"])  # O4 is Optimum's fp16 level: it makes the fp16 variant
    if not modes and not section.optimize:
        raise RecipeError("quantize: nothing to do; give a mode (" + ", ".join(MODES) + ") or an optimization level (O1-O4)")
    int8_modes = [m for m in modes if m.int8]
    calibrated = any(m.static for m in modes)
    if calibrated and (data is None or (data.hub is None and data.split_path(section.calibration.split) is None)):
        raise RecipeError(
            f"quantize: static int8 needs calibration data; give a recipe whose data.{section.calibration.split} split exists (--recipe R)"
        )
    if section.accuracy_aware.enabled and (data is None or gate is None or not int8_modes):
        raise RecipeError("quantize: accuracy-aware int8 needs a recipe (validation texts and the int8 gate) and an int8 mode")

    bundle = Bundle.open(bundle_dir)  # refuses a tampered or truncated model before any work
    task = get_task(bundle.manifest.task)
    unsupported = [m.name for m in modes if m.name not in task.quantize_modes] + (
        [f"optimize {section.optimize}"] if section.optimize and not task.graph_optimization else []
    )
    if unsupported:
        raise RecipeError(
            f"quantize: a {task.name} bundle takes {', '.join(task.quantize_modes)} only, not {', '.join(unsupported)} "
            f"(use --mode {task.quantize_modes[0]})"
        )
    if section.accuracy_aware.enabled and not task.accuracy_aware:
        able = ", ".join(t.name for t in TASKS.values() if t.accuracy_aware)
        raise RecipeError(
            f"quantize.accuracy_aware: supported for {able} only, not {task.name}; "
            "turn it off (validate's int8 gate still judges the int8 model)"
        )
    src = bundle.variant("fp32")
    onnx_io(bundle.path_of(src.file))
    manifest = bundle.manifest
    fused = section.optimize in ("O1", "O2", "O3")  # the CPU levels; O4 is the fp16 variant
    needs_texts = calibrated or section.accuracy_aware.enabled
    predictor = Predictor(bundle, variant="fp32") if (needs_texts and data is not None) else None
    with stage_dir(output) as tmp:
        link_tree(bundle_dir, tmp)
        int8_source = tmp / src.file
        if fused:
            progress.step(f"quantize: graph optimization {section.optimize} (ONNX Runtime's transformer optimizer)")
            _add_optimized(manifest, tmp, src.file, section.optimize, OPT_VARIANT, OPT_FILE, "fp32", {})
            int8_source = tmp / OPT_FILE
            if int8_modes:
                int8_source = typed(int8_source, tmp / "_typed.onnx")
        # quantizers take constant weights only: a tied head (MatMul of a Transpose) gets its own.
        # Weight-only modes start from the fused graph too when there is one: at batch 1 on short
        # texts the per-node cost is most of the time, and a fused Attention keeps its weights fp32
        weights_source = with_constant_weights(tmp / (OPT_FILE if fused else src.file), tmp).name
        int8_source = with_constant_weights(int8_source, tmp) if int8_modes else int8_source

        reader = scorer = timing = None
        if predictor is not None and data is not None:
            if calibrated:
                cal = section.calibration
                texts = _texts(data, cal.split, cal.samples)
                progress.info(f"calibration: {len(texts)} {cal.split} texts, {cal.method}")
                reader = Reader(predictor, texts)
            if section.accuracy_aware.enabled:
                aa = section.accuracy_aware
                split = load_data(data.model_copy(update={"max_eval_samples": aa.samples}), ("validation",)).splits.get("validation")
                if split is None:
                    raise RecipeError(
                        "quantize: accuracy-aware int8 needs a data.validation split to measure on (the test split stays unseen)"
                    )
                scorer = Scorer(predictor, split.texts, split.labels, None)
                timing = predictor.encode([max(split.texts, key=len)])

        for mode in modes:
            unlinked(tmp / mode.file)  # made again here: a new file, not a write into the source bundle's
            if not mode.int8:
                mode.build(manifest, tmp, weights_source if mode.constant_weights else src.file)
                continue
            progress.step(f"quantize: {mode.name} int8 through ONNX Runtime" + (f" from the {section.optimize} graph" if fused else ""))

            def build(dst: Path, only: list[str] | None, exclude: list[str], static: bool = mode.static) -> dict[str, Any]:
                return int8_onnx(int8_source, dst, static, section, reader, only, exclude)

            if scorer is not None and gate is not None:
                detail = accuracy_aware(
                    int8_source, tmp / mode.file, build, mode.ops, scorer, gate, section.accuracy_aware.max_fp32_layers, timing
                )
            else:
                detail = build(tmp / mode.file, None, [])
            if fused:
                detail["optimization_level"] = section.optimize
            if mode.cpu_rewrite:
                detail["ort_graph"] = cpu_preoptimize(tmp / mode.file)
            _add_variant(manifest, tmp, mode.variant, mode.file, mode.precision, detail)

        for scratch in [tmp / "_typed.onnx", *tmp.glob("_folded_*")]:
            scratch.unlink(missing_ok=True)
        # CPU default: an int8 model (dynamic first: it needs no calibration to stay valid),
        # else the optimized graph; GPU defaults: see _gpu_defaults.
        ranked = sorted((m for m in MODES.values() if m.cpu_default_rank is not None), key=lambda m: m.cpu_default_rank or 0)
        for candidate in [m.variant for m in ranked] + [OPT_VARIANT]:
            if candidate in manifest.variants:
                manifest.default_variant = candidate
                break
        _gpu_defaults(manifest, tmp)
        write_manifest(tmp, manifest)
        StageRecord("quantize", quantize_key(bundle_dir, section, data, gate), {"bundle": key_of(bundle_dir)}, section.model_dump()).write(
            tmp
        )
    return manifest


def _gpu_defaults(manifest: Manifest, tmp: Path) -> None:
    """CUDA: fp16 when there is one. Otherwise, when the CPU default is int8, fp32 rather than
    that graph: dynamic int8 (stored as ORT's CPU rewrite) and QOperator int8 are CPU-provider
    operators that a GPU session would run node by node on the CPU, with copies between
    devices, and CUDA runs a QDQ graph as fp32 with extra work.

    TensorRT (ONNX Runtime's provider): a graph its parser reads, whatever else the bundle holds:
    a symmetric QDQ int8 graph free of ORT contrib ops (tensorrt.int8_problems) when there is one,
    else fp32; never ONNX Runtime's own graphs (the O4 fp16 and O1-O3 graphs are full of contrib
    ops such as Attention and SkipLayerNormalization, the dynamic int8 file is ORT's CPU rewrite)."""
    from ..tensorrt import int8_problems

    if "fp16" in manifest.variants:
        manifest.backend_defaults["cuda"] = "fp16"
    elif manifest.variants[manifest.default_variant].precision == "int8":
        manifest.backend_defaults.setdefault("cuda", "fp32")
    if manifest.default_variant == "fp32" and "fp16" not in manifest.variants:
        return  # fp32 alone: already every backend's default
    readable = [v.name for v in manifest.variants.values() if v.precision == "int8" and not int8_problems(tmp / v.file)]
    manifest.backend_defaults["tensorrt"] = readable[0] if readable else "fp32"


def portable_int8(bundle: Bundle, variant: Variant, dst: Path, texts: list[str]) -> dict[str, Any]:
    """The plain quantizer output a dynamic int8 variant stored as ONNX Runtime's CPU rewrite
    (`ort_graph`) was made from: rebuilt from the bundle's fp32 (or opt) graph with the settings
    the manifest records, and refused unless it answers `texts` as the variant does. The rewrite
    holds operators and attributes of the onnxruntime that wrote it, which an older onnxruntime
    (inside a Triton release, say) may not read; the quantizer's output holds standard int8 ops."""
    import numpy as np
    import onnxruntime as ort

    d, m = variant.details, bundle.manifest
    if d.get("mode") != "dynamic" or not d.get("ort_graph"):
        raise BundleError(f"variant {variant.name!r} is not ONNX Runtime's rewrite of dynamic int8: it is portable as it is")
    source = OPT_VARIANT if d.get("optimization_level") else "fp32"
    if source not in m.variants:
        raise BundleError(
            f"{bundle.root}: rebuilding a portable {variant.name} graph needs the bundle's {source} variant, which this bundle "
            "does not carry (packed with --variants?); use the bundle it was packed from"
        )
    section = SimpleNamespace(per_channel=d.get("per_channel", True), reduce_range=d.get("reduce_range", False))
    exclude = list((d.get("accuracy_aware") or {}).get("kept_fp32_nodes") or [])
    with tempfile.TemporaryDirectory(prefix="ftexport-portable-") as work:
        src = bundle.path_of(m.variants[source].file)
        if source == OPT_VARIANT:  # as quantize did: the quantizer reads the fused graph through symbolic shape inference
            src = typed(src, Path(work) / "typed.onnx")
        int8_onnx(with_constant_weights(src, Path(work)), dst, False, section, None, None, exclude)
    feeds = Predictor(bundle, variant=variant.name).encode(texts)
    want = ort.InferenceSession(str(bundle.path_of(variant.file)), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    diff = float(np.abs(np.asarray(want, np.float32) - np.asarray(got, np.float32)).max())
    if diff > 1e-5:
        dst.unlink(missing_ok=True)
        raise BundleError(
            f"the rebuilt plain int8 graph answers differently from variant {variant.name!r} (max |diff| {diff:.3g}; "
            f"this onnxruntime's quantizer is {ort.__version__}, the variant's was {d['ort_graph'].get('onnxruntime')}): "
            "ship the variant as it is, on an onnxruntime at least as new as the one that wrote it"
        )
    return {
        "portable_of": variant.name,
        "made_by": f"onnxruntime.quantization {ort.__version__}",
        "checked_texts": len(texts),
        "max_diff": diff,
    }


def _texts(data: Any, split: str, n: int) -> list[str]:
    limit = {"train": "max_train_samples", "validation": "max_eval_samples"}[split]
    loaded = load_data(data.model_copy(update={limit: n}), (split,)).splits.get(split)
    if loaded is None or not loaded.texts:
        raise RecipeError(f"quantize: no {split} texts to calibrate on; set data.{split}")
    return loaded.texts


def _add_optimized(
    manifest: Manifest, tmp: Path, src_file: str, level: str, name: str, file: str, precision: str, extra: dict[str, Any]
) -> None:
    """Optimize the fp32 model at `level` (Optimum) into `file` and record it as variant `name`."""
    work = tmp / f"_{name}"
    produced, detail = optimize_graph(tmp, src_file, work, level)
    shutil.move(str(produced), unlinked(tmp / file))
    shutil.rmtree(work)
    _add_variant(manifest, tmp, name, file, precision, {**extra, **detail})


def _add_variant(manifest: Manifest, tmp: Path, name: str, file: str, precision: str, detail: dict[str, Any]) -> None:
    onnx_io(tmp / file)  # a readable model, or a one-line error
    exporter = manifest.variants["fp32"].details.get("exporter")  # the exporter of the graph this file was made from
    manifest.variants[name] = Variant(name, file, precision, details={**({"exporter": exporter} if exporter else {}), **detail})
    fp32 = manifest.variants["fp32"].file
    progress.info(f"{file}: {(tmp / file).stat().st_size / 2**20:.1f} MiB (fp32 {(tmp / fp32).stat().st_size / 2**20:.1f} MiB)")
