"""Test doubles for the two libraries no CI machine has: tensorrt and cuda-bindings.

They stand in at the API boundary only, so the code around the calls can be tested: which
calls the engine builder makes with which shapes and flags, and how the engine runner moves
arrays to and from "device" memory. The fake device memory is host memory (ctypes buffers)
and the fake engine computes a known function of its inputs, so a copy in the wrong place,
a wrong dtype or a wrong shape shows up in the numbers. Nothing here says TensorRT works:
that is what tests/test_gpu.py checks on a machine with TensorRT.

The double acts as one TensorRT release (`fake_tensorrt(version=...)`), and refuses what that
release refuses, as the real library does (a double that accepts a call the real library
refuses hides a bug):
- 10.x (10.0-10.11, `FAKE_VERSION`): the precision builder flags (BuilderFlag.FP16, INT8, ...)
  exist; a network is weakly typed unless created with NetworkDefinitionCreationFlag.
  STRONGLY_TYPED (bit 1 there), and a strongly typed network refuses precision flags at build.
- 10.12 and later 10.x: the same enums (the flags are deprecated, not removed).
- 11.x (`TRT11_VERSION`): BuilderFlag has no FP16, BF16, INT8, FP8, INT4, FP4 and no precision
  constraints (the attribute does not exist); every network is strongly typed, and
  STRONGLY_TYPED (bit 0 there, EXPLICIT_BATCH is gone) is accepted and ignored.
Both: `create_timing_cache` gives None for bytes that are no timing cache (`CORRUPT_CACHE`),
`set_timing_cache(cache, ignore_mismatch=False)` returns False and attaches nothing for a
cache made on another GPU or TensorRT (`foreign_cache`), `get_timing_cache` returns None while
none is attached, and `execute_async_v3` fails unless every input and output tensor has an address.
"""

from __future__ import annotations

import ctypes
import enum
import types
from typing import Any

import numpy as np

FAKE_VERSION = "10.11.0-fake"  # the default double: a TensorRT 10 that still has the precision flags
TRT10_STRONG_VERSION = "10.12.0-fake"  # flags deprecated: ftexport builds strongly typed from here on
TRT11_VERSION = "11.4.0-fake"  # flags removed, strong typing always on
CORRUPT_CACHE = b"CORRUPT not a timing cache"
_FOREIGN = b"FOREIGN:"
_PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4")


def foreign_cache(body: bytes = b"tuned-elsewhere") -> bytes:
    """A serialized timing cache made on another GPU (its device header does not match here)."""
    return _FOREIGN + body


class _Err(enum.Enum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidResourceHandle = 400


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
        self.streams: set[int] = set()  # created and not destroyed
        self.destroyed: list[int] = []
        self._next_stream = 7

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, Any]:
        return _Err.cudaSuccess, types.SimpleNamespace(name=self.gpu.encode() + b"\x00" * 8, major=self.cc[0], minor=self.cc[1])

    def cudaGetErrorName(self, err: Any) -> tuple[Any, bytes]:
        return _Err.cudaSuccess, err.name.encode()

    def cudaStreamCreate(self) -> tuple[Any, int]:
        stream, self._next_stream = self._next_stream, self._next_stream + 1
        self.streams.add(stream)
        return _Err.cudaSuccess, stream

    def cudaStreamDestroy(self, stream: int) -> tuple[Any]:
        if stream not in self.streams:  # destroying twice, or a stream that never was
            return (_Err.cudaErrorInvalidResourceHandle,)
        self.streams.remove(stream)
        self.destroyed.append(stream)
        return (_Err.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[Any]:
        return (_Err.cudaSuccess if stream in self.streams else _Err.cudaErrorInvalidResourceHandle,)

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
        if stream not in self.streams:
            return (_Err.cudaErrorInvalidResourceHandle,)
        ctypes.memmove(dst, src, nbytes)
        return (_Err.cudaSuccess,)


class _Enum:
    def __init__(self, **values: Any):
        self.__dict__.update(values)


class FakeEngine:
    """An 'engine' whose logits are [sum of input_ids over unmasked tokens, number of tokens];
    any further output (`extra_outputs`) is [batch, sequence, 3] of the token count."""

    def __init__(self, inputs: list[str], output: str = "logits", extra_outputs: tuple[str, ...] = ()):
        self.names = [*inputs, output, *extra_outputs]
        self.inputs = inputs
        self.output = output

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
        self.errors: list[str] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if name not in self.engine.inputs:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        b, s = self.shapes["input_ids"]
        return (b, 2) if name == self.engine.output else (b, s, 3)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.engine.names:
            return False
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        # TensorRT's enqueueV3 refuses to run while any I/O tensor has no address (or no shape)
        unset = [n for n in self.engine.names if not self.addresses.get(n)]
        unshaped = [n for n in self.engine.inputs if n not in self.shapes]
        if unset or unshaped:
            self.errors.append(f"Neither address or allocator is set for tensor(s) {unset + unshaped}")
            return False
        b, s = self.shapes["input_ids"]

        def read(name: str) -> np.ndarray:
            return np.ctypeslib.as_array((ctypes.c_int32 * (b * s)).from_address(self.addresses[name])).reshape(b, s)

        ids, mask = read("input_ids"), read("attention_mask")
        out = np.ctypeslib.as_array((ctypes.c_float * (b * 2)).from_address(self.addresses[self.engine.output])).reshape(b, 2)
        out[:, 0] = (ids * mask).sum(1)
        out[:, 1] = mask.sum(1)
        for name in self.engine.names[len(self.engine.inputs) + 1 :]:
            extra = np.ctypeslib.as_array((ctypes.c_float * (b * s * 3)).from_address(self.addresses[name]))
            extra[:] = np.repeat(mask.sum(1), s * 3)
        return True


class FakeTimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self) -> memoryview:  # an IHostMemory: a buffer, read with bytes()
        return memoryview(self.data)


class FakeBuilder:
    def __init__(self, module: Any):
        self.module = module

    def create_network(self, flags: int) -> Any:
        m = self.module
        strong_bit = 1 << int(m.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        known = sum(1 << int(f) for f in m.NetworkDefinitionCreationFlag)
        if flags & ~known:
            raise TypeError(f"create_network: unknown NetworkDefinitionCreationFlag bits {flags & ~known:#x}")
        net = types.SimpleNamespace(inputs=m.network_inputs, strongly_typed=m.major >= 11 or bool(flags & strong_bit))
        net.num_inputs = len(net.inputs)
        net.get_input = lambda i: types.SimpleNamespace(name=net.inputs[i])
        m.calls.append(("network", "strongly-typed" if net.strongly_typed else "weakly-typed"))
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
        precision = [f for f in config.flags if f in _PRECISION_FLAGS]
        if network.strongly_typed and precision:  # TensorRT: precision flags are an error on a strongly typed network
            self.module.log.append(f"ERROR: strongly typed network: builder flags {precision} are not allowed")
            return None
        if self.module.fail_build:
            return None
        if config.cache is not None:
            config.cache.data += b"+tuned"
        return b"ENGINE:" + ",".join(config.flags).encode()


class FakeConfig:
    def __init__(self, module: Any):
        self.module, self.flags, self.cache = module, [], None

    def set_memory_pool_limit(self, pool: str, n: int) -> None:
        self.module.calls.append(("workspace", n))

    def set_flag(self, flag: Any) -> None:
        if not isinstance(flag, self.module.BuilderFlag):
            raise TypeError(f"set_flag(): incompatible function arguments ({flag!r} is not a tensorrt.BuilderFlag)")
        self.flags.append(flag.name)

    def create_timing_cache(self, data: bytes) -> FakeTimingCache | None:
        self.module.calls.append(("timing_cache_in", bytes(data)))
        return None if bytes(data).startswith(CORRUPT_CACHE[:7]) else FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        if cache.data.startswith(_FOREIGN) and not ignore_mismatch:  # another GPU's device header: refused, nothing attached
            self.module.log.append("ERROR: timing cache was created on a different device")
            return False
        self.cache = cache
        return True

    def add_optimization_profile(self, profile: Any) -> int:
        self.module.calls.append(("add_profile",))
        return 0

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.cache


def _builder_flags(major: int, minor: int) -> type[enum.IntEnum]:
    names = ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "VERSION_COMPATIBLE"]
    if major < 11:
        names = [*_PRECISION_FLAGS, "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", *names]
    return enum.IntEnum("BuilderFlag", names, start=0)


def fake_tensorrt(
    network_inputs: list[str],
    parse_errors: list[str] | None = None,
    fail_build: bool = False,
    version: str = FAKE_VERSION,
    extra_outputs: tuple[str, ...] = (),
) -> types.ModuleType:
    """A module that answers the TensorRT calls ftexport makes as release `version` does, and
    records them in `.calls` (and its log lines in `.log`)."""
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    major, minor = (int(x) for x in version.split(".")[:2])
    m.major = major
    m.calls = []
    m.log = []
    m.network_inputs = network_inputs
    m.fail_build = fail_build
    m.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    m.Builder = lambda logger: FakeBuilder(m)
    m.MemoryPoolType = _Enum(WORKSPACE="WORKSPACE")
    m.BuilderFlag = _builder_flags(major, minor)
    if major >= 11:  # EXPLICIT_BATCH is gone; STRONGLY_TYPED is kept, deprecated and ignored
        m.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", ["STRONGLY_TYPED"], start=0)
    else:
        m.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", "STRONGLY_TYPED"], start=0)
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
            return FakeEngine(list(network_inputs), extra_outputs=extra_outputs) if data.startswith(b"ENGINE:") else None

    m.Runtime = Runtime
    return m
