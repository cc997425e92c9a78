"""The machine a figure was measured on: CPU model and the flags that decide int8 kernels,
cores, GPU and driver, package versions."""

from __future__ import annotations

import os
import platform
from typing import Any

from .artifacts import versions

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp")


def _cpuinfo() -> tuple[str, set[str]]:
    """CPU model name and feature flags of the first core (x86 'flags', ARM 'Features')."""
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return cpu, flags


def cpu_flags() -> set[str]:
    return _cpuinfo()[1]


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def gpu_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi (None without one)."""
    from ftexport_runtime.engines.tensorrt import driver_version

    return driver_version()


def machine_info() -> dict[str, Any]:
    """CPU model and the flags that decide int8 kernels, cores, GPU if any, package versions."""
    cpu, flags = _cpuinfo()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_flags": sorted(flags & set(_FLAGS)),
        "cores": default_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
            info["compute_capability"] = "{}.{}".format(*torch.cuda.get_device_capability(0))
            driver = gpu_driver()
            if driver:
                info["gpu_driver"] = driver
    except ImportError:
        pass
    return info
