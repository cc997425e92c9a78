"""The torch exporter: `torch.onnx.export` on any transformers version, the second exporter
beside Optimum (whose ONNX exporter pins transformers below 5).

What is traced comes from the task (`Task.onnx_module`): encoders through the TorchScript
exporter, as Optimum itself does, so the graph is the pattern ONNX Runtime's transformer
optimizer fuses (attention, SkipLayerNorm, BiasGelu) and a bundle matches Optimum's speed;
decoders with their key/value cache through the dynamo exporter (`torch.export` with dynamic
dims), which follows a transformers Cache object built inside the graph where TorchScript
tracing cannot. docs/design-notes.md says why each.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from ..core import progress
from ..core.errors import ModelError, first_line
from ..core.hf import load_tokenizer
from .graph import MODEL_FILE, quiet_exporters

DYNAMO_MIN_OPSET = 18  # the dynamo exporter's translation starts at opset 18


class TorchExporter:
    name = "torch"

    def available(self) -> str | None:
        """Why this exporter cannot run here (None when it can)."""
        for module, package in (("torch", "torch"), ("onnxscript", "onnxscript")):
            if importlib.util.find_spec(module) is None:
                return f"{package} is not installed (pip install {package})"
        return None

    def supports(self, task: Any) -> str | None:
        return None  # every task says what to trace (Task.onnx_module)

    def export(self, model_dir: Path, task: Any, tmp: Path, opset: int, trust_remote_code: bool) -> dict[str, Any]:
        import torch

        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type", "?")
        model = task.load_for_export(model_dir, trust_remote_code)
        tokenizer = task.prepare_tokenizer(load_tokenizer(model_dir, "model dir"))
        spec = task.onnx_module(model, tokenizer)
        if spec.dynamo and opset < DYNAMO_MIN_OPSET:
            progress.info(
                f"torch exporter: the dynamo exporter writes opset {DYNAMO_MIN_OPSET} or newer; using {DYNAMO_MIN_OPSET} instead of {opset}"
            )
            opset = DYNAMO_MIN_OPSET
        path = tmp / MODEL_FILE
        try:
            with quiet_exporters(), torch.no_grad():
                if spec.dynamo:
                    torch.onnx.export(
                        spec.module,
                        spec.args,
                        str(path),
                        input_names=spec.input_names,
                        output_names=spec.output_names,
                        dynamic_shapes=spec.dynamic_shapes,
                        opset_version=opset,
                        dynamo=True,
                        external_data=_large(model),
                    )
                else:
                    torch.onnx.export(
                        spec.module,
                        spec.args,
                        str(path),
                        input_names=spec.input_names,
                        output_names=spec.output_names,
                        dynamic_axes=spec.dynamic_axes,
                        opset_version=opset,
                        dynamo=False,
                        do_constant_folding=True,
                    )
        except Exception as e:  # torch.export and the exporters raise many kinds; the first line says which
            raise ModelError(
                f"{model_dir}: the torch exporter cannot trace this {model_type} model ({type(e).__name__}: {first_line(e)}); "
                "no bundle was written"
            ) from None
        _check_loads(path, model_dir, model_type)
        return {"exporter": self.name, "torch": torch.__version__, "mode": "dynamo" if spec.dynamo else "torchscript", "opset": opset}


def _large(model: Any) -> bool:
    """Weights past ONNX's 2 GB protobuf limit go to an external data file."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8 * 2**30


def _check_loads(path: Path, model_dir: Path, model_type: str) -> None:
    """ONNX Runtime must read what was written (an op the exporter emitted for a newer opset
    is found here, not at the first prediction)."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's own Fail/InvalidGraph types
        raise ModelError(
            f"{model_dir}: the torch exporter wrote a graph ONNX Runtime cannot load for this {model_type} model "
            f"({first_line(e)}); no bundle was written"
        ) from None
