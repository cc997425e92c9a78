"""Hugging Face Optimum, the first exporter: ONNX export (optimum.exporters.onnx), graph
optimization (ORTOptimizer, O1-O4) and the plain Optimum int8 baseline that `ftexport bench`
compares against. Optimum's ONNX exporter (optimum-onnx) pins transformers, so every import of
it is inside a function: this module loads on any stack, and `available()` says what is missing.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any

from ..core.errors import BundleError, ModelError, first_line
from ..core.machine import cpu_flags
from .graph import CONFIG_FILE, MODEL_FILE, quiet_exporters


class OptimumExporter:
    """optimum.exporters.onnx.main_export: dynamic batch and sequence axes, and for decoders
    the key/value cache (Optimum's -with-past tasks)."""

    name = "optimum"

    def available(self) -> str | None:
        """Why this exporter cannot run here (None when it can)."""
        import importlib.util

        if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.exporters.onnx") is None:
            return "optimum-onnx is not installed (pip install 'ftexport[optimum]')"
        return None

    def export(self, model_dir: Path, task: Any, tmp: Path, opset: int, trust_remote_code: bool) -> None:
        _optimum_export(model_dir, task, tmp, opset, trust_remote_code)


def _optimum_export(model_dir: Path, task: Any, tmp: Path, opset: int, trust_remote_code: bool) -> None:
    from optimum.exporters.onnx import main_export

    raw = tmp / "optimum"
    try:
        with quiet_exporters():
            main_export(
                str(model_dir),
                output=str(raw),
                task=task.optimum_task,
                opset=opset,
                device="cpu",
                do_validation=False,
                library_name="transformers",
                trust_remote_code=trust_remote_code,
            )
    except (ValueError, KeyError, OSError) as e:
        raise ModelError(f"{model_dir}: Optimum cannot export this model to ONNX ({first_line(e)})") from None
    shutil.move(str(raw / MODEL_FILE), tmp / MODEL_FILE)
    for extra in raw.glob(f"{MODEL_FILE}_data"):  # external data for >2 GB models
        shutil.move(str(extra), tmp / extra.name)
    shutil.rmtree(raw)


# ---- graph optimization through Optimum's ORTOptimizer ----------------------------------


def optimize_onnx(bundle_dir: Path, model_file: str, save_dir: Path, level: str) -> tuple[Path, dict[str, Any]]:
    """Optimum's optimization levels: O1 basic (constant folding, redundant nodes), O2 + the
    transformer fusions (attention, SkipLayerNorm, BiasGelu), O3 + fast GELU, O4 = O3 + fp16
    for the GPU (inputs stay int64 and logits float32, so callers see no difference)."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    if not (bundle_dir / CONFIG_FILE).is_file():
        raise BundleError(f"{bundle_dir}: graph optimization needs the model's config.json in the bundle; re-export it with this ftexport")
    for_gpu = level == "O4"
    cfg = AutoOptimizationConfig.with_optimization_level(level, for_gpu=for_gpu)
    save_dir.mkdir(parents=True, exist_ok=True)
    with quiet_exporters():
        optimizer = ORTOptimizer.from_pretrained(bundle_dir, file_names=[model_file])
        optimizer.optimize(save_dir=save_dir, optimization_config=cfg)
    produced = sorted(save_dir.glob("*.onnx"))
    if not produced:
        raise BundleError(f"{bundle_dir}: Optimum's optimizer produced no model at level {level}")
    return produced[0], {"optimization_level": level, "optimized_for": "gpu" if for_gpu else "cpu", "fp16": for_gpu}


# ---- the plain Optimum path, as a user would write it: the baseline ftexport must beat ----


def plain_optimum_int8(model_dir: Path, workdir: Path, threads: int | None = None) -> Any:
    """ORTModelForSequenceClassification export + ORTQuantizer dynamic int8 with the
    AutoQuantizationConfig preset for this CPU, defaults untouched. Returns the loaded
    ORTModel (called like a transformers model) for `ftexport bench`'s optimum-int8 row."""
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    flags = cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        cfg = AutoQuantizationConfig.arm64(is_static=False)
    elif "avx512_vnni" in flags:
        cfg = AutoQuantizationConfig.avx512_vnni(is_static=False)
    else:
        cfg = AutoQuantizationConfig.avx2(is_static=False)
    with quiet_exporters():
        model = ORTModelForSequenceClassification.from_pretrained(str(model_dir), export=True)
        model.save_pretrained(workdir / "fp32")
        ORTQuantizer.from_pretrained(model).quantize(save_dir=workdir / "int8", quantization_config=cfg)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads  # the same thread count as every other backend
        return ORTModelForSequenceClassification.from_pretrained(
            str(workdir / "int8"), file_name="model_quantized.onnx", session_options=opts
        )
