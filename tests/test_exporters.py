"""The exporters: Optimum's (where it can run) and torch's (any transformers), each bundle held
to the same gates; which one `auto` picks; one-line refusals. These run on both stacks (the
Makefile's test target runs them again in the transformers 5 environment)."""

from __future__ import annotations

import collections
import json
import os
from importlib import metadata

import numpy as np
import pytest
from click.testing import CliRunner
from ftexport_runtime import Bundle, Predictor
from helpers import tiny_recipe, write_recipe

from ftexport.cli import main
from ftexport.export import EXPORTERS, resolve_exporter

OPTIMUM = EXPORTERS["optimum"].available() is None
needs_optimum = pytest.mark.skipif(not OPTIMUM, reason=f"Optimum's exporter cannot run here: {EXPORTERS['optimum'].available()}")


def test_the_current_stack_is_current():
    """The Makefile's second environment must really be the current stack: transformers 5 and
    no optimum-onnx (so every export there goes through torch)."""
    if os.environ.get("FTEXPORT_STACK") != "current":
        pytest.skip("not the current-stack environment (FTEXPORT_STACK=current is set by `make test` for it)")
    major = int(metadata.version("transformers").split(".")[0])
    assert major >= 5, f"the current stack has transformers {metadata.version('transformers')}"
    assert not OPTIMUM and resolve_exporter("auto").name == "torch"


def test_auto_picks_optimum_where_it_runs_else_torch():
    assert resolve_exporter("auto").name == ("optimum" if OPTIMUM else "torch")
    assert resolve_exporter("torch").name == "torch"


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory, tiny_model):
    """One `ftexport run` per task with export.exporter: torch."""
    from test_clm import lm_recipe
    from test_ner import conll_sentences, write_conll

    from ftexport.pipeline import run
    from ftexport.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("torch-exporter")
    recipes = {
        "text-classification": tiny_recipe(tmp / "tc", tiny_model, export__exporter="torch", bench__cold_start=False, bench__repeats=1)
    }
    data = tmp / "ner" / "data"
    for split, n, seed in (("train", 128, 1), ("dev", 24, 2), ("test", 48, 3)):
        write_conll(data / f"{split}.txt", conll_sentences(n, seed=seed))
    recipes["token-classification"] = {
        "name": "tiny-ner",
        "task": "token-classification",
        "model": {"path": str(tiny_model), "max_length": 32},
        "data": {"root": str(data), "train": "train.txt", "validation": "dev.txt", "test": "test.txt"},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"epochs": 8, "lr": 2e-2, "batch_size": 16, "eval_steps": 32, "seed": 0, "metric": "f1"},
        "export": {"exporter": "torch"},
        "validate": {"int8": {"min_agreement": 0.8, "min_entity_agreement": 0.5}},
        "bench": {
            "batch_sizes": [1],
            "seq_len": 16,
            "iterations": 3,
            "repeats": 1,
            "warmup": 1,
            "cold_start": False,
            "backends": ["ort-fp32", "ort-int8"],
        },
        "output": str(tmp / "ner" / "runs"),
    }
    lm = lm_recipe(tmp / "lm")
    lm["export"] = {"exporter": "torch"}
    lm["bench"] = {"seq_len": 8, "iterations": 4, "warmup": 1, "backends": ["pytorch", "ort-fp32", "ort-int8"]}
    recipes["text-generation"] = lm
    return {task: run(load_recipe(write_recipe(tmp / f"{i}.yaml", r))) for i, (task, r) in enumerate(recipes.items())}


@pytest.mark.parametrize("task", ["text-classification", "token-classification", "text-generation"])
def test_torch_exporter_bundles_pass_the_same_gates(torch_runs, task):
    """The recipe's gates are Optimum's: fp32 within 1e-3 of PyTorch at 0.999 agreement (a
    decoder also greedy-equal token for token), int8 as the recipe sets it."""
    result = torch_runs[task]
    manifest = Bundle.open(result.bundle).manifest
    assert manifest.source["exporter"] == "torch"
    assert all(v.details.get("exporter") == "torch" for v in manifest.variants.values()), {
        n: v.details for n, v in manifest.variants.items()
    }
    parity = result.parity
    assert parity.passed, parity.failures()
    fp32 = parity["variants"]["fp32"]
    assert fp32["max_logit_diff"] <= 1e-3 and fp32["agreement"] >= 0.999
    if task == "text-generation":
        assert fp32["greedy_match"] == 1.0 and manifest.generation["past_inputs"]
        assert manifest.variants["fp32"].details["mode"] == "dynamo"
        out = Predictor.from_bundle(result.bundle, variant="fp32").generate(["the film is"], max_new_tokens=5)
        assert 1 <= len(out[0].token_ids) <= 5
    else:
        assert manifest.variants["fp32"].details["mode"] == "torchscript"
        assert Predictor.from_bundle(result.bundle).predict(["the film was good"])


@needs_optimum
def test_both_exporters_give_the_same_answers(tiny_run, tmp_path):
    """On the stack where both run: the same merged model through each exporter, fp32 logits
    within 1e-5 of each other on texts of several lengths."""
    from ftexport.export.stage import export

    merged = tiny_run[1].root / "merged"
    export(merged, tmp_path / "optimum", exporter="optimum")
    export(merged, tmp_path / "torch", exporter="torch")
    texts = ["good", "a very dull plot , really bad and boring", "the film was lovely and the acting superb"]
    a = Predictor.from_bundle(tmp_path / "optimum").logits(texts)
    b = Predictor.from_bundle(tmp_path / "torch").logits(texts)
    assert np.abs(a - b).max() < 1e-5


def test_graph_optimization_without_optimum_fuses_the_same(tiny_run, tmp_path, monkeypatch):
    """O2 through ONNX Runtime's optimizer directly (the path without Optimum) fuses what
    Optimum's ORTOptimizer fuses, and the graph still gives PyTorch's answers."""
    import onnx

    from ftexport.export.fusion import optimize_graph

    bundle = tiny_run[1].root / "onnx"
    produced, detail = optimize_graph(bundle, "model.onnx", tmp_path / "direct", "O2") if not OPTIMUM else (None, None)
    if OPTIMUM:
        via_optimum, d1 = optimize_graph(bundle, "model.onnx", tmp_path / "optimum", "O2")
        monkeypatch.setattr(EXPORTERS["optimum"], "available", lambda: "simulated: no optimum-onnx")
        produced, detail = optimize_graph(bundle, "model.onnx", tmp_path / "direct", "O2")
        assert d1["optimizer"] == "optimum"
        ops = lambda p: collections.Counter(n.op_type for n in onnx.load(str(p)).graph.node)  # noqa: E731
        assert ops(produced) == ops(via_optimum)
    assert detail["optimizer"] == "onnxruntime"
    assert collections.Counter(n.op_type for n in onnx.load(str(produced)).graph.node)["SkipLayerNormalization"] > 0


def test_asking_for_optimum_where_it_cannot_run_is_one_line(tiny_run, tmp_path, monkeypatch):
    if OPTIMUM:  # where it runs, make it unable to, as a transformers 5 environment is
        monkeypatch.setattr(
            EXPORTERS["optimum"],
            "available",
            lambda: "optimum-onnx 0.1.0 supports transformers<4.58,>=4.36, and this environment has transformers 5.24.0",
        )
    out = CliRunner().invoke(main, ["-q", "export", str(tiny_run[1].root / "merged"), "-o", str(tmp_path / "b"), "--exporter", "optimum"])
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: recipe.export.exporter: optimum cannot run here: ")
    assert "or set export.exporter: torch (--exporter torch)" in lines[0]
    assert not (tmp_path / "b").exists()


def test_an_architecture_the_torch_exporter_cannot_trace_is_one_line(tiny_run, tmp_path, monkeypatch):
    """The exporter's first error line and the model type, exit 2, no bundle."""
    import torch

    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported: data-dependent control flow in forward()\nfull stack trace follows")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    out = CliRunner().invoke(main, ["-q", "export", str(tiny_run[1].root / "merged"), "-o", str(tmp_path / "b"), "--exporter", "torch"])
    assert out.exit_code == 2, out.output
    assert out.output.strip() == (
        f"error: {tiny_run[1].root / 'merged'}: the torch exporter cannot trace this bert model "
        "(RuntimeError: Unsupported: data-dependent control flow in forward()); no bundle was written"
    )
    assert not (tmp_path / "b").exists()


def test_doctor_says_which_exporters_run_here():
    out = CliRunner().invoke(main, ["doctor", "--json"])
    assert out.exit_code == 0, out.output
    exporters = json.loads(out.output)["exporters"]
    assert exporters["torch"]["ok"] is True and exporters["optimum"]["ok"] is OPTIMUM
    assert exporters["auto"]["detail"] == ("optimum" if OPTIMUM else "torch")
    if not OPTIMUM:
        assert "optimum-onnx" in exporters["optimum"]["detail"]


def test_recipe_refuses_an_unknown_exporter():
    from ftexport.core.errors import RecipeError
    from ftexport.recipe import parse_recipe

    with pytest.raises(RecipeError, match=r"^recipe\.export\.exporter: expected one of 'auto', 'optimum' or 'torch', got 'onnx'"):
        parse_recipe({"name": "x", "model": {"path": "m"}, "data": {"train": "a", "test": "b"}, "export": {"exporter": "onnx"}})
