"""Export stages: model folder -> ONNX bundle (stage.py) through an exporter from the registry
below, added variants (quantize/, a registry of modes) and TensorRT engines (tensorrt.py).

An exporter has a `name`, `available()` (None, or why it cannot run here) and
`export(model_dir, task, out_dir, opset, trust_remote_code)`, which writes model.onnx (and its
external data) into out_dir. docs/extending.md says how to add one.
"""

from __future__ import annotations

from typing import Any

from .optimum import OptimumExporter

EXPORTERS: dict[str, Any] = {}


def register_exporter(exporter: Any) -> Any:
    if exporter.name in EXPORTERS:
        raise ValueError(f"exporter {exporter.name!r} is registered twice")
    EXPORTERS[exporter.name] = exporter
    return exporter


def exporter_names() -> tuple[str, ...]:
    return tuple(EXPORTERS)


register_exporter(OptimumExporter())
