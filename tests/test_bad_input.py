"""Bad input that had no test: each gives one line naming what is wrong, the right exit code,
and no partial output."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from ftexport_runtime.bundle import Bundle, write_manifest

from ftexport.cli import main


def test_unreadable_tokenizer_whose_hash_matches(bundle, tmp_path):
    """A tokenizer.json that is not one, re-hashed into the manifest so the sha256 check passes:
    loading still fails in one line naming the file (runtime CLI exit 2)."""
    from ftexport_runtime import Predictor
    from ftexport_runtime.cli import main as runtime_main
    from ftexport_runtime.errors import BundleError

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    (b / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    write_manifest(b, Bundle.open(b, verify="none").manifest)  # the hash now matches the broken file
    Bundle.open(b)  # the tamper check passes: only reading it can tell
    with pytest.raises(BundleError, match=r"tokenizer\.json: not a readable tokenizer\.json \("):
        Predictor.from_bundle(b)
    assert runtime_main(["predict", str(b), "a good film"]) == 2


def test_reference_labels_that_differ_from_the_bundle(tiny_run, tmp_path, tiny_model):
    """validate against a reference trained on other labels: one line, exit 2, no report."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    recipe_path, result = tiny_run
    other = tmp_path / "other"
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model), num_labels=2, id2label={0: "bad", 1: "good"}, label2id={"bad": 0, "good": 1}
    )
    model.save_pretrained(str(other))
    AutoTokenizer.from_pretrained(str(tiny_model)).save_pretrained(str(other))
    out = CliRunner().invoke(
        main,
        ["-q", "validate", str(result.bundle), "--reference", str(other), "--recipe", str(recipe_path), "-o", str(tmp_path / "parity")],
    )
    assert out.exit_code == 2, out.output
    assert out.output.strip() == (
        "error: reference model labels ['bad', 'good'] differ from the bundle's ['negative', 'positive']; "
        "compare the model the bundle was exported from"
    )
    assert not (tmp_path / "parity").exists()


def test_parity_report_of_an_old_run_still_reads(tiny_run, tmp_path):
    """parity.json written before reports were versioned (no schema_version, no task) reads as
    a classifier's report, and pack records it."""
    from ftexport.core.reports import ParityReport

    result = tiny_run[1]
    data = json.loads((result.root / "parity" / "parity.json").read_text())
    for key in ("schema_version", "task"):
        data.pop(key, None)
    old = tmp_path / "old-parity"
    old.mkdir()
    (old / "parity.json").write_text(json.dumps(data))
    report = ParityReport.load(old)
    assert report.schema_version == 0 and report.passed == data["passed"]
    out = CliRunner().invoke(main, ["-q", "pack", str(result.root / "quantized"), "-o", str(tmp_path / "packed"), "--parity", str(old)])
    assert out.exit_code == 0, out.output
    assert Bundle.open(tmp_path / "packed").manifest.parity["passed"] is True


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        ({"variants": {}}, "no verdict on variant fp32, int8 of this bundle (it judged: nothing)"),
        ({"labels": ["ham", "spam"]}, "it judged labels [ham, spam], this bundle's are [negative, positive]"),
        ({"task": "token-classification"}, "it judged a token-classification model, this bundle is text-classification"),
    ],
)
def test_parity_report_of_another_bundle_is_refused(tiny_run, tmp_path, edit, says):
    """pack --parity records the report's verdict in the manifest: a report that judged nothing
    (vacuously passed) or judged another model must not become this bundle's 'passed'."""
    result = tiny_run[1]
    data = {**json.loads((result.root / "parity" / "parity.json").read_text()), **edit}
    other = tmp_path / "other"
    other.mkdir()
    (other / "parity.json").write_text(json.dumps(data))
    out = CliRunner().invoke(main, ["-q", "pack", str(result.root / "quantized"), "-o", str(tmp_path / "packed"), "--parity", str(other)])
    assert out.exit_code == 2 and says in out.output and len(out.output.strip().splitlines()) == 1, out.output
    assert not (tmp_path / "packed").exists()


def test_corrupt_parity_report_is_one_line(tiny_run, tmp_path):
    result = tiny_run[1]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "parity.json").write_text('{"split": "test"}')
    out = CliRunner().invoke(main, ["-q", "pack", str(result.root / "quantized"), "-o", str(tmp_path / "packed"), "--parity", str(bad)])
    assert out.exit_code == 2 and "not a readable parity report" in out.output and len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "packed").exists()


def test_truncated_bench_report_for_compare(tiny_run, tmp_path):
    recipe_path, result = tiny_run
    old = tmp_path / "old.json"
    old.write_text('{"schema_version": 2, "results": [')
    out = CliRunner().invoke(
        main, ["-q", "bench", str(result.bundle), "--compare", str(old), "--backends", "ort-fp32", "-o", str(tmp_path / "b")]
    )
    assert out.exit_code == 2 and "not a readable bench.json" in out.output
    assert not (tmp_path / "b").exists()
