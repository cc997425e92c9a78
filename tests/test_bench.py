"""`ftexport bench` as a tool: the batch x sequence grid, the report schema, the regression
gate (--compare) and the one-line errors for bad grids and backends."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ftexport.cli import main

CELL_KEYS = {"backend", "batch", "seq_len", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "throughput_per_s", "iterations", "speedup_vs_pytorch"}


def run_bench(result, out: Path, *extra: str):
    args = ["-q", "bench", str(result.root / "quantized"), "--reference", str(result.root / "merged"), "-o", str(out),
            "--iterations", "3", "--warmup", "1", "--backends", "pytorch,ort-fp32,ort-int8", *extra]
    return CliRunner().invoke(main, args)


def test_grid_runner_and_schema(tiny_run, tmp_path):
    result = tiny_run[1]
    out = run_bench(result, tmp_path / "b", "--batch-sizes", "1,2", "--seq-lens", "8,16")
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert report["schema_version"] == 1 and report["seq_lens"] == [8, 16] and report["batch_sizes"] == [1, 2]
    cells = {(r["backend"], r["batch"], r["seq_len"]) for r in report["results"]}
    assert cells == {(b, n, s) for b in ("pytorch", "ort-fp32", "ort-int8") for n in (1, 2) for s in (8, 16)}
    for r in report["results"]:
        assert CELL_KEYS <= set(r), set(r) ^ CELL_KEYS
        assert r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert {"cpu", "cpu_flags", "cores", "versions"} <= set(report["machine"])
    assert {"torch", "onnxruntime", "transformers"} <= set(report["machine"]["versions"])
    assert "| ort-int8 " in (tmp_path / "b" / "bench.md").read_text()


def test_compare_catches_an_injected_slowdown(tiny_run, tmp_path):
    result = tiny_run[1]
    assert run_bench(result, tmp_path / "base", "--batch-sizes", "1", "--seq-len", "8").exit_code == 0
    baseline = json.loads((tmp_path / "base" / "bench.json").read_text())

    # an old report where ort-int8 was 3x faster than it is now: today's run is a regression
    fast_old = json.loads(json.dumps(baseline))
    for r in fast_old["results"]:
        if r["backend"] == "ort-int8":
            r["p50_ms"] /= 3
    (tmp_path / "fast_old.json").write_text(json.dumps(fast_old))
    out = run_bench(result, tmp_path / "new", "--batch-sizes", "1", "--seq-len", "8", "--compare", str(tmp_path / "fast_old.json"))
    assert out.exit_code == 1, out.output
    assert "REGRESSION" in out.output and "ort-int8 batch 1 seq 8" in out.output

    # an old report where everything was 10x slower: no regression, exit 0
    slow_old = json.loads(json.dumps(baseline))
    for r in slow_old["results"]:
        r["p50_ms"] *= 10
    (tmp_path / "slow_old.json").write_text(json.dumps(slow_old))
    ok = run_bench(result, tmp_path / "new2", "--batch-sizes", "1", "--seq-len", "8", "--compare", str(tmp_path / "slow_old.json"))
    assert ok.exit_code == 0, ok.output
    assert "REGRESSION" not in ok.output
    # each cell's printed change is new p50 / old p50 - 1, from the two reports (about -90%)
    new = json.loads((tmp_path / "new2" / "bench.json").read_text())
    old_p50 = {(r["backend"], r["batch"], r["seq_len"]): r["p50_ms"] for r in slow_old["results"]}
    for r in new["results"]:
        change = r["p50_ms"] / old_p50[(r["backend"], r["batch"], r["seq_len"])] - 1
        assert change < -0.5 and f"{change:+.1%}" in ok.output, (r["backend"], change)


def test_bad_grids_backends_and_reports_are_one_line_errors(tiny_run, tmp_path):
    result = tiny_run[1]
    (tmp_path / "junk.json").write_text("{not json")
    cases = {
        ("--seq-lens", "16,4096"): "exceeds the bundle's max_length",
        ("--batch-sizes", "0,4"): "--batch-sizes",
        ("--seq-lens", "-8"): "--seq-lens",
        ("--backends", "pytorch,onnx-magic"): "unknown backend 'onnx-magic'",
        ("--compare", str(tmp_path / "junk.json")): "not a readable bench.json",
    }
    for args, message in cases.items():
        out = CliRunner().invoke(main, ["-q", "bench", str(result.root / "quantized"), "--reference", str(result.root / "merged"),
                                        "-o", str(tmp_path / "x"), *args])
        assert out.exit_code == 2, (args, out.output)
        assert message in out.output and len(out.output.strip().splitlines()) == 1, (args, out.output)
        assert not (tmp_path / "x").exists()


def _chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_html_is_self_contained_and_renders_in_headless_chromium(tiny_run, tmp_path):
    import re
    import subprocess

    import pytest

    result = tiny_run[1]
    out = run_bench(result, tmp_path / "b", "--batch-sizes", "1", "--seq-lens", "8,16", "--parity", str(result.root / "parity"))
    assert out.exit_code == 0, out.output
    page = (tmp_path / "b" / "report.html").read_text()
    assert page.count('<svg class="plot"') == 3  # latency vs length, speed-up, accuracy vs latency
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched: readable offline

    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium; .ci/run installs it)")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (tmp_path / "b" / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    rendered = re.search(r'data-plots="([^"]*)"', dom)
    assert rendered, dom[:500]
    plots = dict(item.split(":", 1) for item in rendered.group(1).split())
    assert set(plots) == {"line", "bar", "scatter"}
    for kind, info in plots.items():
        size, series = info.split(":")
        width, height = map(int, size.split("x"))
        assert width >= 600 and height >= 300, (kind, info)  # laid out at full size
        assert int(series) >= 3, (kind, info)  # pytorch, ort-fp32, ort-int8 drawn
    png = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900", f"--screenshot={png}",
                    (tmp_path / "b" / "report.html").as_uri()], capture_output=True, timeout=120)
    assert png.is_file() and png.stat().st_size > 20_000  # a painted page, not a blank one
