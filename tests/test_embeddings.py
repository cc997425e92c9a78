"""Sentence embeddings (task feature-extraction), added as a task plug-in: the bundle's graph
ends in the pooled, normalized embedding; parity is cosine per text and top-10 retrieval
agreement; training is optional (method none) or contrastive on pairs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ftexport_runtime import Bundle, Predictor
from helpers import NEGATIVE, NEUTRAL, POSITIVE, make_rows, write_recipe, write_split

from ftexport.cli import main


def embedding_recipe(tmp: Path, model_dir: Path, **extra: object) -> dict:
    data = tmp / "data"
    write_split(data / "test.csv", make_rows(60, seed=3))
    write_split(data / "dev.csv", make_rows(40, seed=2))
    recipe = {
        "name": "tiny-embed",
        "task": "feature-extraction",
        "model": {"path": str(model_dir), "max_length": 32},
        "data": {"root": str(data), "validation": "dev.csv", "test": "test.csv", "text_column": "sentence"},
        "method": {"name": "none"},
        "quantize": {"modes": ["dynamic", "int8-block"]},
        "bench": {
            "batch_sizes": [1, 4],
            "seq_len": 16,
            "iterations": 4,
            "repeats": 1,
            "warmup": 1,
            "backends": ["pytorch", "ort-fp32", "ort-int8", "ort-int8-block"],
        },
        "output": str(tmp / "runs" / "tiny-embed"),
    }
    recipe.update(extra)
    return recipe


def pair_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Anchor and positive share their sentiment words: a model that learns the pairs pulls
    such sentences together."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pool = POSITIVE if rng.random() < 0.5 else NEGATIVE
        w = rng.sample(pool, 2)
        rows.append(
            {"anchor": " ".join(rng.sample(NEUTRAL, 3) + [w[0], w[1]]), "positive": " ".join([w[1], w[0]] + rng.sample(NEUTRAL, 2))}
        )
    return rows


@pytest.fixture(scope="module")
def embed_run(tmp_path_factory, tiny_model):
    from ftexport.pipeline import run
    from ftexport.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("embed")
    path = write_recipe(tmp / "recipe.yaml", embedding_recipe(tmp, tiny_model))
    return path, run(load_recipe(path))


def test_embedding_bundle_ends_in_the_normalized_sentence_embedding(embed_run, tiny_model):
    """The graph's output is the pooled, L2-normalized embedding, equal to PyTorch's (the
    encoder, masked mean pooling, normalization) within 1e-5; the gates passed."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    _, result = embed_run
    manifest = Bundle.open(result.bundle).manifest
    assert manifest.task == "feature-extraction" and manifest.outputs == ["sentence_embedding"]
    assert result.parity.passed, result.parity.failures()
    texts = ["the film was good", "a very dull plot , really bad and boring to watch"]
    got = Predictor.from_bundle(result.bundle, variant="fp32").embed(texts)
    model, tok = AutoModel.from_pretrained(str(tiny_model)).eval(), AutoTokenizer.from_pretrained(str(tiny_model))
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert got.shape == (2, model.config.hidden_size) and np.abs(got - want).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_parity_reports_cosine_and_retrieval_overlap(embed_run):
    _, result = embed_run
    parity = result.parity
    assert parity["examples"] == 100 and parity["queries"] == 99  # test + validation texts, all but one as queries
    fp32, int8 = parity["variants"]["fp32"], parity["variants"]["int8"]
    assert fp32["min_cosine"] >= 0.99999 and fp32["retrieval_overlap"] == 1.0
    assert 0 < int8["min_cosine"] <= 1 and 0 <= int8["retrieval_overlap"] <= 1
    names = {c["name"] for c in int8["checks"]}
    assert names == {"min_cosine", "min_retrieval_overlap"}  # the task's defaults: no accuracy or top-1 checks for vectors
    assert Bundle.open(result.bundle).manifest.parity["variants"]["int8"]["retrieval_overlap"] == int8["retrieval_overlap"]


def test_int8_block_quantizes_weights_and_activations_per_block(embed_run):
    """int8-block: every weight MatMul becomes an 8-bit MatMulNBits (blocks of 64, accuracy
    level 4: int8 activations per block), judged by the int8 gates like dynamic int8."""
    import onnx

    _, result = embed_run
    manifest = Bundle.open(result.bundle).manifest
    v = manifest.variants["int8-block"]
    assert v.precision == "int8" and v.details["block_size"] == 64 and v.details["weights"] == "int8 (MatMulNBits)"
    graph = onnx.load(str(result.bundle / v.file)).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all({a.name: a.i for a in n.attribute}["bits"] == 8 for n in nbits)
    assert {a.name: a.i for a in nbits[0].attribute}["accuracy_level"] == 4
    weights = {i.name for i in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]  # every weight MatMul quantized
    checked = result.parity["variants"]["int8-block"]
    assert checked["passed"] and {c["name"] for c in checked["checks"]} == {"min_cosine", "min_retrieval_overlap"}
    assert checked["min_cosine"] >= 0.99


def test_with_optimize_int8_block_is_made_from_the_fused_graph(embed_run, tmp_path):
    """quantize.optimize fuses the graph first (fewer nodes: at batch 1 on short texts most of
    the time is per node); int8-block then quantizes the MatMuls left in the fused graph, and
    its embeddings still match PyTorch's."""
    import onnx

    _, result = embed_run
    export = result.root / "onnx"  # the export stage's bundle
    out = tmp_path / "fused"
    run = CliRunner().invoke(main, ["-q", "quantize", str(export), "-o", str(out), "--mode", "int8-block", "--optimize", "O2"])
    assert run.exit_code == 0, run.output
    manifest = Bundle.open(out).manifest
    v = manifest.variants["int8-block"]
    assert v.details["source"] == "model.opt.onnx"
    ops = [n.op_type for n in onnx.load(str(out / v.file)).graph.node]
    assert "SkipLayerNormalization" in ops and "MatMulNBits" in ops
    plain = [n.op_type for n in onnx.load(str(result.bundle / "model.int8-block.onnx")).graph.node]
    assert len(ops) < len(plain)  # the fused graph has fewer nodes than the one made from the plain export
    texts = ["a good film", "a dull and boring story", "the plot is fine"]
    ref = Predictor.from_bundle(out, variant="fp32").embed(texts)
    got = Predictor.from_bundle(out, variant="int8-block").embed(texts)
    assert (ref * got).sum(-1).min() > 0.99


def test_an_onnxruntime_without_the_8bit_kernel_is_refused_in_one_line(embed_run, monkeypatch):
    from ftexport_runtime.engines import ort as ort_engine
    from ftexport_runtime.errors import BundleError

    _, result = embed_run
    assert Bundle.open(result.bundle).manifest.variants["int8-block"].details["min_onnxruntime"] == "1.22"
    monkeypatch.setattr(ort_engine.ort, "__version__", "1.21.1")
    with pytest.raises(BundleError, match=r"variant 'int8-block' needs onnxruntime>=1\.22 .* this is 1\.21\.1: pip install"):
        Predictor.from_bundle(result.bundle, variant="int8-block")
    assert Predictor.from_bundle(result.bundle, variant="fp32").embed(["a film"]).shape[0] == 1


def test_bench_times_texts_per_second_against_pytorch(embed_run):
    _, result = embed_run
    rows = {(r["backend"], r["batch"], r["seq_len"]): r for r in result.bench["results"]}
    assert {("pytorch", 1, 16), ("ort-int8", 1, 16), ("ort-int8", 4, "real")} <= set(rows)
    assert all(r["throughput_per_s"] > 0 and r["parity"]["measure"] == "1 - cosine" for r in rows.values())


def test_fine_tuning_on_pairs_pulls_positives_together(tmp_path, tiny_model):
    """method lora on a pairs file with the contrastive (in-batch negatives) loss: after
    training, anchors sit closer to their positives than before."""
    from ftexport.pipeline import run
    from ftexport.recipe import load_recipe

    rows = pair_rows(96, seed=1)
    write_split(tmp_path / "data" / "pairs.csv", rows)
    recipe = embedding_recipe(
        tmp_path, tiny_model, method={"name": "full"}, training={"epochs": 4, "lr": 5e-3, "batch_size": 16, "seed": 0}
    )
    recipe["data"].update({"train": "pairs.csv", "text_column": "anchor", "label_column": "positive"})
    recipe["data"]["validation"] = None
    recipe["data"]["test"] = "pairs.csv"
    result = run(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)), stop_after="export")
    trained = Predictor.from_bundle(result.root / "onnx")
    anchors, positives = [r["anchor"] for r in rows[:32]], [r["positive"] for r in rows[:32]]
    a, p = trained.embed(anchors), trained.embed(positives)
    import torch
    from transformers import AutoModel, AutoTokenizer

    model, tok = AutoModel.from_pretrained(str(tiny_model)).eval(), AutoTokenizer.from_pretrained(str(tiny_model))

    def base_embed(texts: list[str]) -> np.ndarray:
        enc = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()

    def rank_accuracy(x: np.ndarray, y: np.ndarray) -> float:
        return float(((x @ y.T).argmax(1) == np.arange(len(x))).mean())

    assert rank_accuracy(a, p) > rank_accuracy(base_embed(anchors), base_embed(positives)) + 0.2
    assert json.loads((result.root / "train" / "ftexport.json").read_text())["metrics"]["steps"] > 0


def test_pairs_file_without_the_positive_column_is_one_line(tmp_path, tiny_model):
    write_split(tmp_path / "data" / "pairs.csv", [{"anchor": "a good film", "other": "x"}, {"anchor": "bad", "other": "y"}])
    recipe = embedding_recipe(tmp_path, tiny_model, method={"name": "full"})
    recipe["data"].update({"train": "pairs.csv", "text_column": "anchor", "label_column": "positive"})
    out = CliRunner().invoke(main, ["-q", "train", str(write_recipe(tmp_path / "r.yaml", recipe))])
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines()[-1] == (
        f"error: recipe.data.train: {tmp_path / 'data' / 'pairs.csv'} has no column 'positive' (it has: anchor, other); "
        "a pairs file needs the anchor in data.text_column and its positive in data.label_column"
    )


def test_optimum_cannot_end_the_graph_in_the_embedding(embed_run, tmp_path):
    _, result = embed_run
    out = CliRunner().invoke(main, ["-q", "export", str(result.root / "merged"), "-o", str(tmp_path / "b"), "--exporter", "optimum"])
    assert out.exit_code == 2 and "recipe.export.exporter: optimum cannot run here" in out.output
    assert not (tmp_path / "b").exists()


def test_training_needs_data_or_method_none(tmp_path, tiny_model):
    from ftexport.core.errors import RecipeError
    from ftexport.recipe import parse_recipe

    recipe = embedding_recipe(tmp_path, tiny_model, method={"name": "lora"})
    with pytest.raises(RecipeError, match=r"data\.train: required to train; give the training split, or method: \{name: none\}"):
        parse_recipe(recipe)


def test_gates_the_task_does_not_measure_are_refused(tmp_path, tiny_model):
    from ftexport.core.errors import RecipeError
    from ftexport.recipe import parse_recipe

    recipe = embedding_recipe(tmp_path, tiny_model, validate={"int8": {"min_agreement": 0.9}})
    with pytest.raises(RecipeError, match=r"^recipe\.validate\.int8\.min_agreement: feature-extraction does not measure this"):
        parse_recipe(recipe)


def test_shipped_embeddings_recipe_parses(monkeypatch, tmp_path):
    from ftexport.recipe import load_recipe

    monkeypatch.setenv("FTEXPORT_DATA", str(tmp_path))
    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "embeddings.yaml", check=False)
    assert r.task == "feature-extraction" and r.method.name == "none" and r.validate_.int8.min_retrieval_overlap == 0.9
