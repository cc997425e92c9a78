"""Markdown tables: the one formatter every report (parity, bench, distill) prints with."""

from __future__ import annotations

from typing import Any


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


def ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def tradeoff_table(report: Any) -> str:
    """What to ship: per backend (model), accuracy, p50 at batch 1 on fixed-length and on
    real-traffic texts, size, and speed-up over the first model's PyTorch."""
    results, accuracy, sizes = report["results"], report.get("accuracy", {}), report.get("model_bytes", {})
    seq = report["seq_len"]

    def cell(backend: str, seq_len: Any) -> dict[str, Any] | None:
        return next((r for r in results if r["backend"] == backend and r["batch"] == 1 and r["seq_len"] == seq_len), None)

    rows = []
    for b in dict.fromkeys([*sizes, *(r["backend"] for r in results)]):  # model by model, as asked (model_bytes keeps that order)
        fixed, real = cell(b, seq), cell(b, "real")
        rows.append(
            [
                b,
                f"{100 * accuracy[b]:.2f}%" if b in accuracy else None,
                ms(fixed["p50_ms"]) if fixed else None,
                f"{fixed['speedup_vs_pytorch']:.2f}x" if fixed and fixed.get("speedup_vs_pytorch") else None,
                ms(real["p50_ms"]) if real else None,
                f"{real['speedup_vs_pytorch']:.2f}x" if real and real.get("speedup_vs_pytorch") else None,
                f"{sizes[b] / 2**20:.1f}" if sizes.get(b) else None,
            ]
        )
    n = report.get("accuracy_texts")
    head = f"Trade-off at batch 1 (accuracy on {n} labelled texts; speed-up against {report['baseline']}):\n\n" if n else ""
    return head + markdown_table(["backend", "accuracy", f"p50 ms seq {seq}", "speed-up", "p50 ms real", "speed-up real", "size MiB"], rows)
