"""Cold start and memory of one backend, measured in a fresh process.

`ftexport bench` runs `python -m ftexport.judge.coldstart SPEC.json` once per backend. In the same
process as the timing loop, peak RSS would be the sum of every model loaded so far and the
imports would already be paid; a fresh process per backend gives what an application that
embeds only that backend pays: start to first answer, and the memory high-water mark as the
grid's cells grow.

An ONNX Runtime child imports only `ftexport_runtime` (what ships); a PyTorch child imports
torch and transformers, as the pipeline a user would otherwise write does. Prints one JSON
object on stdout.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark so far. Linux: VmHWM, which belongs to
    this program's memory map; ru_maxrss would carry the parent's peak over fork + exec,
    so a child of a big benchmark process would report the benchmark's memory."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def process_gpu_mb() -> float | None:
    """GPU memory this process holds, from nvidia-smi (None without an NVIDIA GPU)."""
    import os

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(used)
    return None


def _ort(spec: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    t0 = time.time()
    from ftexport_runtime import Predictor

    t1 = time.time()
    p = Predictor.from_bundle(
        spec["bundle"], variant=spec["variant"], backend=spec.get("backend") or spec["device"], threads=spec["threads"]
    )
    return p.predict, {"import_s": t1 - t0, "load_s": time.time() - t1}


def _torch(spec: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    t0 = time.time()
    import torch
    from transformers import AutoTokenizer

    from ..tasks import get_task
    from ..tasks.encoder import torch_probs

    t1 = time.time()
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    if spec["kind"] == "optimum":
        from optimum.onnxruntime import ORTModelForSequenceClassification

        t1 = time.time()
        model = ORTModelForSequenceClassification.from_pretrained(spec["optimum_dir"], file_name="model_quantized.onnx")
    else:
        from ..core.hf import load_reference

        model = load_reference(spec["reference"], get_task(spec["task"])).to(device)
        if spec["kind"] == "pytorch-compile":
            model = torch.compile(model, dynamic=True)
    tokenizer = AutoTokenizer.from_pretrained(spec["reference"])
    return torch_probs(model, tokenizer, spec["max_length"], device), {"import_s": t1 - t0, "load_s": time.time() - t1}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    answer, phases = (_ort if spec["kind"] in ("ort", "trt") else _torch)(spec)
    cells = json.loads(Path(spec["cells_file"]).read_text())
    t = time.time()
    answer([cells[0]["batches"][0][0]])  # the first request: one text
    done = time.time()
    out: dict[str, Any] = {**phases, "first_prediction_s": done - t, "first_answer_at": done, "rss_mb": peak_rss_mb(), "cells": []}
    cuda = spec["device"] != "cpu"
    if cuda and spec["kind"] not in ("ort", "trt"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    # smallest cell first, so each cell's high-water mark is its own (ru_maxrss never falls)
    for cell in sorted(cells, key=lambda c: max(len(b) for b in c["batches"]) * c["tokens"]):
        for batch in cell["batches"]:
            answer(batch)
        row = {"batch": cell["batch"], "seq_len": cell["seq_len"], "peak_rss_mb": peak_rss_mb()}
        if cuda:
            if spec["kind"] in ("ort", "trt"):
                row["gpu_mb"] = process_gpu_mb()
            else:
                import torch

                row["gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["cells"].append(row)
    return out


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(measure(spec)))


if __name__ == "__main__":
    main()
