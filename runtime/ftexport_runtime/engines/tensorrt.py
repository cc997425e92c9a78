"""TensorRT engines in a bundle: what an engine was built for, whether this machine may run
it, and running it.

A serialized TensorRT engine only works with the TensorRT version it was built with, and is
tuned for (and, across compute capabilities, only loads on) the GPU it was built on. The
toolchain (`ftexport export --trt`) stores each engine with a fingerprint of where it was
built and the optimization profile (min/opt/max batch and sequence lengths) it accepts. Here
the runtime compares that fingerprint with this machine before deserializing anything, and
checks every batch against the profile before TensorRT sees it, so a mismatch is a one-line
error naming the fix instead of a crash inside TensorRT.

Only the functions at the bottom (`current_fingerprint`, `EngineRunner`) import tensorrt and
cuda-bindings (`pip install 'ftexport-runtime[trt]' --extra-index-url https://pypi.nvidia.com`);
everything above them is plain Python and numpy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, BundleError, PredictError

# The fingerprint fields that must be equal for an engine to load. A different driver is
# allowed: NVIDIA drivers are backward compatible and TensorRT engines do not embed it, so
# it is reported, not refused.
MUST_MATCH = ("tensorrt", "compute_capability", "gpu")
ON_LONGER = ("error", "truncate")
INSTALL_HINT = "pip install 'ftexport-runtime[trt]' --extra-index-url https://pypi.nvidia.com"


@dataclass(frozen=True)
class Profile:
    """One optimization profile: (min, opt, max) of the batch and sequence axes, shared by
    every [batch, sequence] input of an encoder (input_ids, attention_mask, token_type_ids)."""

    batch: tuple[int, int, int]
    seq: tuple[int, int, int]

    def __post_init__(self) -> None:
        for axis, (lo, opt, hi) in (("batch", self.batch), ("seq", self.seq)):
            if not (1 <= lo <= opt <= hi):
                raise ValueError(f"profile {axis}: need 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")

    def shapes(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        return tuple((b, s) for b, s in zip(self.batch, self.seq))  # type: ignore[return-value]

    def to_json(self) -> dict[str, list[int]]:
        return {"batch": list(self.batch), "seq": list(self.seq)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Profile:
        try:
            batch, seq = data["batch"], data["seq"]
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in [*batch, *seq]) or len(batch) != 3 or len(seq) != 3:
                raise TypeError
            return cls(tuple(batch), tuple(seq))  # type: ignore[arg-type]
        except (KeyError, TypeError):
            raise BundleError(f"{where}: profile must be {{'batch': [min, opt, max], 'seq': [min, opt, max]}} of integers") from None
        except ValueError as e:
            raise BundleError(f"{where}: {e}") from None


@dataclass
class EngineSpec:
    """A manifest `engines` entry: a serialized engine and what it may run on."""

    name: str
    file: str
    precision: str  # fp32, fp16 or int8 (the kernels TensorRT was allowed to choose)
    source: str  # the ONNX variant it was built from
    profile: Profile
    fingerprint: dict[str, str]
    on_longer: str = "error"  # a text over profile.seq max: "error", or "truncate" to it
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {
            "file": self.file,
            "precision": self.precision,
            "source": self.source,
            "profile": self.profile.to_json(),
            "fingerprint": dict(self.fingerprint),
            "on_longer": self.on_longer,
        }
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_json(cls, name: str, data: Any, where: str, precisions: tuple[str, ...]) -> EngineSpec:
        w = f"{where}: engines.{name}"
        if not isinstance(data, dict) or not isinstance(data.get("file"), str) or not isinstance(data.get("source"), str):
            raise BundleError(f"{w} must be an object with 'file' and 'source'")
        if data.get("precision") not in precisions:
            raise BundleError(f"{w}.precision must be one of {', '.join(precisions)}")
        fp = data.get("fingerprint")
        if not isinstance(fp, dict) or any(not isinstance(fp.get(k), str) for k in MUST_MATCH):
            raise BundleError(
                f"{w}.fingerprint must give {', '.join(MUST_MATCH)} as strings; rebuild the engine (ftexport export --trt --bundle B)"
            )
        on_longer = data.get("on_longer", "error")
        if on_longer not in ON_LONGER:
            raise BundleError(f"{w}.on_longer must be one of {', '.join(ON_LONGER)}, got {on_longer!r}")
        return cls(
            name,
            data["file"],
            data["precision"],
            data["source"],
            Profile.from_json(data.get("profile"), f"{w}.profile"),
            {str(k): str(v) for k, v in fp.items()},
            on_longer,
            dict(data.get("details") or {}),
        )


def fingerprint_mismatch(built: dict[str, str], here: dict[str, str]) -> list[str]:
    """The fields that stop an engine built on `built` from running `here`, as 'field: A here, B in the engine'."""
    return [f"{k} {here.get(k)!r} here, {built.get(k)!r} in the engine" for k in MUST_MATCH if built.get(k) != here.get(k)]


def refusal(spec: EngineSpec, bundle_path: str, problems: list[str]) -> str:
    return (
        f"TensorRT engine {spec.name!r} of {bundle_path} was built for another machine ({'; '.join(problems)}); "
        f"rebuild it here with `ftexport export --trt --bundle {bundle_path}`, or pass fallback='cuda' "
        "(ftexport-runtime --fallback cuda) to run its ONNX model on ONNX Runtime CUDA instead"
    )


def check_batch(spec: EngineSpec, feeds: dict[str, np.ndarray]) -> None:
    """Refuse a batch the engine's profile does not cover, before TensorRT sees it."""
    for name, array in feeds.items():
        if array.ndim != 2:
            raise PredictError(f"TensorRT engine {spec.name!r}: input {name} must be [batch, sequence], got shape {array.shape}")
        batch, seq = array.shape
        if seq > spec.profile.seq[2]:
            raise PredictError(
                f"a text is {seq} tokens but TensorRT engine {spec.name!r} accepts at most {spec.profile.seq[2]} "
                f"(its optimization profile); rebuild with a larger tensorrt.seq max (ftexport export --trt --bundle B --seq MIN,OPT,MAX), "
                "or set tensorrt.on_longer: truncate"
            )
        if seq < spec.profile.seq[0] or not spec.profile.batch[0] <= batch <= spec.profile.batch[2]:
            raise PredictError(
                f"TensorRT engine {spec.name!r}: batch {batch} x {seq} tokens is outside its profile "
                f"(batch {spec.profile.batch[0]}-{spec.profile.batch[2]}, tokens {spec.profile.seq[0]}-{spec.profile.seq[2]})"
            )


# ---- the parts that need TensorRT and a GPU -----------------------------------------------


def driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi (None without one)."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], check=False, capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-bindings 12.6+
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            raise BackendUnavailable(f"TensorRT engines need cuda-bindings for GPU memory; {INSTALL_HINT}") from None
    return cudart


def _call(cudart: Any, result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendUnavailable(f"CUDA {what} failed ({cudart.cudaGetErrorName(err)[1].decode()}); check the GPU with `ftexport doctor`")
    return rest[0] if len(rest) == 1 else rest


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailable(f"the tensorrt package is not installed; {INSTALL_HINT}") from None
    return tensorrt


def current_fingerprint(device: int = 0, driver: bool = True) -> dict[str, str]:
    """TensorRT version, GPU name, compute capability and driver of this machine. driver=False
    leaves out the driver (an nvidia-smi process), which no loading decision depends on."""
    trt = import_tensorrt()
    cudart = _cudart()
    props = _call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {
        "tensorrt": trt.__version__,
        "gpu": name.rstrip("\x00").strip(),
        "compute_capability": f"{props.major}.{props.minor}",
        **({"driver": driver_version() or "unknown"} if driver else {}),
    }


def _nbytes(shape: Any, dtype: np.dtype) -> int:
    return int(np.prod([max(int(d), 0) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize


class EngineRunner:
    """One deserialized engine with device buffers sized for its profile's largest batch.

    An execution context is not thread-safe, so calls are serialized by a lock; for
    parallel GPU work, give each thread its own Predictor.
    """

    def __init__(self, data: bytes, spec: EngineSpec, output: str):
        trt = import_tensorrt()
        self.trt, self.cudart, self.spec, self.output = trt, _cudart(), spec, output
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise BundleError(
                f"TensorRT could not deserialize engine {spec.name!r} (corrupt, or from another TensorRT); "
                "rebuild it with `ftexport export --trt --bundle B`"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        # TensorRT runs only when every I/O tensor has an address: outputs the caller does not
        # read (a second head, hidden states) get a buffer too, and are not copied back
        self.outputs = [n for n in names if n not in self.inputs]
        if output not in names:
            raise BundleError(f"TensorRT engine {spec.name!r} has no output {output!r} (it has {', '.join(names)})")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream: Any = None
        self.stream = _call(self.cudart, self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._lock = threading.Lock()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    @property
    def input_types(self) -> dict[str, Any]:
        """Each input of the engine and the numpy dtype it takes (TensorRT often wants int32 ids)."""
        return {n: self.dtypes[n] for n in self.inputs}

    @property
    def providers(self) -> list[str]:
        return [f"TensorRT engine {self.spec.name} ({self.spec.fingerprint['tensorrt']})"]

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _call(self.cudart, self.cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_call(self.cudart, self.cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        check_batch(self.spec, feeds)
        cudart, h2d, d2h = self.cudart, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise PredictError(f"TensorRT engine {self.spec.name!r} needs inputs {sorted(missing)}")
        with self._lock:
            if self.stream is None:
                raise PredictError(f"TensorRT engine {self.spec.name!r} was closed; load the bundle again")
            hosts = []
            for name in self.inputs:
                host = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
                hosts.append(host)  # keep alive until the stream is synchronized
                ptr = self._buffer(name, host.nbytes)
                if self.context.set_input_shape(name, host.shape) is False:
                    raise PredictError(f"TensorRT engine {self.spec.name!r} refused input {name} of shape {host.shape}")
                self.context.set_tensor_address(name, ptr)
                _call(cudart, cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self.stream), "copy to GPU")
            out = np.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.dtypes[self.output])
            out_ptr = 0
            for name in self.outputs:
                nbytes = out.nbytes if name == self.output else _nbytes(self.context.get_tensor_shape(name), self.dtypes[name])
                ptr = self._buffer(name, max(nbytes, 1))
                self.context.set_tensor_address(name, ptr)
                out_ptr = ptr if name == self.output else out_ptr
            if not self.context.execute_async_v3(stream_handle=int(self.stream)):
                raise BackendUnavailable(f"TensorRT engine {self.spec.name!r} failed to run a batch of shape {hosts[0].shape}")
            _call(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, out_ptr, out.nbytes, d2h, self.stream), "copy from GPU")
            _call(cudart, cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        """Free the device buffers and destroy the CUDA stream (once; later calls do nothing).
        Waits for a call in flight on another thread."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.acquire()
        try:
            buffers = getattr(self, "_buffers", {})
            for ptr, _ in buffers.values():
                self.cudart.cudaFree(ptr)
            buffers.clear()
            stream, self.stream = getattr(self, "stream", None), None
            if stream is not None:
                self.cudart.cudaStreamDestroy(stream)
        finally:
            if lock is not None:
                lock.release()

    def __del__(self) -> None:  # best effort: the process usually owns the GPU until exit
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110
            pass
