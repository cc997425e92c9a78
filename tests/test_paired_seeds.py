"""tools/paired_seeds.py: two sets of students paired seed by seed on the test split, with the
same accuracy and McNemar counts `ftexport distill` gives its student and baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_tiny_model, tiny_recipe, write_recipe

REPO = Path(__file__).resolve().parents[1]


def classifier(src: Path, out: Path, seed: int) -> Path:
    """The tiny encoder with a random 2-label head (seeded): models that disagree on some texts."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_pretrained(str(src), num_labels=2).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    return out


def right(model_dir: Path, texts: list[str], labels: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    enc = AutoTokenizer.from_pretrained(str(model_dir))(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.argmax(-1).numpy() == np.asarray(labels)


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "paired_seeds.py"), *args], capture_output=True, text=True, cwd=REPO)


def report_of(recipe: Path, out: Path, pairs: list[str], *more: str) -> dict:
    """Run the tool with --pair for each of `pairs` (and `more` options); its JSON report."""
    done = run_tool(str(recipe), *[arg for spec in pairs for arg in ("--pair", spec)], *more, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return json.loads(out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("paired")
    base = make_tiny_model(tmp / "base")
    recipe = write_recipe(tmp / "recipe.yaml", tiny_recipe(tmp, base))
    dirs = {seed: (classifier(base, tmp / f"a{seed}", seed), classifier(base, tmp / f"b{seed}", 100 + seed)) for seed in (1, 2)}
    return tmp, recipe, dirs


def test_each_seed_is_scored_and_paired_like_distill(pairs):
    import pandas as pd

    tmp, recipe, dirs = pairs
    out = tmp / "report"
    report = report_of(recipe, out, [f"{s}={a}:{b}" for s, (a, b) in dirs.items()], "--names", "kd run,no KD")
    assert report["names"] == {"student": "kd run", "baseline": "no KD"}
    assert "--names 'kd run,no KD'" in out.with_suffix(".md").read_text()  # the command line as run, to rerun it
    test = pd.read_csv(tmp / "data" / "test.csv")
    labels = [["negative", "positive"].index(x) for x in test["label"]]
    for seed, (a, b) in dirs.items():
        ra, rb = right(a, list(test["sentence"]), labels), right(b, list(test["sentence"]), labels)
        row = report["per_seed"][str(seed)]
        assert row["student_accuracy"] == pytest.approx(ra.mean()) and row["baseline_accuracy"] == pytest.approx(rb.mean())
        paired = row["student_vs_baseline"]
        assert (paired["student_only_right"], paired["baseline_only_right"]) == (int((ra & ~rb).sum()), int((~ra & rb).sum()))
    accs = [report["per_seed"][str(s)]["student_accuracy"] for s in dirs]
    assert report["student"]["mean"] == pytest.approx(np.mean(accs))
    assert report["mean_student_minus_baseline"] == pytest.approx(report["student"]["mean"] - report["baseline"]["mean"])
    mean_row = next(line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| mean"))
    assert f"{100 * report['mean_student_minus_baseline']:+.2f}" in mean_row
    assert report["shipped_seed"] == {"seed": 1, "rule": "first"}  # a recipe without distill.ship outputs the first seed's


def test_the_report_names_the_seed_a_best_dev_recipe_would_ship(pairs):
    from ftexport.core.artifacts import StageRecord

    tmp, _, dirs = pairs
    base = tmp / "base"
    recipe = write_recipe(
        tmp / "ship.yaml",
        {**tiny_recipe(tmp, base, method__name="full"), "distill": {"teacher": str(base), "level": "text", "ship": "best_dev"}},
    )
    for seed, dev in ((1, 0.6), (2, 0.7)):
        StageRecord("train", f"k{seed}", metrics={"accuracy": dev}).write(dirs[seed][0])
        StageRecord("train", f"b{seed}", metrics={"accuracy": 1.0 - dev}).write(dirs[seed][1])  # baselines never pick
    out = tmp / "ship"
    args = [arg for s, (a, b) in dirs.items() for arg in ("--pair", f"{s}={a}:{b}")]
    done = run_tool(str(recipe), *args, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.with_suffix(".json").read_text())["shipped_seed"] == {"seed": 2, "rule": "best_dev"}
    assert "would be the student side of seed 2." in out.with_suffix(".md").read_text()


def test_a_malformed_pair_or_a_folder_without_a_model_is_one_line_naming_the_fix(pairs):
    tmp, recipe, dirs = pairs
    a, _ = dirs[1]
    for spec in (f"x={a}:{a}", f"1={a}:", f"1=:{a}", str(a)):
        bad = run_tool(str(recipe), "--pair", spec, "--out", str(tmp / "x"))
        assert bad.returncode != 0 and "SEED=STUDENT_DIR:BASELINE_DIR" in bad.stderr, spec
    mixed = run_tool(str(recipe), "--pair", f"1={a}:{a}", "--pair", f"2={a}", "--out", str(tmp / "x"))
    assert mixed.returncode != 0 and "every seed two sides, or every seed one" in mixed.stderr
    missing = run_tool(str(recipe), "--pair", f"1={a}:{tmp / 'nowhere'}", "--out", str(tmp / "x"))
    assert missing.returncode != 0 and "is not a model folder" in missing.stderr
    assert not (tmp / "x.json").exists()


def test_names_must_be_two_comma_separated_sides(pairs):
    tmp, recipe, dirs = pairs
    a, b = dirs[1]
    for names in ("only-one", "a,b,c", "a,"):
        bad = run_tool(str(recipe), "--pair", f"1={a}:{b}", "--names", names, "--out", str(tmp / "n"))
        assert bad.returncode != 0 and "comma-separated" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp / "n.json").exists()


def test_a_side_from_an_earlier_report_pairs_as_its_model_folder_did(pairs):
    """runs/ does not always survive a session: a report keeps each side's right/wrong per test
    text, and REPORT.json#SIDE pairs a new run with it as if the old folder were still there."""
    import pandas as pd

    tmp, recipe, dirs = pairs
    first = tmp / "first"
    old = report_of(recipe, first, [f"{s}={a}:{b}" for s, (a, b) in dirs.items()])
    test = pd.read_csv(tmp / "data" / "test.csv")
    labels = [["negative", "positive"].index(x) for x in test["label"]]
    for seed, (_, b) in dirs.items():  # what the report keeps is each text's result, in test order
        kept = old["per_seed"][str(seed)]["right"]["baseline"]
        assert kept == "".join("1" if r else "0" for r in right(b, list(test["sentence"]), labels))

    new = report_of(recipe, tmp / "again", [f"{s}={a}:{first.with_suffix('.json')}#baseline" for s, (a, _) in dirs.items()])
    for seed in dirs:
        for key in ("student_accuracy", "baseline_accuracy", "student_vs_baseline", "right"):
            assert new["per_seed"][str(seed)][key] == old["per_seed"][str(seed)][key]
    assert new["mean_student_minus_baseline"] == pytest.approx(old["mean_student_minus_baseline"])


def test_a_report_side_that_cannot_pair_is_one_line_naming_the_fix(pairs):
    tmp, recipe, dirs = pairs
    a, b = dirs[1]
    first = tmp / "kept"
    assert run_tool(str(recipe), "--pair", f"1={a}:{b}", "--out", str(first)).returncode == 0
    report = json.loads(first.with_suffix(".json").read_text())
    other = tmp / "other-split.json"
    other.write_text(json.dumps({**report, "test_sha256": "0" * 64}))
    old = tmp / "old.json"  # a report from before per-text results
    old.write_text(json.dumps({**report, "per_seed": {"1": {k: v for k, v in report["per_seed"]["1"].items() if k != "right"}}}))
    garbled = tmp / "garbled.json"
    garbled.write_text("{not json")
    cases = {
        f"1={a}:{garbled}#baseline": "not a JSON report",
        f"1={a}:{other}#baseline": "another test split",
        f"1={a}:{old}#baseline": "no per-text results for the baseline side of seed 1",
        f"2={a}:{first.with_suffix('.json')}#baseline": "no per-text results for the baseline side of seed 2",
        f"1={a}:{first.with_suffix('.json')}#teacher": "student or baseline",
        f"1={a}:{tmp / 'nowhere.json'}#baseline": "is not a file",
    }
    for spec, words in cases.items():
        bad = run_tool(str(recipe), "--pair", spec, "--out", str(tmp / "r"))
        assert bad.returncode != 0 and "Traceback" not in bad.stderr, (spec, bad.stderr)
        assert words in bad.stderr.strip().splitlines()[-1], (spec, bad.stderr)  # the error is the last line (argparse puts usage above)
    assert not (tmp / "r.json").exists()


def test_one_side_alone_is_kept_and_pairs_later_as_if_both_had_run_together(pairs):
    """Students without KD trained in one session, the distilled ones in the next: the first
    report scores one side and keeps it; the second pairs with it exactly as one run would."""
    tmp, recipe, dirs = pairs
    alone = tmp / "alone"
    kept = report_of(recipe, alone, [f"{s}={b}" for s, (_, b) in dirs.items()], "--names", "no KD")
    assert kept["names"] == {"student": "no KD"} and "baseline" not in kept and "student_vs_baseline" not in kept["per_seed"]["1"]
    together = report_of(recipe, tmp / "both", [f"{s}={a}:{b}" for s, (a, b) in dirs.items()])
    later = [f"{s}={a}:{alone.with_suffix('.json')}#student" for s, (a, _) in dirs.items()]
    apart = report_of(recipe, tmp / "later", later)
    assert apart["per_seed"] == together["per_seed"] and apart["mean_student_minus_baseline"] == together["mean_student_minus_baseline"]
    two_names = run_tool(str(recipe), "--pair", later[0], "--names", "only-one", "--out", str(tmp / "n1"))
    assert two_names.returncode != 0 and "comma-separated" in two_names.stderr
