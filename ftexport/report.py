"""Readable reports: markdown tables of parity and latency, and the machine they ran on."""

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


def machine_info() -> dict[str, Any]:
    """CPU model and the flags that decide int8 kernels, cores, GPU if any, package versions."""
    cpu, flags = _cpuinfo()
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
            info["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
            driver = gpu_driver()
            if driver:
                info["gpu_driver"] = driver
    except ImportError:
        pass
    return info


def gpu_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi (None without one)."""
    from ftexport_runtime.trt_engine import driver_version

    return driver_version()


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


def entity_parity_table(report: dict[str, Any]) -> str:
    """Token classification: entity-level scores against the gold tags and against PyTorch."""
    ref = report["reference"]
    rows: list[list[Any]] = [["pytorch (reference)", "fp32", ref["entity_precision"], ref["recall"], ref["f1"], None, None, None, None, "—"]]
    for name, v in report["variants"].items():
        if "error" in v:
            rows.append([f"onnx {name}", v["precision"], None, None, None, None, None, None, None, f"FAIL: {v['error']}"])
            continue
        failed = [c["name"] for c in v["checks"] if not c["passed"]]
        verdict = "PASS" if v["passed"] else "FAIL: " + ", ".join(failed)
        rows.append([f"onnx {name}", v["precision"], v["entity_precision"], v["recall"], v["f1"], v["f1_drop"], v["entity_agreement"],
                     v["agreement"], f"{v['max_logit_diff']:.2e}", verdict])
    head = (f"Entity-level parity on the {report['split']} split ({report['examples']} sentences, {report.get('words', '?')} words); "
            "entity agreement = entity F1 against PyTorch's entities, token agreement = top-1 at each word's first sub-token\n\n")
    table = markdown_table(["model", "precision", "entity P", "entity R", "entity F1", "F1 drop", "entity agreement", "token agreement", "max |Δlogit|", "gate"], rows)
    per_class = [[k, r["precision"], r["recall"], r["f1-score"], int(r["support"])] for k, r in ref.get("per_class", {}).items()]
    if per_class:
        table += "\n\nPyTorch per entity type (seqeval)\n\n" + markdown_table(["type", "precision", "recall", "F1", "support"], per_class)
    return head + table


def parity_table(report: dict[str, Any]) -> str:
    if report.get("task") == "text-generation":
        from .validate_lm import parity_table as lm_table

        return lm_table(report)
    if report.get("task") == "token-classification":
        return entity_parity_table(report)
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
    if report.get("task") == "text-generation":
        from .bench_lm import bench_table as lm_table

        return lm_table(report)
    rows = [
        [r["backend"], r["batch"], r["seq_len"], *(_ms(r.get(k)) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "std_ms")),
         f"{r['noise']:.1%}" if r.get("noise") is not None else None, f"{r['throughput_per_s']:.1f}",
         f"{r['speedup_vs_pytorch']:.2f}x" if r.get("speedup_vs_pytorch") else None,
         f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else None]
        for r in report["results"]
    ]
    m = report["machine"]
    flags = ", ".join(m.get("cpu_flags") or []) or "no AVX2"
    where = f"{m['cpu']} [{flags}]" + (f" + {m['gpu']}" if m.get("gpu") else "")
    rounds = f" in {report['repeats']} interleaved rounds" if report.get("repeats", 1) > 1 else ""
    head = (f"Latency on {where} ({m['cores']} cores, {report['threads']} threads), {report['iterations']} timed calls per cell{rounds} "
            f"after {report['warmup']} warm-up; seq 'real' = held-out texts as they come (padded per batch)\n\n")
    table = markdown_table(["backend", "batch", "seq", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "stdev ms", "noise", "seq/s", "vs PyTorch", "peak RSS MB"], rows)
    parts = [head + table]
    if report.get("cold_start"):
        cold = [[b, None, None, None, None, None, c["error"]] if "error" in c else
                [b, f"{c['cold_start_s']:.2f}", f"{c['import_s']:.2f}", f"{c['load_s']:.2f}", f"{c['first_prediction_s'] * 1e3:.1f}", f"{c['rss_mb']:.0f}", ""]
                for b, c in report["cold_start"].items()]
        parts.append("Cold start, one fresh process per backend (process start to the first answer)\n\n"
                     + markdown_table(["backend", "cold start s", "import s", "load s", "first answer ms", "RSS after first answer MB", "note"], cold))
    notes = [f"- {b}: skipped ({why})" for b, why in report.get("skipped", {}).items()]
    notes += [f"- REFUSED {r['backend']} batch {r['batch']} seq {r['seq_len']}: answers differ from {r['against']} "
              f"(mean |Δp| {r['mean_prob_diff']:.3f} > {r['tolerance']}, top-1 agreement {r['agreement']:.0%}): no speed figure" for r in report.get("refused", [])]
    notes += [f"- FLAG {r['backend']} batch {r['batch']} seq {r['seq_len']}: {r['flag']}" for r in report["results"] if r.get("flag")]
    notes += [f"- {n}" for n in report.get("notes", [])]
    if notes:
        parts.append("\n".join(notes))
    return "\n\n".join(parts)


def compare_table(rows: list[dict[str, Any]], tolerance: float) -> str:
    body = [[r["backend"], r["batch"], r["seq_len"], _ms(r["old_p50_ms"]), _ms(r["new_p50_ms"]), f"{r['change']:+.1%}",
             "REGRESSION" if r["regression"] else "ok"] for r in rows]
    head = f"p50 change per cell (regression: slower by more than {tolerance:.0%})\n\n"
    return head + markdown_table(["backend", "batch", "seq", "old p50 ms", "new p50 ms", "change", "verdict"], body)


def summary_table(parity: dict[str, Any], bench: dict[str, Any] | None) -> str:
    """The closing table of `ftexport run`: accuracy and batch-1 p50 of each model."""
    if parity.get("task") == "text-generation":
        from .bench_lm import summary_table as lm_summary

        return lm_summary(parity, bench)

    def latency(backend: str) -> float | None:
        if not bench:
            return None
        return next((r["p50_ms"] for r in bench["results"] if r["backend"] == backend and r["batch"] == 1 and r["seq_len"] == bench["seq_len"]), None)

    metric = parity.get("metric", "accuracy")  # entity F1 for token classification
    title = f"{parity['split']} {'entity F1' if metric == 'f1' else metric}"
    if not bench:
        rows = [["PyTorch fp32", parity["reference"][metric]]] + [[f"ONNX {n}", v.get(metric)] for n, v in parity["variants"].items()]
        return markdown_table(["model", title], rows)
    base = latency("pytorch")
    rows = [["PyTorch fp32", parity["reference"][metric], _ms(base), "1.00x" if base else None]]
    for name, v in parity["variants"].items():
        variant, _, backend = name.partition("@")
        lat = latency(f"ort-{backend}-{variant}" if backend else f"ort-{variant}")
        rows.append([f"ONNX {name}", v.get(metric), _ms(lat), f"{base / lat:.2f}x" if lat and base else None])
    return markdown_table(["model", title, f"p50 ms (batch 1, seq {bench['seq_len']})", "speed-up vs PyTorch"], rows)


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


# ---- report.html: one self-contained file, plots as inline SVG (readable offline) ----------

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _esc(text: Any) -> str:
    import html

    return html.escape(str(text))


def _svg_plot(title: str, xlabel: str, ylabel: str, series: dict[str, list[tuple[float, float]]], kind: str = "line",
              log_x: bool = False, labels: dict[str, str] | None = None) -> str:
    """A small SVG chart: kind 'line' (one polyline per series), 'scatter' or 'bar' (one bar per series)."""
    import math

    w, h, left, right, top, bottom = 640, 360, 64, 170, 36, 48
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    fx = (lambda v: math.log2(v)) if log_x else (lambda v: v)
    if kind == "bar":
        xs = list(range(len(series)))
        x0, x1 = -0.6, len(series) - 0.4
    else:
        xs = [fx(p[0]) for p in pts]
        x0, x1 = min(xs), max(xs)
    y0, y1 = 0.0, max(p[1] for p in pts) * 1.1 or 1.0
    if kind == "scatter":
        lo = min(p[1] for p in pts)
        y0, y1 = lo - (y1 / 1.1 - lo) * 0.3 - 1e-3, y1 / 1.1 + (y1 / 1.1 - lo) * 0.3 + 1e-3
        x0, x1 = 0.0, x1 * 1.15
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    sx = lambda v: left + (v - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    sy = lambda v: h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    out = [f'<svg class="plot" data-kind="{kind}" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">',
           f'<title>{_esc(title)}</title><rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2 - right / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{_esc(title)}</text>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#333"/>',
           f'<text x="{(left + w - right) / 2}" y="{h - 10}" text-anchor="middle" font-size="12">{_esc(xlabel)}</text>',
           f'<text transform="translate(16 {(top + h - bottom) / 2}) rotate(-90)" text-anchor="middle" font-size="12">{_esc(ylabel)}</text>']
    for i in range(5):  # y grid and ticks
        v = y0 + (y1 - y0) * i / 4
        out.append(f'<line x1="{left}" y1="{sy(v):.1f}" x2="{w - right}" y2="{sy(v):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.3g}</text>')
    if kind != "bar":
        ticks = sorted({p[0] for p in pts}) if kind == "line" else [x0 + (x1 - x0) * i / 4 for i in range(5)]
        for t in ticks:
            out.append(f'<text x="{sx(fx(t) if kind == "line" else t):.1f}" y="{h - bottom + 16}" text-anchor="middle" font-size="11">{t:.3g}</text>')
    for i, (name, points) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        if kind == "line":
            path = " ".join(f"{sx(fx(x)):.1f},{sy(y):.1f}" for x, y in sorted(points))
            out.append(f'<polyline class="series" points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            out += [f'<circle cx="{sx(fx(x)):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in points]
        elif kind == "scatter":
            out += [f'<circle class="series" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="6" fill="{color}"/>' for x, y in points]
        else:
            bw = (w - left - right) / (x1 - x0) * 0.7
            y = points[0][1]
            out.append(f'<rect class="series" x="{sx(i) - bw / 2:.1f}" y="{sy(y):.1f}" width="{bw:.1f}" height="{sy(0) - sy(y):.1f}" fill="{color}"/>'
                       f'<text x="{sx(i):.1f}" y="{sy(y) - 4:.1f}" text-anchor="middle" font-size="11">{y:.2f}x</text>')
        label = (labels or {}).get(name, name)
        ly = top + 16 * i
        out.append(f'<rect x="{w - right + 12}" y="{ly}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{w - right + 28}" y="{ly + 9}" font-size="11">{_esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def bench_html(report: dict[str, Any], parity: dict[str, Any] | None = None) -> str:
    if report.get("task") == "text-generation":  # no latency-vs-length grid to plot: the tables
        return f"<!doctype html><meta charset=utf-8><title>bench</title><pre>{_esc(bench_table(report))}</pre>\n"
    """report.html: tables and plots of one bench run (and its parity results), no external assets."""
    results = report["results"]
    batch = 1 if 1 in report["batch_sizes"] else min(report["batch_sizes"])
    backends = list(dict.fromkeys(r["backend"] for r in results))
    latency = {b: [(r["seq_len"], r["p50_ms"]) for r in results if r["backend"] == b and r["batch"] == batch and r["seq_len"] != "real"]
               for b in backends}
    head = [r for r in results if r["batch"] == batch and r["seq_len"] == report["seq_len"]]
    speedup = {r["backend"]: [(0, r["speedup_vs_pytorch"])] for r in head if r.get("speedup_vs_pytorch")}
    plots = [_svg_plot(f"p50 latency vs sequence length (batch {batch})", "tokens per text", "p50 ms", latency, "line", log_x=True),
             _svg_plot(f"speed-up over PyTorch fp32 (batch {batch}, seq {report['seq_len']})", "", "x PyTorch p50", speedup, "bar")]
    if parity:
        p50s = {r["backend"]: r["p50_ms"] for r in head}
        acc: dict[str, list[tuple[float, float]]] = {}
        if "pytorch" in p50s:
            acc["pytorch"] = [(p50s["pytorch"], parity["reference"][parity.get("metric", "accuracy")])]
        for name, v in parity["variants"].items():
            variant, _, device = name.partition("@")
            backend = f"ort-{device}-{variant}" if device else f"ort-{variant}"
            if backend not in p50s and f"ort-cpu-{variant}" in p50s:
                backend = f"ort-cpu-{variant}"
            if backend in p50s and v.get(parity.get("metric", "accuracy")) is not None:
                acc[name] = [(p50s[backend], v[parity.get("metric", "accuracy")])]
        plots.append(_svg_plot(f"accuracy vs latency (batch {batch}, seq {report['seq_len']})", "p50 ms", f"{parity['split']} accuracy", acc, "scatter"))
    m = report["machine"]
    tables = "<pre>" + _esc(bench_table(report)) + "</pre>" + ("<pre>" + _esc(parity_table(parity)) + "</pre>" if parity else "")
    versions_line = ", ".join(f"{k} {v}" for k, v in sorted(m.get("versions", {}).items()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ftexport latency report</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:24px auto;color:#222}} .plots{{display:flex;flex-wrap:wrap;gap:16px}}
pre{{background:#f6f6f6;padding:12px;overflow-x:auto;font-size:12px}}</style></head>
<body><h1>ftexport latency report</h1>
<p>{_esc(m.get("cpu"))} [{_esc(", ".join(m.get("cpu_flags") or []))}], {m.get("cores")} cores, {report["threads"]} threads{_esc(", GPU " + m["gpu"]) if m.get("gpu") else ""};
{report["iterations"]} timed calls per cell after {report["warmup"]} warm-up; same texts for every backend; answers checked against {_esc(report.get("baseline", "pytorch"))} before timing.</p>
<p style="font-size:12px">{_esc(versions_line)}</p>
<div class="plots">{"".join(plots)}</div>
{tables}
<script>
// Record what the browser laid out, so a headless check can tell the plots rendered.
document.body.dataset.plots = Array.from(document.querySelectorAll("svg.plot")).map(function (s) {{
  var r = s.getBoundingClientRect(); return s.dataset.kind + ":" + Math.round(r.width) + "x" + Math.round(r.height) + ":" + s.querySelectorAll(".series").length;
}}).join(" ");
</script>
</body></html>
"""
