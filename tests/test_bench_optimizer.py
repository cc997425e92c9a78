"""tools/bench_optimizer.py: the per-tensor and the fused AdamW timed on the same batches, and
the two kernels' parameters compared after the same steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_both_kernels_are_timed_and_train_to_the_same_weights(tiny_model, tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"good film number {i}\t1\n" for i in range(8)))
    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_optimizer.py"), "--model", str(tiny_model), "--data", str(tsv),
         "--batch-size", "4", "--steps", "2", "--rounds", "2", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    r = json.loads(out.read_text())
    assert set(r["p50_step_ms"]) == set(r["p50_optimizer_step_ms"]) == {"adamw_torch", "adamw_torch_fused"}
    assert all(v > 0 for v in r["p50_step_ms"].values())
    assert r["speedup_fused"] == pytest.approx(r["p50_step_ms"]["adamw_torch"] / r["p50_step_ms"]["adamw_torch_fused"], rel=0.01)
    assert r["max_abs_param_diff_after_steps"] < 1e-5  # one algorithm, two kernels
    assert r["parameters"] > 0 and r["machine"]["cores"] >= 1
