"""Test doubles for the two libraries no CI machine has: tensorrt and cuda-bindings.

They stand in at the API boundary only, so the code around the calls can be tested: which
calls the engine builder makes with which shapes and flags, and how the engine runner moves
arrays to and from "device" memory. The fake device memory is host memory (ctypes buffers)
and the fake engine computes a known function of its inputs, so a copy in the wrong place,
a wrong dtype or a wrong shape shows up in the numbers. Nothing here says TensorRT works:
that is what tests/test_gpu.py checks on a machine with TensorRT.
"""

from __future__ import annotations

import ctypes
import enum
import types
from typing import Any

import numpy as np

FAKE_VERSION = "10.99.0-fake"


class _Err(enum.Enum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class _Kind(enum.Enum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class FakeCudart:
    """cuda.bindings.runtime over host memory: every call returns (error, value...)."""

    cudaError_t = _Err
    cudaMemcpyKind = _Kind

    def __init__(self, gpu: str = "Fake GPU", cc: tuple[int, int] = (9, 0)):
        self.gpu, self.cc = gpu, cc
        self.buffers: dict[int, ctypes.Array] = {}
        self.mallocs = 0

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, Any]:
        return _Err.cudaSuccess, types.SimpleNamespace(name=self.gpu.encode() + b"\x00" * 8, major=self.cc[0], minor=self.cc[1])

    def cudaGetErrorName(self, err: Any) -> tuple[Any, bytes]:
        return _Err.cudaSuccess, err.name.encode()

    def cudaStreamCreate(self) -> tuple[Any, int]:
        return _Err.cudaSuccess, 7

    def cudaStreamSynchronize(self, stream: int) -> tuple[Any]:
        return (_Err.cudaSuccess,)

    def cudaMalloc(self, nbytes: int) -> tuple[Any, int]:
        buf = (ctypes.c_char * nbytes)()
        ptr = ctypes.addressof(buf)
        self.buffers[ptr] = buf
        self.mallocs += 1
        return _Err.cudaSuccess, ptr

    def cudaFree(self, ptr: int) -> tuple[Any]:
        self.buffers.pop(ptr, None)
        return (_Err.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: Any, stream: int) -> tuple[Any]:
        ctypes.memmove(dst, src, nbytes)
        return (_Err.cudaSuccess,)


class _Enum:
    def __init__(self, **values: Any):
        self.__dict__.update(values)


class FakeEngine:
    """An 'engine' whose logits are [sum of input_ids over unmasked tokens, number of tokens]."""

    def __init__(self, inputs: list[str], output: str = "logits"):
        self.names = [*inputs, output]
        self.inputs = inputs

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name in self.inputs else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "INT32" if name in self.inputs else "FLOAT"  # int32 ids: the runner must cast int64 feeds

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (self.shapes["input_ids"][0], 2)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        b, s = self.shapes["input_ids"]

        def read(name: str) -> np.ndarray:
            return np.ctypeslib.as_array((ctypes.c_int32 * (b * s)).from_address(self.addresses[name])).reshape(b, s)

        ids, mask = read("input_ids"), read("attention_mask")
        out = np.ctypeslib.as_array((ctypes.c_float * (b * 2)).from_address(self.addresses["logits"])).reshape(b, 2)
        out[:, 0] = (ids * mask).sum(1)
        out[:, 1] = mask.sum(1)
        return True


class FakeBuilder:
    def __init__(self, module: Any):
        self.module = module

    def create_network(self, flags: int) -> Any:
        net = types.SimpleNamespace(inputs=self.module.network_inputs)
        net.num_inputs = len(net.inputs)
        net.get_input = lambda i: types.SimpleNamespace(name=net.inputs[i])
        return net

    def create_builder_config(self) -> Any:
        return FakeConfig(self.module)

    def create_optimization_profile(self) -> Any:
        calls = self.module.calls

        class P:
            def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
                calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

        return P()

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        self.module.calls.append(("build", tuple(config.flags)))
        return None if self.module.fail_build else b"ENGINE:" + ",".join(config.flags).encode()


class FakeConfig:
    def __init__(self, module: Any):
        self.module, self.flags, self.cache = module, [], b""

    def set_memory_pool_limit(self, pool: str, n: int) -> None:
        self.module.calls.append(("workspace", n))

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def create_timing_cache(self, data: bytes) -> bytes:
        self.module.calls.append(("timing_cache_in", bytes(data)))
        return bytes(data)

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> None:
        self.cache = cache + b"+tuned"

    def add_optimization_profile(self, profile: Any) -> int:
        self.module.calls.append(("add_profile",))
        return 0

    def get_timing_cache(self) -> Any:
        return types.SimpleNamespace(serialize=lambda: self.cache)


def fake_tensorrt(network_inputs: list[str], parse_errors: list[str] | None = None, fail_build: bool = False) -> types.ModuleType:
    """A module that answers the TensorRT 10 calls ftexport makes, and records them in `.calls`."""
    m = types.ModuleType("tensorrt")
    m.__version__ = FAKE_VERSION
    m.calls = []
    m.network_inputs = network_inputs
    m.fail_build = fail_build
    m.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    m.Builder = lambda logger: FakeBuilder(m)
    m.MemoryPoolType = _Enum(WORKSPACE="WORKSPACE")
    m.BuilderFlag = _Enum(FP16="FP16", INT8="INT8")
    m.TensorIOMode = _Enum(INPUT="INPUT", OUTPUT="OUTPUT")
    m.nptype = lambda dtype: {"INT32": np.int32, "FLOAT": np.float32}[dtype]

    class Parser:
        def __init__(self, network: Any, logger: Any):
            self.errors = list(parse_errors or [])
            self.num_errors = len(self.errors)

        def parse_from_file(self, path: str) -> bool:
            m.calls.append(("parse", path))
            return not self.errors

        def get_error(self, i: int) -> Any:
            return types.SimpleNamespace(desc=lambda: self.errors[i])

    m.OnnxParser = Parser

    class Runtime:
        def __init__(self, logger: Any):
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            return FakeEngine([n for n in network_inputs]) if data.startswith(b"ENGINE:") else None

    m.Runtime = Runtime
    return m
