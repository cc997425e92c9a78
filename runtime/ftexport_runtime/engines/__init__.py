"""Execution engines: what runs a bundle's model (ONNX Runtime, or a TensorRT engine) behind
one interface, and the backend names an application chooses from: cpu, cuda, tensorrt (the
bundle's TensorRT engine when it has one, else ONNX Runtime's TensorRT provider) and
ort-tensorrt (always ONNX Runtime's TensorRT provider, even beside engines).

An engine takes a dict of [batch, sequence] arrays (`input_types` says which inputs and
dtypes) and `run` returns its first output as float32; `providers` says where it runs. The
ONNX Runtime engine also has `run_outputs(names, feeds)`, the several outputs a decoder needs.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..errors import BackendUnavailable
from .ort import CPU, CUDA, TENSORRT, Backend


class Engine(Protocol):
    """What a Predictor needs from an engine (`engines.ort.OrtEngine`, `engines.tensorrt.EngineRunner`)."""

    output: str  # the output `run` returns

    @property
    def input_types(self) -> dict[str, Any]: ...  # each input the model takes and its numpy dtype

    @property
    def providers(self) -> list[str]: ...

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...


BACKENDS = {
    "cpu": Backend("cpu", CPU),
    "cuda": Backend("cuda", CUDA),
    # TensorRT takes what it can, CUDA the rest, the CPU what neither has
    "tensorrt": Backend("tensorrt", TENSORRT, fallbacks=(CUDA, CPU)),
    "ort-tensorrt": Backend("ort-tensorrt", TENSORRT, fallbacks=(CUDA, CPU), defaults="tensorrt"),
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name]
