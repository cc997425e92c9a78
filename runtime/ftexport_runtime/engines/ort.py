"""The ONNX Runtime engine: one model variant in an InferenceSession on the providers a
backend asks for, and a check that the session really runs on them.

onnxruntime silently falls back to the CPU when a GPU provider cannot load (a CUDA or
cuDNN mismatch, a CPU-only onnxruntime wheel, TensorRT libraries it cannot find). A backend
here either runs where it was asked to, or raises BackendUnavailable naming the reason.

ONNX Runtime's TensorRT provider runs as [TensorRT (options), CUDA, CPU]: CUDA takes the
nodes TensorRT cannot, with its engines and timing cache kept in a folder the user controls
(`trt_cache`, FTEXPORT_TRT_CACHE) and one optimization profile covering every batch and
length the bundle accepts, so a new shape or a restart does not rebuild an engine. Before a
GPU session, the CUDA/cuDNN libraries of pip's nvidia-* wheels are preloaded
(`onnxruntime.preload_dlls`) and, for TensorRT, those of pip's tensorrt wheels
(site-packages/tensorrt_libs, which is on no loader path and which preload_dlls does not cover).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import BackendUnavailable, BundleError

_ORT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
TRT_CACHE_ENV = "FTEXPORT_TRT_CACHE"
# pip's TensorRT libraries, in load order (the plugin and the parser need libnvinfer)
_TRT_LIBS = ("libnvinfer.so", "libnvinfer_plugin.so", "libnvonnxparser.so")


@dataclass(frozen=True)
class Backend:
    name: str
    provider: str  # the provider that must end up first in the session
    options: tuple[tuple[str, Any], ...] = ()
    # the providers after it, for the nodes it cannot take (CUDA before CPU behind TensorRT)
    fallbacks: tuple[str, ...] = (CPU,)
    defaults: str = ""  # the manifest's backend_defaults key for its default variant (default: name)

    @property
    def defaults_key(self) -> str:
        return self.defaults or self.name

    def providers(self, options: dict[str, Any] | None = None) -> list[Any]:
        opts = {**dict(self.options), **(options or {})}
        chain: list[Any] = [(self.provider, opts)] if opts else [self.provider]
        return chain + [p for p in self.fallbacks if p != self.provider]


def check_available(backend: Backend) -> None:
    """Fail before building a session when this onnxruntime build lacks the provider."""
    available = ort.get_available_providers()
    if backend.provider not in available:
        hint = {
            CUDA: "install onnxruntime-gpu (pip install 'ftexport-runtime[gpu]') on a machine with CUDA",
            TENSORRT: "install onnxruntime-gpu and TensorRT (pip install 'ftexport-runtime[trt]')",
        }.get(backend.provider, "")
        raise BackendUnavailable(
            f"backend {backend.name!r} needs {backend.provider}, which this onnxruntime "
            f"({ort.__version__}) does not provide (it has: {', '.join(available)})" + (f"; {hint}" if hint else "")
        )


# ---- the libraries GPU providers load ---------------------------------------------------


@functools.cache
def preload_tensorrt_libs() -> tuple[str, ...]:
    """Load pip's TensorRT libraries (site-packages/tensorrt_libs: libnvinfer.so.N, the plugin,
    the ONNX parser) so ONNX Runtime's TensorRT provider, which links them by soname, finds
    them: that folder is on no loader path. Returns the files loaded (none without the wheel)."""
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return ()
    folder = Path(list(spec.submodule_search_locations)[0])
    loaded = []
    for stem in _TRT_LIBS:
        for path in sorted(folder.glob(f"{stem}.*")):
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                loaded.append(path.name)
            except OSError:
                pass  # tensorrt_provider_problem() names what is missing
    return tuple(loaded)


def preload_gpu_libraries(provider: str) -> None:
    """Before a CUDA or TensorRT session: CUDA and cuDNN from pip's nvidia-* wheels
    (onnxruntime.preload_dlls, quietly: it prints on stdout), and TensorRT's from its wheel."""
    if provider not in (CUDA, TENSORRT):
        return
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(sys.stderr):
            try:
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 - a failed preload shows up as a fallback, with the reason
                pass
    if provider == TENSORRT:
        preload_tensorrt_libs()


def _provider_library(name: str) -> Path:
    return Path(ort.__file__).parent / "capi" / f"libonnxruntime_providers_{name}.so"


def tensorrt_provider_problem(load: Callable[..., Any] = ctypes.CDLL) -> str | None:
    """Why ONNX Runtime's TensorRT provider cannot load here (a library its .so links that the
    loader cannot find, e.g. libnvinfer.so.11), or None when it loads. onnxruntime lists
    TensorrtExecutionProvider whenever the provider .so is in the wheel, TensorRT or not."""
    lib = _provider_library("tensorrt")
    if not lib.is_file():
        return f"this onnxruntime ({ort.__version__}) ships no TensorRT provider library ({lib.name})"
    preload_tensorrt_libs()
    try:
        shared = _provider_library("shared")
        if shared.is_file():
            load(str(shared), mode=ctypes.RTLD_GLOBAL)
        load(str(lib))
    except OSError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        return (
            f"ONNX Runtime's TensorRT provider cannot load ({first}); install the TensorRT release this onnxruntime "
            "was built for (onnxruntime-gpu 1.27+: tensorrt-cu13 11.x; 1.22-1.26: tensorrt-cu12 10.x), see `ftexport doctor`"
        )
    return None


# ---- ONNX Runtime's TensorRT provider: caches and profiles -----------------------------


def trt_cache_root(cache: str | os.PathLike[str] | None = None) -> Path:
    """Where ONNX Runtime's TensorRT provider keeps engines and its timing cache: `cache`, else
    $FTEXPORT_TRT_CACHE, else $XDG_CACHE_HOME/ftexport/tensorrt (~/.cache/ftexport/tensorrt)."""
    if cache:
        return Path(cache)
    if os.environ.get(TRT_CACHE_ENV):
        return Path(os.environ[TRT_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ftexport" / "tensorrt"


def tensorrt_options(
    cache_root: Path, model_key: str, inputs: list[str] | None, max_batch: int, max_length: int, opt_length: int = 128
) -> dict[str, Any]:
    """TensorRT provider options: the engine cache in cache_root/model_key (one folder per model
    file), the timing cache in cache_root (per GPU, shared by models), and, for [batch, sequence]
    inputs, one profile from 1x1 to max_batch x max_length (opt: one text of opt_length tokens,
    or max_length when shorter)."""
    engines = cache_root / model_key
    try:
        engines.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BackendUnavailable(
            f"ONNX Runtime's TensorRT provider needs a writable cache folder and {engines} is not one ({e.strerror}); "
            f"pass trt_cache= (ftexport-runtime --trt-cache DIR) or set {TRT_CACHE_ENV}"
        ) from None
    options: dict[str, Any] = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache_root),
    }
    if inputs:

        def shapes(batch: int, seq: int) -> str:
            return ",".join(f"{name}:{batch}x{seq}" for name in inputs)

        options.update(
            {
                "trt_profile_min_shapes": shapes(1, 1),
                "trt_profile_opt_shapes": shapes(1, min(opt_length, max_length)),
                "trt_profile_max_shapes": shapes(max_batch, max_length),
            }
        )
    return options


def check_session(session: ort.InferenceSession, backend: Backend) -> None:
    """Raise when ONNX Runtime built the session without the requested provider."""
    active = session.get_providers()
    if not active or active[0] != backend.provider:
        why = tensorrt_provider_problem() if backend.provider == TENSORRT else None
        raise BackendUnavailable(
            f"backend {backend.name!r} asked for {backend.provider} but ONNX Runtime is running on "
            f"{', '.join(active) or 'nothing'} (a silent fallback: "
            + (why if why else "check the CUDA/cuDNN libraries with `ftexport doctor`")
            + ")"
        )


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _newer_writer(variant: Any) -> str:
    """A hint for a load failure: the variant's graph is ONNX Runtime's own rewrite (ftexport
    quantize stores dynamic int8 that way) made by a newer onnxruntime than this one."""
    wrote = (variant.details.get("ort_graph") or {}).get("onnxruntime")
    if isinstance(wrote, str) and _version(wrote) > _version(ort.__version__):
        return (
            f"; this graph was written by onnxruntime {wrote} and this is {ort.__version__}: "
            f"pip install 'onnxruntime>={wrote}', or re-quantize the bundle with this version"
        )
    return ""


class OrtEngine:
    """One InferenceSession of a bundle variant on `backend`, refused if it fell back.

    model: the ONNX bytes (already checked against the manifest: nothing can be swapped
    between the check and the parse), or the model's path when ONNX Runtime must open its
    external data beside it. variant: the bundle's Variant (for the load-failure hint).
    io_binding: bind inputs and outputs on the device (GPU backends, encoder models).
    provider_options: options for the backend's provider (TensorRT: caches and profile).
    """

    def __init__(
        self,
        model: str | bytes,
        model_path: Path,
        variant: Any,
        backend: Backend,
        session_options: ort.SessionOptions | None = None,
        threads: int | None = None,
        io_binding: bool = False,
        provider_options: dict[str, Any] | None = None,
    ):
        check_available(backend)
        needs = variant.details.get("min_onnxruntime") if variant is not None else None
        if isinstance(needs, str) and _version(needs) > _version(ort.__version__):  # e.g. 8-bit MatMulNBits: 1.22
            raise BundleError(
                f"{model_path}: variant {variant.name!r} needs onnxruntime>={needs} ({variant.details.get('weights', 'its operators')}) "
                f"and this is {ort.__version__}: pip install 'onnxruntime>={needs}', or choose another variant"
            )
        preload_gpu_libraries(backend.provider)
        opts = session_options or ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(model, sess_options=opts, providers=backend.providers(provider_options))
        except Exception as e:  # noqa: BLE001  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"{model_path}: ONNX Runtime cannot load this model ({first[:300]}){_newer_writer(variant)}") from None
        check_session(self.session, backend)
        # ORT would keep the model bytes for the session's life (only to rebuild it on a provider
        # fallback, which ftexport refuses anyway): drop them, and never fall back silently at run time.
        self.session.disable_fallback()
        if isinstance(model, bytes) and hasattr(self.session, "_model_bytes"):
            self.session._model_bytes = None
        self.input_types = {i.name: _ORT_TYPES.get(i.type, np.int64) for i in self.session.get_inputs()}
        self.output = self.session.get_outputs()[0].name
        # On a GPU, bind inputs and outputs explicitly: one host-to-device copy per input and
        # one device-to-host copy of the logits, instead of ORT's per-call staging.
        self.io_binding = io_binding

    @classmethod
    def from_bundle(
        cls,
        bundle: Any,
        variant: Any,
        backend: Backend,
        session_options: ort.SessionOptions | None = None,
        threads: int | None = None,
        verify: bool = False,
        io_binding: bool = False,
        provider_options: dict[str, Any] | None = None,
    ) -> OrtEngine:
        """The session of `variant` of an opened Bundle. With `verify`, ONNX Runtime parses the
        very bytes whose sha256 was checked; a model with external data is checked, then opened
        by path (ONNX Runtime reads the files beside it). The bytes are not kept."""
        check_available(backend)  # before reading anything
        model_path = bundle.path_of(variant.file)
        model: str | bytes = str(model_path)
        if variant.extra_files:
            if verify:
                bundle.verify([variant.file, *variant.extra_files])
        elif verify:
            model = bundle.read(variant.file)
        return cls(model, model_path, variant, backend, session_options, threads, io_binding, provider_options)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The first output (the logits) for already-encoded inputs, as float32."""
        if self.io_binding:
            binding = self.session.io_binding()
            for name, array in feeds.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
            binding.bind_output(self.output, "cuda")
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.run_outputs([self.output], feeds)[0]
        return np.asarray(out, dtype=np.float32)

    def run_outputs(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Several outputs by name, as the model gives them (a decoder's logits and present.*)."""
        return self.session.run(names, feeds)
