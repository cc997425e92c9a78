"""report.html: one self-contained file of a bench run, its tables and plots as inline SVG
(latency against length, speed-up over PyTorch, and accuracy against latency when the parity
results are given), readable offline."""

from __future__ import annotations

from typing import Any

from ..core.tables import tradeoff_table

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _esc(text: Any) -> str:
    import html

    return html.escape(str(text))


def _svg_plot(
    title: str,
    xlabel: str,
    ylabel: str,
    series: dict[str, list[tuple[float, float]]],
    kind: str = "line",
    log_x: bool = False,
    labels: dict[str, str] | None = None,
) -> str:
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
    out = [
        f'<svg class="plot" data-kind="{kind}" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'role="img">',
        f'<title>{_esc(title)}</title><rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2 - right / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{_esc(title)}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#333"/>',
        f'<text x="{(left + w - right) / 2}" y="{h - 10}" text-anchor="middle" font-size="12">{_esc(xlabel)}</text>',
        f'<text transform="translate(16 {(top + h - bottom) / 2}) rotate(-90)" text-anchor="middle" font-size="12">{_esc(ylabel)}</text>',
    ]
    for i in range(5):  # y grid and ticks
        v = y0 + (y1 - y0) * i / 4
        out.append(
            f'<line x1="{left}" y1="{sy(v):.1f}" x2="{w - right}" y2="{sy(v):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.3g}</text>'
        )
    if kind != "bar":
        ticks = sorted({p[0] for p in pts}) if kind == "line" else [x0 + (x1 - x0) * i / 4 for i in range(5)]
        for t in ticks:
            out.append(
                f'<text x="{sx(fx(t) if kind == "line" else t):.1f}" y="{h - bottom + 16}" text-anchor="middle" '
                f'font-size="11">{t:.3g}</text>'
            )
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
            out.append(
                f'<rect class="series" x="{sx(i) - bw / 2:.1f}" y="{sy(y):.1f}" width="{bw:.1f}" height="{sy(0) - sy(y):.1f}" '
                f'fill="{color}"/>'
                f'<text x="{sx(i):.1f}" y="{sy(y) - 4:.1f}" text-anchor="middle" font-size="11">{y:.2f}x</text>'
            )
        label = (labels or {}).get(name, name)
        ly = top + 16 * i
        out.append(
            f'<rect x="{w - right + 12}" y="{ly}" width="10" height="10" fill="{color}"/>'
            f'<text x="{w - right + 28}" y="{ly + 9}" font-size="11">{_esc(label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def bench_html(report: Any, task: Any, parity: Any = None) -> str:
    """report.html: tables and plots of one bench run (and its parity results), no external assets."""
    bench_table, parity_table = task.bench_table, task.parity_table
    if any(r.get("phase") for r in report["results"]):  # phases of one cell (a decoder): no latency-vs-length grid to plot
        return f"<!doctype html><meta charset=utf-8><title>bench</title><pre>{_esc(bench_table(report))}</pre>\n"
    results = report["results"]
    batch = 1 if 1 in report["batch_sizes"] else min(report["batch_sizes"])
    backends = list(dict.fromkeys(r["backend"] for r in results))
    latency = {
        b: [(r["seq_len"], r["p50_ms"]) for r in results if r["backend"] == b and r["batch"] == batch and r["seq_len"] != "real"]
        for b in backends
    }
    head = [r for r in results if r["batch"] == batch and r["seq_len"] == report["seq_len"]]
    speedup = {r["backend"]: [(0, r["speedup_vs_pytorch"])] for r in head if r.get("speedup_vs_pytorch")}
    plots = [
        _svg_plot(f"p50 latency vs sequence length (batch {batch})", "tokens per text", "p50 ms", latency, "line", log_x=True),
        _svg_plot(f"speed-up over PyTorch fp32 (batch {batch}, seq {report['seq_len']})", "", "x PyTorch p50", speedup, "bar"),
    ]
    if report.get("accuracy"):  # scored in the bench run itself (--accuracy): every backend, every model
        p50s = {r["backend"]: r["p50_ms"] for r in head}
        acc_of = {b: [(p50s[b], a)] for b, a in report["accuracy"].items() if b in p50s}
        plots.append(
            _svg_plot(f"accuracy vs latency (batch {batch}, seq {report['seq_len']})", "p50 ms", "test accuracy", acc_of, "scatter")
        )
    elif parity:
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
        plots.append(
            _svg_plot(
                f"accuracy vs latency (batch {batch}, seq {report['seq_len']})", "p50 ms", f"{parity['split']} accuracy", acc, "scatter"
            )
        )
    m = report["machine"]
    tables = "<pre>" + _esc(bench_table(report)) + "</pre>" + ("<pre>" + _esc(parity_table(parity)) + "</pre>" if parity else "")
    if report.get("accuracy") or report.get("models"):
        tables = "<pre>" + _esc(tradeoff_table(report)) + "</pre>" + tables
    versions_line = ", ".join(f"{k} {v}" for k, v in sorted(m.get("versions", {}).items()))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ftexport latency report</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:24px auto;color:#222}} .plots{{display:flex;flex-wrap:wrap;gap:16px}}
pre{{background:#f6f6f6;padding:12px;overflow-x:auto;font-size:12px}}</style></head>
<body><h1>ftexport latency report</h1>
<p>{_esc(m.get("cpu"))} [{_esc(", ".join(m.get("cpu_flags") or []))}], {m.get("cores")} cores,
{report["threads"]} threads{_esc(", GPU " + m["gpu"]) if m.get("gpu") else ""};
{report["iterations"]} timed calls per cell after {report["warmup"]} warm-up; same texts for every backend;
answers checked against {_esc(report.get("baseline", "pytorch"))} before timing.</p>
<p style="font-size:12px">{_esc(versions_line)}</p>
<div class="plots">{"".join(plots)}</div>
{tables}
<script>
// Record what the browser laid out, so a headless check can tell the plots rendered.
document.body.dataset.plots = Array.from(document.querySelectorAll("svg.plot")).map(function (s) {{
  var r = s.getBoundingClientRect();
  return s.dataset.kind + ":" + Math.round(r.width) + "x" + Math.round(r.height) + ":" + s.querySelectorAll(".series").length;
}}).join(" ");
</script>
</body></html>
"""
