"""Execution backends: which ONNX Runtime providers a backend name asks for, and a check
that the session really runs on them.

onnxruntime silently falls back to the CPU when a GPU provider cannot load (a CUDA or
cuDNN mismatch, a CPU-only onnxruntime wheel). A backend here either runs where it was
asked to, or raises BackendUnavailable naming the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

from .errors import BackendUnavailable


@dataclass(frozen=True)
class Backend:
    name: str
    provider: str  # the provider that must end up first in the session
    options: tuple[tuple[str, Any], ...] = ()

    def providers(self) -> list[Any]:
        chain: list[Any] = [(self.provider, dict(self.options))] if self.options else [self.provider]
        if self.provider != "CPUExecutionProvider":
            chain.append("CPUExecutionProvider")  # for the few ops a GPU provider lacks
        return chain


BACKENDS = {
    "cpu": Backend("cpu", "CPUExecutionProvider"),
    "cuda": Backend("cuda", "CUDAExecutionProvider"),
    "tensorrt": Backend("tensorrt", "TensorrtExecutionProvider"),
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def check_available(backend: Backend) -> None:
    """Fail before building a session when this onnxruntime build lacks the provider."""
    available = ort.get_available_providers()
    if backend.provider not in available:
        hint = {
            "CUDAExecutionProvider": "install onnxruntime-gpu (pip install 'ftexport-runtime[gpu]') on a machine with CUDA",
            "TensorrtExecutionProvider": "install onnxruntime-gpu and TensorRT 10 (pip install 'ftexport-runtime[trt]')",
        }.get(backend.provider, "")
        raise BackendUnavailable(
            f"backend {backend.name!r} needs {backend.provider}, which this onnxruntime "
            f"({ort.__version__}) does not provide (it has: {', '.join(available)})" + (f"; {hint}" if hint else "")
        )


def check_session(session: ort.InferenceSession, backend: Backend) -> None:
    """Raise when ONNX Runtime built the session without the requested provider."""
    active = session.get_providers()
    if not active or active[0] != backend.provider:
        raise BackendUnavailable(
            f"backend {backend.name!r} asked for {backend.provider} but ONNX Runtime is running on "
            f"{', '.join(active) or 'nothing'} (a silent fallback: check the CUDA/cuDNN libraries with `ftexport doctor`)"
        )
