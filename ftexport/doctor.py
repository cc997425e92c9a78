"""`ftexport doctor`: what this machine can run, and for each backend it cannot, why.

A provider listed by onnxruntime is not proof it works (CUDA/cuDNN mismatches make ORT
fall back to the CPU silently), so each GPU provider is tried on a one-node model.
"""

from __future__ import annotations

import importlib.util
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from .core.errors import FtexportError, first_line
from .core.machine import gpu_driver
from .export import EXPORTERS, resolve_exporter


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def probe_provider(provider: str) -> tuple[bool, str]:
    """Build a session on `provider` and check ORT really uses it."""
    import numpy as np
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        hint = (
            "install onnxruntime-gpu (pip install 'ftexport[gpu]')"
            if provider == "CUDAExecutionProvider"
            else "install onnxruntime-gpu and TensorRT 10 from NVIDIA's index (pip install 'ftexport[trt]' --extra-index-url https://pypi.nvidia.com)"
        )
        return False, f"onnxruntime {ort.__version__} has no {provider}; {hint}"
    if hasattr(ort, "preload_dlls") and provider != "CPUExecutionProvider":
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - a failed preload shows up in the probe below
            pass
    with tempfile.TemporaryDirectory() as d:
        try:
            sess = ort.InferenceSession(str(_tiny_onnx(Path(d) / "p.onnx")), providers=[provider, "CPUExecutionProvider"])
            sess.run(None, {"x": np.ones((1, 4), dtype=np.float32)})
        except Exception as e:  # noqa: BLE001
            return False, f"{provider} failed to start: {first_line(e)}"
        active = sess.get_providers()
    if active[0] != provider:
        return False, f"{provider} is listed but ONNX Runtime fell back to {active[0]} (CUDA or cuDNN libraries missing or mismatched)"
    return True, "ok"


def engine_backend(gpu: dict[str, Any]) -> dict[str, Any]:
    """Can this machine build and run TensorRT engines (`export --trt`, backend tensorrt)?"""
    install = "pip install 'ftexport[trt]' --extra-index-url https://pypi.nvidia.com"
    for module, package in (("tensorrt", "tensorrt"), ("cuda", "cuda-bindings")):
        if importlib.util.find_spec(module) is None:
            return {"ok": False, "detail": f"the {package} Python package is not installed; {install}"}
    if not gpu["available"]:
        return {"ok": False, "detail": "TensorRT needs a CUDA GPU"}
    try:
        from ftexport_runtime.engines.tensorrt import current_fingerprint

        fp = current_fingerprint()
    except Exception as e:  # noqa: BLE001 - a broken TensorRT or CUDA install: say what it said
        return {"ok": False, "detail": f"TensorRT is installed but does not start: {first_line(e)}"}
    return {"ok": True, "detail": f"TensorRT {fp['tensorrt']} on {fp['gpu']} (sm {fp['compute_capability']})"}


def diagnose() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(), "packages": {}}
    for name in (
        "torch",
        "transformers",
        "optimum",
        "optimum-onnx",
        "peft",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "cuda-bindings",
        "tokenizers",
    ):
        info["packages"][name] = _version(name)
    gpu: dict[str, Any] = {"available": False}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            gpu = {
                "available": True,
                "name": props.name,
                "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "bf16": torch.cuda.is_bf16_supported(),
            }
            gpu["driver"] = gpu_driver()
        else:
            gpu["reason"] = f"torch {torch.__version__} sees no CUDA device"
    except ImportError:
        gpu["reason"] = "torch is not installed"
    info["gpu"] = gpu
    import onnxruntime as ort

    info["onnxruntime_providers"] = ort.get_available_providers()
    backends = {"cpu": {"ok": True, "detail": "CPUExecutionProvider"}}
    for name, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        ok, detail = probe_provider(provider)
        backends[name] = {"ok": ok, "detail": detail}
    backends["tensorrt-engine"] = engine_backend(gpu)
    backends["torch-cuda"] = {"ok": gpu["available"], "detail": "ok" if gpu["available"] else gpu.get("reason", "")}
    info["backends"] = backends
    info["exporters"] = {name: {"ok": (why := e.available()) is None, "detail": why or "ok"} for name, e in EXPORTERS.items()}
    try:
        info["exporters"]["auto"] = {"ok": True, "detail": resolve_exporter("auto").name}
    except FtexportError as e:
        info["exporters"]["auto"] = {"ok": False, "detail": str(e)}
    return info


def render(info: dict[str, Any]) -> str:
    lines = [f"python          {info['python']} ({info['machine']})"]
    for name, v in info["packages"].items():
        lines.append(f"{name:16s}{v or '-'}")
    g = info["gpu"]
    if g["available"]:
        lines.append(
            f"gpu             {g['name']} (sm {g['compute_capability']}, {g['memory_gib']} GiB, CUDA {g['cuda']}, cuDNN {g['cudnn']}, "
            f"driver {g.get('driver')})"
        )
    else:
        lines.append(f"gpu             none ({g.get('reason')})")
    lines.append("backends")
    for name, b in info["backends"].items():
        lines.append(f"  {'yes' if b['ok'] else 'no ':3s}  {name:16s}{'' if b['ok'] else b['detail']}")
    lines.append("exporters")
    for name, e in info.get("exporters", {}).items():
        if name == "auto":
            lines.append(f"  auto picks       {e['detail']}")
        else:
            lines.append(f"  {'yes' if e['ok'] else 'no ':3s}  {name:16s}{'' if e['ok'] else e['detail']}")
    return "\n".join(lines)
