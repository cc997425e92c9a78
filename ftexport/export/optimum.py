"""Hugging Face Optimum, the first exporter: ONNX export (optimum.exporters.onnx) and the plain
Optimum int8 baseline that `ftexport bench`
compares against. Optimum's ONNX exporter (optimum-onnx) pins transformers, so every import of
it is inside a function: this module loads on any stack, and `available()` says what is missing.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any

from ..core.errors import ModelError, first_line
from ..core.machine import cpu_flags
from .graph import MODEL_FILE, quiet_exporters


class OptimumExporter:
    """optimum.exporters.onnx.main_export: dynamic batch and sequence axes, and for decoders
    the key/value cache (Optimum's -with-past tasks)."""

    name = "optimum"

    def available(self) -> str | None:
        """Why this exporter cannot run here (None when it can): optimum-onnx missing, or a
        transformers outside the range it declares (0.1.0: transformers<4.58)."""
        from importlib import metadata

        from packaging.requirements import Requirement

        try:
            requires = metadata.requires("optimum-onnx") or []
        except metadata.PackageNotFoundError:
            return "optimum-onnx is not installed (pip install 'ftexport[optimum]', which needs transformers<4.58)"
        installed = metadata.version("transformers")
        for line in requires:
            req = Requirement(line)
            if req.name == "transformers" and not req.marker and installed not in req.specifier:
                return (
                    f"optimum-onnx {metadata.version('optimum-onnx')} supports transformers{req.specifier}, "
                    f"and this environment has transformers {installed}"
                )
        return None

    def supports(self, task: Any) -> str | None:
        if task.optimum_task is None:
            return f"Optimum's exporter has no task that ends the graph as {task.name} needs (it exports the encoder's hidden states)"
        return None

    def export(self, model_dir: Path, task: Any, tmp: Path, opset: int, trust_remote_code: bool) -> dict[str, Any]:
        from importlib import metadata

        _optimum_export(model_dir, task, tmp, opset, trust_remote_code)
        return {"exporter": self.name, "optimum-onnx": metadata.version("optimum-onnx"), "opset": opset}


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
