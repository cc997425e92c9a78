"""Causal language modelling end to end on a tiny random-init GPT-2 (2 layers, 32 wide,
a ~300-token byte-level BPE): train, merge, export with the KV cache, int8, validate
(greedy parity and perplexity), bench, pack; and the runtime's numpy generation loop."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import NEGATIVE, NEUTRAL, POSITIVE, write_recipe, write_split

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_inner": 64}


def lm_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Text only (no label column): short sentences with a little structure to learn."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = ["the", rng.choice(["film", "movie", "story"]), "is", rng.choice(POSITIVE + NEGATIVE)]
        words += rng.sample(NEUTRAL, 3) + ["."]
        rows.append({"text": " ".join(words)})
    return rows


def lm_recipe(tmp: Path, **model: object) -> dict:
    data = tmp / "data"
    write_split(data / "train.csv", lm_rows(160, 1))
    write_split(data / "dev.csv", lm_rows(24, 2))
    write_split(data / "test.csv", lm_rows(40, 3))
    return {
        "name": "tinylm",
        "task": "text-generation",
        "model": {"max_length": 48, **(model or {"scratch": {"vocab_size": 300, "config": TINY}})},
        "data": {"root": str(data), "train": "train.csv", "validation": "dev.csv", "test": "test.csv", "text_column": "text"},
        "method": {"name": "full"},
        "training": {"epochs": 6, "lr": 1e-2, "batch_size": 16, "eval_steps": 20, "seed": 0},
        "validate": {
            "generation": {"prompts": 8, "prompt_tokens": 4, "new_tokens": 12},
            "int8": {"max_perplexity_ratio": 1.5, "min_agreement": 0.5, "max_accuracy_drop": 0.2},
        },
        "bench": {"seq_len": 8, "iterations": 4, "warmup": 1, "backends": ["pytorch", "ort-fp32", "ort-int8", "ort-cuda-fp16"]},
        "output": str(tmp / "runs" / "tinylm"),
    }


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory: pytest.TempPathFactory):
    from ftexport.pipeline import run
    from ftexport.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("lm")
    path = write_recipe(tmp / "recipe.yaml", lm_recipe(tmp))
    return path, run(load_recipe(path))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' tiny GPT-2 directory (random init), as a hub model would be saved."""
    from ftexport.tasks.text_generation.scratch import build_scratch

    out = tmp_path_factory.mktemp("gpt2") / "model"
    texts = [r["text"] for r in lm_rows(200, 7)]
    return build_scratch(SimpleNamespace(vocab_size=300, config=TINY, seed=1), texts, 48, out)


def test_full_run_bundle_and_parity(lm_run):
    from ftexport_runtime import Bundle

    _, result = lm_run
    manifest = Bundle.open(result.bundle).manifest
    assert manifest.task == "text-generation" and manifest.labels == []
    gen = manifest.generation
    assert gen["num_layers"] == 2 and len(gen["past_inputs"]) == 4 and gen["num_heads"] == 2 and gen["head_dim"] == 16
    assert set(manifest.variants) == {"fp32", "int8"}
    parity = manifest.parity
    assert parity["passed"] is True
    fp32 = parity["variants"]["fp32"]
    assert fp32["greedy_match"] == 1.0 and fp32["max_logit_diff"] < 1e-3
    assert abs(fp32["perplexity_ratio"] - 1) < 1e-4
    # training really trained: a random init scores about the vocabulary size (~300)
    assert parity["reference"]["perplexity"] < 60
    assert parity["variants"]["int8"]["perplexity"] > 0
    train_metrics = json.loads((result.root / "train" / "ftexport.json").read_text())["metrics"]
    assert "perplexity" in train_metrics and train_metrics["perplexity"] < 60


def test_kv_cache_greedy_equals_pytorch_generate(lm_run):
    import torch
    from ftexport_runtime import Predictor
    from transformers import AutoModelForCausalLM

    _, result = lm_run
    model = AutoModelForCausalLM.from_pretrained(str(result.root / "merged")).eval()
    p = Predictor.from_bundle(result.bundle, variant="fp32")
    prompts = ["the film is", "the story", "a", "the movie is very dull and"]
    ours = p.generate(prompts, max_new_tokens=15)
    for prompt, g in zip(prompts, ours):
        ids = torch.tensor([p.generator.encode(prompt)])
        with torch.inference_mode():
            ref = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                use_cache=True,
                max_new_tokens=15,
                eos_token_id=p.generator.eos_id,
                pad_token_id=p.generator.pad_id,
            )
        assert g.token_ids == ref[0, ids.shape[1] :].tolist(), prompt
    assert any(g.stopped_at_eos for g in ours)  # trained texts end in eos: generation learned to stop


def test_cache_equals_recompute_and_batch_equals_single(lm_run):
    from ftexport_runtime import Predictor

    p = Predictor.from_bundle(lm_run[1].bundle, variant="fp32")
    prompts = ["the film is", "the movie is very", "story"]
    cached = p.generate(prompts, max_new_tokens=12)
    full = p.generate(prompts, max_new_tokens=12, use_cache=False)
    single = [p.generate(x, max_new_tokens=12)[0] for x in prompts]
    assert [g.token_ids for g in cached] == [g.token_ids for g in full] == [g.token_ids for g in single]
    sampled = dict(do_sample=True, temperature=1.3, top_k=20, seed=5, max_new_tokens=12)
    assert [g.token_ids for g in p.generate(prompts, **sampled)] == [g.token_ids for g in p.generate(prompts, use_cache=False, **sampled)]


def test_top_k_one_is_greedy_and_seeded_sampling_reproduces(lm_run):
    from ftexport_runtime import Predictor

    p = Predictor.from_bundle(lm_run[1].bundle, variant="fp32")
    prompts = ["the film is", "the story is"]
    greedy = [g.token_ids for g in p.generate(prompts, max_new_tokens=10)]
    assert [g.token_ids for g in p.generate(prompts, max_new_tokens=10, do_sample=True, top_k=1, temperature=2.0, seed=3)] == greedy
    a = [g.token_ids for g in p.generate(prompts, max_new_tokens=10, do_sample=True, top_p=0.9, temperature=1.5, seed=11)]
    b = [g.token_ids for g in p.generate(prompts, max_new_tokens=10, do_sample=True, top_p=0.9, temperature=1.5, seed=11)]
    draws = {
        tuple(g.token_ids) for s in range(6) for g in p.generate(prompts[:1], max_new_tokens=10, do_sample=True, temperature=1.5, seed=s)
    }
    assert a == b and len(draws) > 1  # same seed, same text; other seeds, other texts


def test_nucleus_keeps_exactly_the_hand_computed_set():
    import torch
    from ftexport_runtime.heads.generate import next_token, nucleus_mask, softmax
    from transformers.generation.logits_process import TopPLogitsWarper

    probs = np.array([0.05, 0.5, 0.15, 0.3])
    logits = np.log(probs)
    assert np.allclose(softmax(logits), probs)
    assert nucleus_mask(probs, 0.75).tolist() == [False, True, False, True]  # 0.5 + 0.3 reaches 0.75
    assert nucleus_mask(probs, 0.85).tolist() == [False, True, True, True]  # needs the 0.15 too
    assert nucleus_mask(probs, 0.4).tolist() == [False, True, False, False]
    for top_p in (0.4, 0.75, 0.85, 0.99):  # the same cut as transformers' warper
        warped = TopPLogitsWarper(top_p)(None, torch.tensor(logits[None], dtype=torch.float32))[0]
        assert nucleus_mask(probs, top_p).tolist() == torch.isfinite(warped).tolist(), top_p
    rng = np.random.default_rng(0)
    draws = np.array([next_token(logits, rng, True, top_p=0.75) for _ in range(4000)])
    assert set(draws.tolist()) == {1, 3}
    assert abs((draws == 1).mean() - 0.5 / 0.8) < 0.03  # renormalized inside the nucleus: 0.625 / 0.375


def test_bench_reports_per_token_latency(lm_run):
    bench = lm_run[1].bench
    phases = {(r["backend"], r["phase"]) for r in bench["results"]}
    assert phases == {(b, ph) for b in ("pytorch", "ort-fp32", "ort-int8") for ph in ("prefill", "per token")}
    assert all(r["matches_baseline"] for r in bench["results"] if r["backend"] == "ort-fp32")
    assert "ort-cuda-fp16" in bench["skipped"]
    from ftexport.judge.bench import compare_reports

    slower = json.loads(bench.dumps())  # the typed report writes its own JSON
    for r in slower["results"]:
        r["p50_ms"] *= 2 if r["phase"] == "per token" else 1
    rows = compare_reports(bench, slower, 0.1)
    assert len(rows) == 6 and {r["backend"] for r in rows if r["regression"]} == {
        f"{b} (per token)" for b in ("pytorch", "ort-fp32", "ort-int8")
    }


def test_runtime_cli_generate_and_predict_refused(lm_run, capsys):
    from ftexport_runtime.cli import main

    assert main(["generate", str(lm_run[1].bundle), "the film is", "--max-new-tokens", "5", "--json", "--variant", "fp32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["prompt"] == "the film is" and 1 <= len(out[0]["token_ids"]) <= 5
    assert main(["predict", str(lm_run[1].bundle), "the film is"]) == 2
    assert "use generate" in capsys.readouterr().err
    assert main(["info", str(lm_run[1].bundle)]) == 0
    assert "2 layers x 2 heads with KV cache" in capsys.readouterr().out
    from ftexport.core.errors import FtexportError
    from ftexport.ship.triton import check_options

    with pytest.raises(FtexportError, match="no Triton export"):
        check_options(lm_run[1].bundle, lm_run[1].root / "triton")


def test_lora_on_gpt2_merges_with_equal_logits(tmp_path, tiny_gpt2):
    import torch
    from transformers import AutoModelForCausalLM

    from ftexport.pipeline import run
    from ftexport.recipe import load_recipe

    recipe = lm_recipe(tmp_path, path=str(tiny_gpt2))
    recipe["method"] = {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}  # peft CAUSAL_LM over GPT-2's Conv1D layers
    recipe["training"]["epochs"] = 1
    result = run(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)), stop_after="export")
    merged = json.loads((result.root / "merged" / "ftexport.json").read_text())
    assert merged["settings"]["merged"] is True and merged["metrics"]["max_logit_diff"] <= 1e-4
    ids = torch.tensor([[5, 60, 70, 80, 90, 100]])
    with torch.inference_mode():
        base = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2))(ids).logits
        after = AutoModelForCausalLM.from_pretrained(str(result.root / "merged"))(ids).logits
    assert (base - after).abs().max() > 1e-3  # the adapter trained and was folded in
    from ftexport_runtime import Bundle

    assert Bundle.open(result.root / "onnx").manifest.task == "text-generation"


def test_recipe_refuses_settings_the_task_lacks(tmp_path):
    from ftexport.core.errors import RecipeError
    from ftexport.recipe import parse_recipe

    base = lm_recipe(tmp_path)
    for change, message in [
        ({"method": {"name": "lora"}}, "method 'full'"),
        ({"quantize": {"modes": ["static"]}}, "takes the quantization modes dynamic, int8-block, int4 and no graph optimization"),
        ({"training": {"metric": "accuracy"}}, "perplexity"),
        ({"task": "text-classification"}, "model.scratch"),
    ]:
        with pytest.raises(RecipeError, match=message):
            parse_recipe({**base, **change})
    assert parse_recipe(base).training.metric == "perplexity"
