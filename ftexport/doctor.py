"""`ftexport doctor`: what this machine can run, and for each backend it cannot, why.

A provider listed by onnxruntime is not proof it works (CUDA/cuDNN mismatches make ORT
fall back to the CPU silently), so each GPU provider is tried on a one-node model.

It also names the GPU package combination it finds (STACKS: the ones this project supports,
docs/tensorrt.md "Versions that fit together") and each package or driver that does not fit it.
"""

from __future__ import annotations

import importlib.util
import platform
import tempfile
from dataclasses import dataclass
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


def _vt(text: str | None) -> tuple[int, int]:
    """'1.31.1' -> (1, 31); '11.4.0.106' -> (11, 4); '580.65.06' -> (580, 65)."""
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in str(text or "0").split("+")[0].split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


@dataclass(frozen=True)
class Stack:
    """One combination of GPU packages that fit together: each [lo, hi) of (major, minor)."""

    name: str
    cuda: int  # the CUDA major every library of it is built for
    onnxruntime_gpu: tuple[tuple[int, int], tuple[int, int]]
    tensorrt: tuple[tuple[int, int], tuple[int, int]]  # what its onnxruntime-gpu's TensorRT provider links
    cuda_bindings: tuple[tuple[int, int], tuple[int, int]]
    driver: int  # the oldest driver branch (r580 ...)
    extras: str
    image: str

    def pins(self) -> dict[str, str]:
        def rng(r: tuple[tuple[int, int], tuple[int, int]]) -> str:
            (a, b), (c, d) = r
            return f">={a}.{b},<{c}.{d}" if d else f">={a}.{b},<{c}"

        return {
            "onnxruntime-gpu": rng(self.onnxruntime_gpu),
            f"tensorrt-cu{self.cuda}": rng(self.tensorrt),
            "cuda-bindings": rng(self.cuda_bindings),
        }


# The combinations ftexport supports (pyproject extras, docker/*.Dockerfile, docs/tensorrt.md):
# onnxruntime-gpu 1.27+ is built for CUDA 13 and TensorRT 11 (its provider links libnvinfer.so.11);
# 1.22-1.26 for CUDA 12 and TensorRT 10 (libnvinfer.so.10, built with 10.9). cuda-bindings 13.x
# links the CUDA 13 runtime: r580+ drivers; CUDA 12 wheels run on r535+ (TensorRT's floor).
STACKS = (
    Stack(
        "CUDA 13",
        13,
        ((1, 27), (2, 0)),
        ((11, 0), (12, 0)),
        ((13, 0), (14, 0)),
        580,
        "gpu, trt",
        "nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04",
    ),
    Stack(
        "CUDA 12",
        12,
        ((1, 22), (1, 27)),
        ((10, 9), (11, 0)),
        ((12, 6), (13, 0)),
        535,
        "gpu-cu12, trt-cu12",
        "nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04",
    ),
)


def _within(version: str | None, r: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    return r[0] <= _vt(version) < r[1]


def tensorrt_packages() -> dict[str, str]:
    """Installed TensorRT wheels: the metapackage and the CUDA-flavoured ones (tensorrt-cu12, -cu13 and their -libs)."""
    found = {}
    for name in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu12-libs", "tensorrt-cu13-libs"):
        v = _version(name)
        if v:
            found[name] = v
    return found


def check_stack(
    packages: dict[str, str | None],
    trt_packages: dict[str, str],
    driver: str | None,
    provider_problem: str | None = None,
) -> dict[str, Any]:
    """The supported combination these versions make (or the nearest one), in words, and each
    package or driver that is missing or does not fit it, with the pip line that fixes it."""
    ort_gpu, ort_cpu, bindings = packages.get("onnxruntime-gpu"), packages.get("onnxruntime"), packages.get("cuda-bindings")
    trt = next((trt_packages[n] for n in ("tensorrt-cu13", "tensorrt-cu12", "tensorrt") if n in trt_packages), None)
    trt_cuda = 13 if "tensorrt-cu13" in trt_packages else 12 if "tensorrt-cu12" in trt_packages else None
    if not (ort_gpu or trt or bindings):
        return {"stack": None, "combination": "CPU only (no onnxruntime-gpu, tensorrt or cuda-bindings installed)", "problems": []}
    problems: list[str] = []
    # which combination: onnxruntime-gpu decides (its CUDA and TensorRT are fixed at its build), else TensorRT's flavour
    if ort_gpu:
        stack = next((st for st in STACKS if _within(ort_gpu, st.onnxruntime_gpu)), None)
        if stack is None:
            problems.append(
                f"onnxruntime-gpu {ort_gpu} is in no supported combination (1.27+ for CUDA 13, 1.22-1.26 for CUDA 12): "
                "pip install 'onnxruntime-gpu>=1.27'"
            )
            stack = STACKS[0] if _vt(ort_gpu) >= STACKS[0].onnxruntime_gpu[0] else STACKS[-1]
    else:
        stack = next((st for st in STACKS if st.cuda == trt_cuda), None) or next(
            (st for st in STACKS if bindings and _within(bindings, st.cuda_bindings)), STACKS[0]
        )
    pins = stack.pins()
    if ort_gpu and ort_cpu:
        problems.append(
            f"onnxruntime {ort_cpu} and onnxruntime-gpu {ort_gpu} are both installed and write the same package: "
            f"pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps 'onnxruntime-gpu=={ort_gpu}'"
        )
    if not ort_gpu:
        problems.append(
            f"onnxruntime-gpu is not installed (no CUDA or TensorRT provider): pip install 'onnxruntime-gpu{pins['onnxruntime-gpu']}'"
        )
    trt_pin = f"tensorrt-cu{stack.cuda}"
    if trt is None:
        problems.append(f"tensorrt is not installed (no engines, no TensorRT provider): pip install '{trt_pin}{pins[trt_pin]}'")
    else:
        if not _within(trt, stack.tensorrt):
            links = "libnvinfer.so.11" if stack.cuda == 13 else "libnvinfer.so.10"
            problems.append(
                f"tensorrt {trt} does not fit the {stack.name} combination"
                + (f" (onnxruntime-gpu {ort_gpu}'s TensorRT provider links {links})" if ort_gpu else "")
                + f": pip install '{trt_pin}{pins[trt_pin]}'"
            )
        if trt_cuda and trt_cuda != stack.cuda:
            problems.append(
                f"tensorrt-cu{trt_cuda} is built for CUDA {trt_cuda}, the rest for CUDA {stack.cuda}: "
                f"pip install '{trt_pin}{pins[trt_pin]}'"
            )
    if bindings is None:
        problems.append(
            f"cuda-bindings is not installed (TensorRT engines need it for GPU memory): pip install 'cuda-bindings{pins['cuda-bindings']}'"
        )
    elif not _within(bindings, stack.cuda_bindings):
        problems.append(
            f"cuda-bindings {bindings} links the CUDA {_vt(bindings)[0]} runtime, the rest is CUDA {stack.cuda}: "
            f"pip install 'cuda-bindings{pins['cuda-bindings']}'"
        )
    if driver is None:
        problems.append("no NVIDIA driver answers (nvidia-smi): GPU packages are installed but no GPU can run them")
    elif _vt(driver)[0] < stack.driver:
        other = next((st for st in STACKS if st.driver <= _vt(driver)[0]), None)
        problems.append(
            f"driver {driver} is too old for the CUDA {stack.cuda} runtime these packages link (needs r{stack.driver}+): update the driver"
            + (f", or install the {other.name} combination (pip install 'ftexport[{other.extras.replace(' ', '')}]')" if other else "")
        )
    if provider_problem:
        problems.append(provider_problem)
    found = ", ".join(
        f"{name} {v}"
        for name, v in (
            ("onnxruntime-gpu", ort_gpu),
            (next((n for n in ("tensorrt-cu13", "tensorrt-cu12", "tensorrt") if n in trt_packages), "tensorrt"), trt),
            ("cuda-bindings", bindings),
            ("driver", driver),
        )
        if v
    )
    verdict = "fits" if not problems else "does not fit"
    return {"stack": stack.name, "combination": f"{stack.name} ({found}) {verdict}", "problems": problems}


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
            else "install onnxruntime-gpu and TensorRT (pip install 'ftexport[trt]'; see `gpu stack` above for the versions that fit)"
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
        why = (
            "TensorRT's libraries missing or mismatched (pip install 'ftexport[trt]'), or onnxruntime's TensorRT provider library"
            if provider == "TensorrtExecutionProvider"
            else "CUDA or cuDNN libraries missing or mismatched"
        )
        return False, f"{provider} is listed but ONNX Runtime fell back to {active[0]} ({why})"
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
    provider_problem = None
    if "TensorrtExecutionProvider" in info["onnxruntime_providers"]:
        from ftexport_runtime.engines.ort import tensorrt_provider_problem

        provider_problem = tensorrt_provider_problem()
    info["stack"] = check_stack(info["packages"], tensorrt_packages(), gpu.get("driver") or gpu_driver(), provider_problem)
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
    stack = info.get("stack")
    if stack:
        lines.append(f"gpu stack       {stack['combination']}")
        lines += [f"  - {p}" for p in stack["problems"]]
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
