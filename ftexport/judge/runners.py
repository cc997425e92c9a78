"""Benchmark runners, one per backend kind (Polygraphy-style): the names `ftexport bench`
accepts, why one cannot run here, and building it. How a runner answers a cell is the task's
business (its BenchProbe): a runner only loads the model the backend needs.

    pytorch, pytorch-cuda     the PyTorch reference (transformers), eager
    pytorch-compile           the same through torch.compile
    optimum-int8              the plain Optimum path: ORTModel export + ORTQuantizer preset
    ort-VARIANT               a bundle variant on ONNX Runtime's CPU provider (the runtime's Predictor)
    ort-cuda-VARIANT, ort-tensorrt-VARIANT   the same on ONNX Runtime's GPU providers (ort-tensorrt: always
                              ONNX Runtime's TensorRT provider, the runtime's "ort-tensorrt" backend, even when
                              the bundle also holds engines)
    trt-ENGINE                the bundle's own TensorRT engine (ftexport export --trt)

A backend the machine lists but cannot start (a provider whose libraries are missing, so the
session falls back) is a skipped row with its reason, never an abort (bench.py).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftexport_runtime import Predictor
from ftexport_runtime.engines import get_backend
from ftexport_runtime.errors import BackendUnavailable

from ..core import progress
from ..core.hf import is_adapter_dir, load_reference, load_tokenizer
from ..tasks.base import Calls

# A backend, optionally for one model of a multi-model run: "teacher/pytorch", "l6/ort-int8".
BACKEND_PATTERN = (
    r"^([A-Za-z0-9][A-Za-z0-9_.-]*/)?"
    r"(pytorch|pytorch-cuda|pytorch-compile|optimum-int8|ort-(cpu|cuda|tensorrt)-[a-z0-9][a-z0-9_-]*|ort-[a-z0-9][a-z0-9_-]*"
    r"|trt-[a-z0-9][a-z0-9_-]*)$"
)
# Every backend ftexport can time; those the machine or the bundle lacks are skipped with the reason.
BENCH_BACKENDS = (
    "pytorch",
    "pytorch-compile",
    "ort-fp32",
    "ort-opt",
    "ort-int8",
    "ort-int8-static",
    "pytorch-cuda",
    "ort-cuda-fp32",
    "ort-cuda-fp16",
    "ort-tensorrt-fp32",
    "trt-fp16",
    "trt-int8",
)


def backend_help() -> str:
    return (
        "pytorch, pytorch-compile, pytorch-cuda, optimum-int8, ort-VARIANT (CPU), ort-cuda-VARIANT, ort-tensorrt-VARIANT "
        "or trt-ENGINE (the bundle's TensorRT engine); MODEL/BACKEND for one model of a run with --model"
    )


@dataclass
class Model:
    """One model of a bench run: its bundle, and the PyTorch folder its pytorch and optimum rows
    load. `label` is None in a one-model run (backend names stay bare) and prefixes every
    backend name ("teacher/pytorch") when several models are timed together."""

    label: str | None
    bundle: Any
    bundle_dir: Path
    reference: Path | None

    def qualify(self, backend: str) -> str:
        return qualify(self.label, backend)


def qualify(label: str | None, backend: str) -> str:
    """A backend's row name: 'teacher/ort-int8' for a model called teacher, bare when unnamed."""
    return f"{label}/{backend}" if label else backend


def split_backend(name: str) -> tuple[str | None, str]:
    """'teacher/ort-int8' -> ('teacher', 'ort-int8'); 'ort-int8' -> (None, 'ort-int8')."""
    label, _, backend = name.rpartition("/")
    return label or None, backend


@dataclass
class Runner:
    """One backend, ready: `calls` say how it answers (from the task's probe); `spec` is how a
    fresh process rebuilds it, for the cold-start measurement."""

    name: str
    calls: Calls
    spec: dict[str, Any]
    predictor: Predictor | None = None


def parse_backend(name: str) -> tuple[str, str, str | None]:
    """'pytorch' -> (pytorch, cpu, None); 'pytorch-compile' -> (pytorch-compile, cpu, None);
    'ort-cuda-fp16' -> (ort, cuda, fp16); 'ort-int8' -> (ort, cpu, int8);
    'optimum-int8' -> (optimum, cpu, None): the plain Optimum path, exported and quantized here.
    A model label ('teacher/pytorch') is ignored."""
    name = split_backend(name)[1]
    if name == "optimum-int8":
        return "optimum", "cpu", None
    if name == "pytorch-compile":
        return "pytorch-compile", "cpu", None
    if name.startswith("trt-"):  # a TensorRT engine of the bundle: 'trt-fp16' -> (trt, tensorrt, fp16)
        return "trt", "tensorrt", name[4:]
    if name.startswith("pytorch"):
        return "pytorch", "cuda" if name == "pytorch-cuda" else "cpu", None
    rest = name.removeprefix("ort-")
    for device in ("cuda", "tensorrt", "cpu"):
        if rest.startswith(device + "-"):
            return "ort", device, rest[len(device) + 1 :]
    return "ort", "cpu", rest


def runtime_backend(kind: str, device: str) -> str:
    """The runtime backend a runner asks the Predictor for: ort-tensorrt rows time ONNX Runtime's
    TensorRT provider, never the bundle's engines (those are the trt-* rows)."""
    return "ort-tensorrt" if kind == "ort" and device == "tensorrt" else device


def _cxx_compiler() -> str | None:
    return next((p for p in (shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")) if p), None)


def skip_reason(name: str, bundle: Any, reference_dir: Path | None, task: Any) -> str | None:
    """Why this machine, this bundle or this task cannot run a backend, or None when it can."""
    import onnxruntime as ort
    import torch

    kind, device, variant = parse_backend(name)
    why = task.bench_probe().skip(kind, device)
    if why:
        return why
    if kind == "trt":
        return engine_skip_reason(bundle, variant)  # type: ignore[arg-type]
    if kind == "optimum" and not task.plain_optimum:
        return f"the plain-Optimum baseline is built for text classification (ORTModelForSequenceClassification), not {task.name}"
    if kind != "ort":
        if reference_dir is None:
            return "no --reference model given"
        if device == "cuda" and not torch.cuda.is_available():
            return "torch sees no CUDA device"
        if kind == "optimum" and is_adapter_dir(reference_dir):
            return "the reference is an unmerged prefix/prompt adapter, which Optimum's ORTModel cannot export"
        if kind == "optimum":
            from ..export import EXPORTERS

            missing = EXPORTERS["optimum"].available()
            if missing:
                return missing
        if kind == "pytorch-compile" and _cxx_compiler() is None:
            return "torch.compile's inductor needs a C++ compiler and none was found (install g++)"
        return None
    if variant not in bundle.manifest.variants:
        return f"the bundle has no {variant} variant (it has: {', '.join(bundle.manifest.variants)})"
    provider = get_backend(device).provider
    if provider not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no {provider}"
    return None


def engine_skip_reason(bundle: Any, name: str) -> str | None:
    from ftexport_runtime.engines.tensorrt import current_fingerprint, fingerprint_mismatch

    engine = bundle.manifest.engines.get(name)
    if engine is None:
        have = ", ".join(bundle.manifest.engines) or "none"
        return f"the bundle has no TensorRT engine {name!r} (it has: {have}; build them with ftexport export --trt --bundle B)"
    try:
        problems = fingerprint_mismatch(engine.fingerprint, current_fingerprint(driver=False))
    except BackendUnavailable as e:
        return str(e)
    return f"engine built for another machine: {'; '.join(problems)}" if problems else None


def build_runner(name: str, bundle: Any, bundle_dir: Path, reference: Path | None, threads: int, workdir: Path, task: Any) -> Runner:
    """Load the backend `name` and ask the task's probe how it answers."""
    kind, device, variant = parse_backend(name)
    probe = task.bench_probe()
    spec: dict[str, Any] = {
        "kind": kind,
        "device": device,
        "variant": variant,
        "bundle": str(bundle_dir.resolve()),
        "threads": threads,
        "reference": str(reference.resolve()) if reference else None,
        "max_length": bundle.manifest.max_length,
        "task": bundle.manifest.task,
        "backend": runtime_backend(kind, device),
    }
    if kind in ("ort", "trt"):
        p = Predictor(bundle, variant=variant, backend=spec["backend"], threads=threads)
        return Runner(name, probe.ort(p), spec, p)
    import torch

    tokenizer = load_tokenizer(reference, "reference model")  # type: ignore[arg-type]
    if kind == "optimum":
        from ..export.optimum import plain_optimum_int8

        progress.info("optimum-int8: exporting and quantizing the reference the plain Optimum way (ORTModel + ORTQuantizer preset)")
        model = plain_optimum_int8(reference, workdir / "optimum", threads)  # type: ignore[arg-type]
        spec["optimum_dir"] = str(workdir / "optimum" / "int8")
    else:
        model = load_reference(reference, task).to(device)  # type: ignore[arg-type]
        if kind == "pytorch-compile":
            progress.info("pytorch-compile: torch.compile(dynamic=True); the first call compiles (can take a minute)")
            model = torch.compile(model, dynamic=True)
    return Runner(name, probe.torch(model, tokenizer, bundle.manifest.max_length, device, model_dir=reference), spec)
