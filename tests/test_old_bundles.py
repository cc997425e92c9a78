"""Bundles written before the plug-in redesign (tests/fixtures/bundles-0.1.0, made by the
0.1.0 code) load in today's runtime and give the same answers, and their reports read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ftexport_runtime import Bundle, Predictor

FIXTURES = Path(__file__).parent / "fixtures" / "bundles-0.1.0"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
CASES = sorted(EXPECTED["answers"])


@pytest.mark.parametrize("case", CASES)
def test_old_bundle_answers_as_it_did(case):
    task, variant = case.split("/")
    bundle = FIXTURES / task
    assert Bundle.open(bundle).manifest.task == task  # every file's sha256 still verifies
    p = Predictor.from_bundle(bundle, variant=variant)
    texts = EXPECTED["texts"][task]
    want = EXPECTED["answers"][case]
    if p.generator is not None:
        got = [g.as_dict() for g in p.generate(texts, max_new_tokens=6)]
        assert got == want
        return
    got = [a.as_dict() for a in p.predict(texts)]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if "entities" in w:
            assert [(e["entity_group"], e["start"], e["end"]) for e in g["entities"]] == [
                (e["entity_group"], e["start"], e["end"]) for e in w["entities"]
            ]
            assert [e["score"] for e in g["entities"]] == pytest.approx([e["score"] for e in w["entities"]], abs=1e-6)
        else:
            assert g["label"] == w["label"] and g["score"] == pytest.approx(w["score"], abs=1e-6)


@pytest.mark.parametrize("task", ["text-classification", "token-classification", "text-generation"])
def test_old_reports_read_and_repack(task, tmp_path):
    """The toolchain reads the old parity.json and bench.json, and packs the old bundle again."""
    from click.testing import CliRunner

    from ftexport.cli import main
    from ftexport.core.reports import BenchReport, ParityReport

    src = tmp_path / "old"
    shutil.copytree(FIXTURES / task, src)
    reports = tmp_path / "reports"
    reports.mkdir()
    shutil.copy(src / "parity.json", reports / "parity.json")
    parity = ParityReport.load(reports)
    assert parity.passed and parity.examples > 0
    assert BenchReport.load(src / "bench.json")["results"]
    out = CliRunner().invoke(main, ["-q", "pack", str(src), "-o", str(tmp_path / "again"), "--parity", str(reports)])
    assert out.exit_code == 0, out.output
    assert Bundle.open(tmp_path / "again").manifest.parity["passed"] is True
    Bundle.open(src)  # the bundle packed from is untouched: its reports were replaced in the copy, not written through


@pytest.mark.parametrize("mode", ["dynamic", "int8-block"])
def test_quantizing_again_leaves_the_source_bundle_as_it_was(mode, tmp_path):
    """The output starts as hard links to the source's files: a variant built again must be a
    new file, never a write through a link into the bundle it was made from."""
    from click.testing import CliRunner

    from ftexport.cli import main

    src = tmp_path / "old"
    shutil.copytree(FIXTURES / "text-classification", src)
    before = {f.name: f.read_bytes() for f in src.iterdir() if f.is_file()}
    out = CliRunner().invoke(main, ["-q", "quantize", str(src), "-o", str(tmp_path / "q"), "--mode", mode])
    assert out.exit_code == 0, out.output
    assert {f.name: f.read_bytes() for f in src.iterdir() if f.is_file()} == before
    Bundle.open(src)
    Bundle.open(tmp_path / "q")
