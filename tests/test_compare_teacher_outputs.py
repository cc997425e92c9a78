"""tools/compare_teacher_outputs.py: two teachers' outputs compared on the texts both files hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ftexport.train.teacher_outputs import save_teacher_outputs

REPO = Path(__file__).resolve().parents[1]
META = {"label_names": ["negative", "positive"], "max_length": 32}


def run_tool(*args: str) -> subprocess.CompletedProcess:
    tool = REPO / "tools" / "compare_teacher_outputs.py"
    return subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True, cwd=REPO)


def test_two_teachers_are_compared_on_the_texts_they_share(tmp_path):
    a = np.array([[2.0, -2.0], [-1.0, 1.0], [0.5, 0.0], [3.0, 0.0]], np.float32)
    b = a.copy()
    b[2] = [0.0, 0.5]  # the two teachers disagree on "c"
    b[1] += 10.0  # an offset shared by both labels: the same soft targets
    save_teacher_outputs(tmp_path / "a.npz", ["a", "b", "c", "only-a"], a, META)
    save_teacher_outputs(tmp_path / "b.npz", ["a", "b", "c", "only-b"], np.vstack([b[:3], [[1.0, 1.0]]]), META)
    done = run_tool(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--temperature", "1", "--out", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert (r["common_texts"], r["only_in_first"], r["only_in_second"]) == (3, 1, 1)
    assert r["label_agreement"] == 2 / 3
    assert r["logit_abs_diff"]["max"] == 10.0
    p = np.exp([0.5, 0.0]) / np.exp([0.5, 0.0]).sum()
    assert np.isclose(r["soft_target_abs_diff"]["mean"], 2 * abs(p[0] - p[1]) / 6)  # only "c" moved, both labels by the same
    assert np.isclose(r["centred_logit_abs_diff"]["mean"], 0.5 / 3)


def test_files_that_cannot_compare_are_one_line(tmp_path):
    save_teacher_outputs(tmp_path / "a.npz", ["a"], np.zeros((1, 2), np.float32), META)
    save_teacher_outputs(tmp_path / "b.npz", ["b"], np.zeros((1, 2), np.float32), META)
    save_teacher_outputs(tmp_path / "c.npz", ["a"], np.zeros((1, 2), np.float32), {**META, "label_names": ["neg", "pos"]})
    for other, says in (("b.npz", "no text in common"), ("c.npz", "only files of one label set")):
        done = run_tool(str(tmp_path / "a.npz"), str(tmp_path / other), "--out", str(tmp_path / "r.json"))
        assert done.returncode != 0 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not (tmp_path / "r.json").exists()
