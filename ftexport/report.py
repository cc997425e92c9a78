"""Readable reports: markdown tables of parity and latency, and the machine they ran on."""

from __future__ import annotations

import os
import platform
from typing import Any

from .artifacts import versions

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp")


def machine_info() -> dict[str, Any]:
    """CPU model and the flags that decide int8 kernels, cores, GPU if any, package versions."""
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
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_flags": sorted(flags & set(_FLAGS)),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": versions(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(x: Any) -> str:
        if x is None:
            return "—"
        if isinstance(x, float):
            return f"{x:.4f}" if abs(x) < 10 else f"{x:.1f}"
        return str(x)

    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in cells)])


def parity_table(report: dict[str, Any]) -> str:
    ref = report["reference"]
    rows: list[list[Any]] = [["pytorch (reference)", "fp32", ref["accuracy"], ref["macro_f1"], None, None, None, "—"]]
    for name, v in report["variants"].items():
        if "error" in v:
            rows.append([f"onnx {name}", v["precision"], None, None, None, None, None, f"FAIL: {v['error']}"])
            continue
        failed = [c["name"] for c in v["checks"] if not c["passed"]]
        verdict = "PASS" if v["passed"] else "FAIL: " + ", ".join(failed)
        rows.append([f"onnx {name}", v["precision"], v["accuracy"], v["macro_f1"], v["accuracy_drop"], v["agreement"], f"{v['max_logit_diff']:.2e}", verdict])
    head = f"Parity on the {report['split']} split ({report['examples']} examples)\n\n"
    return head + markdown_table(["model", "precision", "accuracy", "macro-F1", "acc. drop", "top-1 agreement", "max |Δlogit|", "gate"], rows)


def bench_table(report: dict[str, Any]) -> str:
    rows = [
        [r["backend"], r["batch"], r["seq_len"], *(_ms(r.get(k)) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "std_ms")), f"{r['throughput_per_s']:.1f}",
         f"{r['speedup_vs_pytorch']:.2f}x" if r.get("speedup_vs_pytorch") else None]
        for r in report["results"]
    ]
    m = report["machine"]
    flags = ", ".join(m.get("cpu_flags") or []) or "no AVX2"
    where = f"{m['cpu']} [{flags}]" + (f" + {m['gpu']}" if m.get("gpu") else "")
    head = f"Latency on {where} ({m['cores']} cores, {report['threads']} threads), {report['iterations']} iterations after {report['warmup']} warm-up\n\n"
    table = markdown_table(["backend", "batch", "seq", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "stdev ms", "seq/s", "vs PyTorch"], rows)
    skipped = "".join(f"\n- {b}: skipped ({why})" for b, why in report.get("skipped", {}).items())
    flagged = "".join(f"\n- FLAG {r['backend']} batch {r['batch']} seq {r['seq_len']}: {r['flag']}" for r in report["results"] if r.get("flag"))
    return head + table + ("\n" + skipped if skipped else "") + ("\n" + flagged if flagged else "")


def compare_table(rows: list[dict[str, Any]], tolerance: float) -> str:
    body = [[r["backend"], r["batch"], r["seq_len"], _ms(r["old_p50_ms"]), _ms(r["new_p50_ms"]), f"{r['change']:+.1%}",
             "REGRESSION" if r["regression"] else "ok"] for r in rows]
    head = f"p50 change per cell (regression: slower by more than {tolerance:.0%})\n\n"
    return head + markdown_table(["backend", "batch", "seq", "old p50 ms", "new p50 ms", "change", "verdict"], body)


def summary_table(parity: dict[str, Any], bench: dict[str, Any] | None) -> str:
    """The closing table of `ftexport run`: accuracy and batch-1 p50 of each model."""

    def latency(backend: str) -> float | None:
        if not bench:
            return None
        return next((r["p50_ms"] for r in bench["results"] if r["backend"] == backend and r["batch"] == 1 and r["seq_len"] == bench["seq_len"]), None)

    if not bench:
        rows = [["PyTorch fp32", parity["reference"]["accuracy"]]] + [[f"ONNX {n}", v.get("accuracy")] for n, v in parity["variants"].items()]
        return markdown_table(["model", f"{parity['split']} accuracy"], rows)
    base = latency("pytorch")
    rows = [["PyTorch fp32", parity["reference"]["accuracy"], _ms(base), "1.00x" if base else None]]
    for name, v in parity["variants"].items():
        variant, _, backend = name.partition("@")
        lat = latency(f"ort-{backend}-{variant}" if backend else f"ort-{variant}")
        rows.append([f"ONNX {name}", v.get("accuracy"), _ms(lat), f"{base / lat:.2f}x" if lat and base else None])
    return markdown_table(["model", f"{parity['split']} accuracy", f"p50 ms (batch 1, seq {bench['seq_len']})", "speed-up vs PyTorch"], rows)


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"
