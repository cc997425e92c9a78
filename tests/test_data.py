"""Data loading from every supported format, and the errors for bad data."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_rows, write_split

from ftexport.core.errors import DataError
from ftexport.data import load_data
from ftexport.recipe import DataSection


def section(tmp_path, train, test, **kw) -> DataSection:
    return DataSection(root=str(tmp_path), train=train, test=test, text_column="sentence", label_column="label", **kw)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_formats_load_and_map_labels(tmp_path, suffix):
    write_split(tmp_path / f"train{suffix}", make_rows(10, 1))
    write_split(tmp_path / f"test{suffix}", make_rows(6, 2))
    data = load_data(section(tmp_path, f"train{suffix}", f"test{suffix}"))
    assert data.label_names == ["negative", "positive"]  # inferred, sorted
    assert len(data["train"]) == 10 and len(data["test"]) == 6
    assert data["train"].labels[:4] == [0, 1, 0, 1]
    assert all(isinstance(t, str) and t for t in data["test"].texts)


def test_saved_dataset_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = make_rows(8, 1)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "train_ds"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(make_rows(4, 2))}).save_to_disk(str(tmp_path / "all"))
    data = load_data(section(tmp_path, "train_ds", "all"))
    assert len(data["train"]) == 8 and len(data["test"]) == 4


def test_integer_labels_with_names(tmp_path):
    rows = [{"sentence": r["sentence"], "label": int(r["label"] == "positive")} for r in make_rows(6, 1)]
    write_split(tmp_path / "train.tsv", rows)
    data = load_data(section(tmp_path, "train.tsv", "train.tsv", label_names=["neg", "pos"]))
    assert data.label_names == ["neg", "pos"]
    assert data["train"].labels == [r["label"] for r in rows]


def test_missing_column(tmp_path):
    write_split(tmp_path / "train.csv", [{"text": "x", "label": "a"}])
    with pytest.raises(
        DataError, match=r"^recipe\.data\.train: .*train\.csv has no column 'sentence' \(it has: text, label\); set data\.text_column$"
    ):
        load_data(section(tmp_path, "train.csv", "train.csv"))


def test_label_not_in_label_set(tmp_path):
    write_split(tmp_path / "train.csv", make_rows(4, 1))
    write_split(tmp_path / "test.csv", make_rows(3, 2) + [{"sentence": "meh", "label": "neutral"}])
    with pytest.raises(
        DataError, match=r"^recipe\.data\.test: label 'neutral' in row 4 of .*test\.csv is not in the label set \[negative, positive\]"
    ):
        load_data(section(tmp_path, "train.csv", "test.csv"))


def test_integer_label_out_of_range(tmp_path):
    write_split(tmp_path / "train.csv", [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 3}])
    with pytest.raises(DataError, match=r"label 3 in row 2 .* is not in the label set \[neg, pos\]"):
        load_data(section(tmp_path, "train.csv", "train.csv", label_names=["neg", "pos"]))


def test_empty_dataset(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\n")
    with pytest.raises(DataError, match=r"^recipe\.data\.train: .*train\.csv has no rows"):
        load_data(section(tmp_path, "train.csv", "train.csv"))


def test_empty_text(tmp_path):
    write_split(tmp_path / "train.csv", [{"sentence": "fine", "label": "a"}, {"sentence": "  ", "label": "b"}])
    with pytest.raises(DataError, match=r"row 2 of .* has no text"):
        load_data(section(tmp_path, "train.csv", "train.csv"))


@pytest.mark.parametrize("limit", [None, 9])
@pytest.mark.parametrize(
    ("bad", "says"), [({"sentence": " ", "label": "positive"}, "has no text"), ({"sentence": "meh", "label": "neutral"}, "is not in")]
)
def test_bad_row_is_named_by_its_place_in_the_file_when_sampled(tmp_path, limit, bad, says):
    """A sample of the rows (max_train_samples) shuffles them: the error still names the row
    where the file has it (the 8th), not its place in the sample."""
    rows = make_rows(10, 1)
    rows[7] = bad
    write_split(tmp_path / "train.csv", rows)
    sec = section(tmp_path, "train.csv", "train.csv", max_train_samples=limit, label_names=["negative", "positive"])
    with pytest.raises(DataError, match=rf"row 8 of .*train\.csv {says}"):
        load_data(sec, ("train",))


def test_missing_file(tmp_path):
    write_split(tmp_path / "train.csv", make_rows(4, 1))
    with pytest.raises(DataError, match=r"^recipe\.data\.test: .*absent\.csv does not exist$"):
        load_data(section(tmp_path, "train.csv", "absent.csv"))


def test_subsample_is_seeded(tmp_path):
    write_split(tmp_path / "train.csv", make_rows(50, 1))
    a = load_data(section(tmp_path, "train.csv", "train.csv", max_train_samples=10))["train"].texts
    b = load_data(section(tmp_path, "train.csv", "train.csv", max_train_samples=10))["train"].texts
    c = load_data(section(tmp_path, "train.csv", "train.csv", max_train_samples=10, sample_seed=1))["train"].texts
    assert len(a) == 10 and a == b and a != c


def test_unreadable_file_is_one_line(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"PAR1 not really a parquet file")
    with pytest.raises(DataError, match=r"^recipe\.data\.train: cannot read .*train\.parquet as parquet \("):
        load_data(section(tmp_path, "train.parquet", "train.parquet"))
    (tmp_path / "bad.csv").write_bytes(b"sentence,label\n\xff\xfe\x00bad,\x81\n")
    with pytest.raises(DataError, match=r"^recipe\.data\.train: cannot read .*bad\.csv as csv \("):
        load_data(section(tmp_path, "bad.csv", "bad.csv"))


def test_single_class_training_set(tmp_path):
    """Every training row with the same label: refused by name, whether the label set was
    given (two names, one seen) or read from the file (one label only)."""
    rows = [r for r in make_rows(10, 1) if r["label"] == "positive"]
    write_split(tmp_path / "train.csv", rows)
    with pytest.raises(
        DataError,
        match=r"^recipe\.data\.train: every training row has the label 'positive'; a classifier needs examples of at least two labels",
    ):
        load_data(section(tmp_path, "train.csv", "train.csv", label_names=["negative", "positive"]))
    with pytest.raises(DataError, match=r"^recipe\.data\.train: found only the label \['positive'\]"):
        load_data(section(tmp_path, "train.csv", "train.csv"))


def test_missing_label_column(tmp_path):
    write_split(tmp_path / "train.csv", [{"sentence": "good", "stars": 5}, {"sentence": "bad", "stars": 1}])
    with pytest.raises(
        DataError, match=r"^recipe\.data\.train: .*train\.csv has no column 'label' \(it has: sentence, stars\); set data\.label_column$"
    ):
        load_data(section(tmp_path, "train.csv", "train.csv"))


def test_bad_data_through_the_cli_writes_nothing(tmp_path, recipe_file):
    """One line, exit 2, and no stage folder: the run stops before training."""
    from click.testing import CliRunner

    from ftexport.cli import main

    path = recipe_file()
    import yaml

    recipe = yaml.safe_load(path.read_text())
    root = Path(recipe["data"]["root"])
    write_split(root / "train.csv", [{"sentence": "good", "stars": 5}, {"sentence": "bad", "stars": 1}])
    out = CliRunner().invoke(main, ["-q", "run", str(path)])
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines() == [
        f"error: recipe.data.train: {root / 'train.csv'} has no column 'label' (it has: sentence, stars); set data.label_column"
    ]
    assert not any(Path(recipe["output"]).glob("*")) if Path(recipe["output"]).exists() else True


# ---- data.dev_holdout: sentences (a dev split that does not leak through its phrases) --------


def _treebank(tmp_path) -> DataSection:
    """SST-2 in small: every phrase of a sentence is a row, cut at random into train and dev."""
    rows = lambda texts, label: [{"sentence": t + " ", "label": label} for t in texts]  # noqa: E731  (the TSVs' trailing spaces)
    train = rows(["a fine film", "fine film", "a warm , funny tale"], 1) + rows(["the plot sags", "a dull , silly mess", "dull"], 0)
    dev = rows(["the plot sags in the middle", "a fine film with a fine cast", "a fine film with", "utterly new words here"], 1)
    write_split(tmp_path / "train.tsv", train)
    write_split(tmp_path / "dev.tsv", dev)
    write_split(tmp_path / "test.tsv", rows(["a test sentence"], 1) + rows(["another one"], 0))
    return section(tmp_path, "train.tsv", "test.tsv", validation="dev.tsv", dev_holdout="sentences")


def test_whole_sentence_dev_drops_the_training_rows_inside_it(tmp_path):
    s = _treebank(tmp_path)
    data = load_data(s)
    # "a fine film with" is a phrase of another dev row: not a whole sentence
    assert [t.strip() for t in data["validation"].texts] == [
        "the plot sags in the middle",
        "a fine film with a fine cast",
        "utterly new words here",
    ]
    # "the plot sags", "a fine film" and "fine film" are phrases of dev sentences: they leave training
    assert [t.strip() for t in data["train"].texts] == ["a warm , funny tale", "a dull , silly mess", "dull"]
    assert data["train"].labels == [1, 0, 0]
    # a stage that reads dev alone (calibration) sees the same dev
    assert load_data(s, ("validation",))["validation"].texts == data["validation"].texts
    # and rows (the default) is the split as it is
    plain = load_data(s.model_copy(update={"dev_holdout": "rows"}))
    assert len(plain["train"]) == 6 and len(plain["validation"]) == 4


def test_whole_sentence_dev_samples_sentences_and_keeps_their_phrases_out(tmp_path):
    s = _treebank(tmp_path).model_copy(update={"max_eval_samples": 1})
    data = load_data(s)
    (kept,) = [t.strip() for t in data["validation"].texts]
    assert kept in {"the plot sags in the middle", "a fine film with a fine cast", "utterly new words here"}
    assert all(t.strip() not in kept for t in data["train"].texts)  # only the phrases of the dev rows used leave
    assert len(data["train"]) == 6 - {"the plot sags in the middle": 1, "a fine film with a fine cast": 2}.get(kept, 0)


def test_whole_sentence_dev_changes_the_data_key_and_rows_keeps_the_old_one(tmp_path):
    import json

    from ftexport.core.artifacts import hash_files
    from ftexport.data import fingerprint

    s = _treebank(tmp_path)
    rows = s.model_copy(update={"dev_holdout": "rows"})
    assert fingerprint(s) != fingerprint(rows)
    # at the default the key is what it was before the field existed (stage keys, and runs, stay)
    old = {k: v for k, v in rows.model_dump(mode="json").items() if k not in ("root", "train", "validation", "test", "dev_holdout")}
    files = [(f"{n}/", tmp_path / f) for n, f in (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv"))]
    assert fingerprint(rows) == hash_files(files, json.dumps(old, sort_keys=True))


def test_whole_sentence_dev_errors_name_the_fix(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="dev_holdout: sentences cuts dev out of data.validation and data.train"):
        section(tmp_path, "train.tsv", "test.tsv", dev_holdout="sentences")
    s = _treebank(tmp_path)
    write_split(tmp_path / "dev.tsv", [{"sentence": "fine film", "label": 1}, {"sentence": "silly", "label": 0}])
    with pytest.raises(DataError, match=r"^recipe.data.dev_holdout: every row of .*dev.tsv is a phrase .* set dev_holdout: rows$"):
        load_data(s)
    conll = tmp_path / "conll"
    for name in ("train.txt", "dev.txt", "test.txt"):
        (conll / name).parent.mkdir(exist_ok=True)
        (conll / name).write_text("EU B-ORG\nrejects O\n\nPeter B-PER\n")
    tagged = DataSection(root=str(conll), train="train.txt", validation="dev.txt", test="test.txt", dev_holdout="sentences")
    with pytest.raises(DataError, match="dev_holdout: sentences is for one-label-per-text splits, not tagged words"):
        load_data(tagged)


def test_rows_leaves_the_recipe_stage_keys_as_before(tmp_path, recipe_file):
    """Recipes trained before data.dev_holdout existed keep their stage keys: no retraining on upgrade."""
    import hashlib
    import json

    import yaml

    from ftexport.recipe import load_recipe

    path = recipe_file()
    r = load_recipe(path)
    dump = r.model_dump(mode="json", by_alias=True)["data"]
    for gone in ("dev_holdout", "root", "train", "validation", "test"):  # the field, and the paths keys never hash
        dump.pop(gone)
    assert r.section_hash("data") == hashlib.sha256(json.dumps({"data": dump}, sort_keys=True).encode()).hexdigest()[:16]
    d = yaml.safe_load(path.read_text())
    d["data"].update(validation=d["data"].get("validation") or d["data"]["test"], dev_holdout="sentences")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    assert load_recipe(tmp_path / "s.yaml").section_hash("data") != r.section_hash("data")
