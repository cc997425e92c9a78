"""The ONNX Runtime engine: one model variant in an InferenceSession on the providers a
backend asks for, and a check that the session really runs on them.

onnxruntime silently falls back to the CPU when a GPU provider cannot load (a CUDA or
cuDNN mismatch, a CPU-only onnxruntime wheel). A backend here either runs where it was
asked to, or raises BackendUnavailable naming the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import BackendUnavailable, BundleError

_ORT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


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
    ):
        check_available(backend)
        opts = session_options or ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(model, sess_options=opts, providers=backend.providers())
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
        return cls(model, model_path, variant, backend, session_options, threads, io_binding)

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
