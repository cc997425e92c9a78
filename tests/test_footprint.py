"""tools/footprint.py: the runtime's installed size and cold start against the stacks a user
would otherwise embed (measured figures: docs/footprint.md)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import footprint  # noqa: E402


def test_runtime_closure_is_small_and_torch_free():
    runtime = footprint.closure(["ftexport-runtime"])
    assert {"onnxruntime", "tokenizers", "numpy"} <= set(runtime)
    assert not {"torch", "transformers", "optimum"} & set(runtime)
    torch_stack = footprint.closure(["torch", "transformers"])
    assert "torch" in torch_stack and sum(runtime.values()) * 3 < sum(torch_stack.values())


def test_cold_start_child_loads_the_bundle_without_torch(bundle):
    from ftexport_runtime import Predictor

    c = footprint.cold_start("ftexport-runtime", [str(bundle), footprint.TEXT], repeats=2)
    assert "error" not in c, c
    assert c["torch_loaded"] is False and 0 < c["seconds"] < c["process_wall_s"] and len(c["all_seconds"]) == 2
    assert c["label"] == Predictor.from_bundle(bundle).predict([footprint.TEXT])[0].label


def test_closure_of_another_environment_is_read_by_its_own_python():
    # the same interpreter seen from outside gives the same closure as from inside
    assert footprint.closure_in(sys.executable, ["ftexport-runtime"]) == footprint.closure(["ftexport-runtime"])
