"""The fine-tuning methods of `method.name`, each through the whole chain on the tiny model,
plus the training techniques the recipe schema offers (dropout override, resume)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ftexport_runtime import Bundle, Predictor

from ftexport.core.errors import RecipeError
from ftexport.pipeline import run
from ftexport.recipe import load_recipe, parse_recipe
from ftexport.train.merge import merge
from ftexport.train.trainer import train

FAST = {  # every stage, with the smallest settings that still test something
    "training__epochs": 6,
    "quantize__modes": ["dynamic"],
    "bench__batch_sizes": [1],
    "bench__iterations": 3,
    "bench__repeats": 1,
    "bench__cold_start": False,
    "bench__traffic": "fixed",
    "bench__backends": ["pytorch", "ort-fp32"],
}


def _recipe(recipe_file, method: dict, **extra):
    return load_recipe(recipe_file(method=method, **{**FAST, **extra}))


def _torch_logits(model, tokenizer, texts):
    import torch

    with torch.inference_mode():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(RecipeError) as e:
        parse_recipe({"name": "x", "model": {"path": "m"}, "data": {"train": "a", "test": "b"}, "method": {"name": "loar"}})
    msg = str(e.value)
    assert msg.startswith("recipe.method.name: expected one of") and "'adalora'" in msg and "'prompt'" in msg
    assert "did you mean 'lora'?" in msg and "\n" not in msg


def test_freezing_is_refused_for_adapter_methods():
    with pytest.raises(RecipeError, match="freeze applies to method full or bitfit; lora already"):
        parse_recipe(
            {"name": "x", "model": {"path": "m"}, "data": {"train": "a", "test": "b"}, "method": {"name": "lora", "freeze": {"layers": 1}}}
        )


def test_adalora_refuses_early_stopping():
    with pytest.raises(RecipeError, match=r"^recipe\.training\.early_stopping_patience: adalora cannot reload"):
        parse_recipe(
            {
                "name": "x",
                "model": {"path": "m"},
                "data": {"train": "a", "test": "b"},
                "method": {"name": "adalora"},
                "training": {"early_stopping_patience": 2},
            }
        )


def test_virtual_token_methods_are_refused_outside_classification():
    with pytest.raises(
        RecipeError, match=r"^recipe\.method\.name: prompt tuning exports .* for text-classification only; for text-generation use lora"
    ):
        parse_recipe(
            {
                "name": "x",
                "task": "text-generation",
                "model": {"path": "m"},
                "data": {"train": "a", "test": "b"},
                "method": {"name": "prompt"},
                "training": {"metric": "perplexity"},
            }
        )


@pytest.mark.parametrize(
    "method",
    [
        {"name": "full"},
        {"name": "bitfit"},
        {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        {"name": "adalora", "r": 8, "target_r": 2, "alpha": 8, "dropout": 0.0},
        {"name": "ia3"},
        {"name": "prefix", "num_virtual_tokens": 4},
        {"name": "prompt", "num_virtual_tokens": 4},
    ],
)
def test_method_runs_the_whole_chain(recipe_file, method):
    # Full and LoRA fine-tuning learn the tiny task from a random-init model in a few epochs.
    # The others re-use pretrained features (BitFit, IA3) or steer them (prefix, prompt), and a
    # random-init model has none: they get a few steps, enough to test the chain, not accuracy.
    learns = method["name"] in ("full", "lora")
    lr = {"full": 5e-3, "lora": 1e-2}.get(method["name"], 5e-2)
    recipe = _recipe(recipe_file, method, training__lr=lr, **({} if learns else {"training__max_steps": 12}))
    result = run(recipe)
    root = recipe.output_dir()
    trained = json.loads((root / "train" / "ftexport.json").read_text())
    params = trained["metrics"]["trainable_parameters"]
    assert 0 < params["trainable"] <= params["total"] and params["share"] == pytest.approx(params["trainable"] / params["total"])
    if method["name"] != "full":
        assert params["share"] < 0.5  # parameter-efficient: most of the model stays frozen
    merged = json.loads((root / "merged" / "ftexport.json").read_text())
    assert merged["settings"]["merged"] is (method["name"] in ("lora", "adalora", "ia3"))
    if merged["settings"]["merged"]:
        assert merged["metrics"]["max_logit_diff"] < 1e-4
    # The bundle passed parity: the ONNX graph (merged, or the traced adapter) gives PyTorch's answers.
    manifest = Bundle.open(result.bundle).manifest
    assert manifest.parity["passed"] and manifest.parity["variants"]["fp32"]["max_logit_diff"] < 1e-3
    if learns:
        assert manifest.parity["reference"]["accuracy"] >= 0.75, manifest.parity["reference"]  # it learned the task


@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_unmerged_adapter_graph_carries_the_virtual_tokens(recipe_file, name):
    """The exported graph must hold the learned virtual tokens: with them zeroed, the same
    PyTorch model no longer matches it (else the export silently dropped them)."""
    from transformers import AutoTokenizer

    from ftexport.core.hf import load_reference
    from ftexport.tasks import get_task

    recipe = _recipe(recipe_file, {"name": name, "num_virtual_tokens": 4}, training__lr=5e-2, training__max_steps=6)
    result = run(recipe, stop_after="export")
    merged = recipe.output_dir() / "merged"
    peft_model = load_reference(merged, get_task("text-classification"))
    tok = AutoTokenizer.from_pretrained(str(merged))
    texts = ["the film was good", "a very dull plot , really"]
    with_tokens = _torch_logits(peft_model, tok, texts)
    onnx = Predictor.from_bundle(result.root / "onnx").logits(texts)
    np.testing.assert_allclose(onnx, with_tokens, atol=1e-4)
    peft_model.prompt_encoder[
        "default"
    ].embedding.weight.data.zero_()  # same model, different virtual tokens: the ONNX answers must no longer match
    assert np.abs(_torch_logits(peft_model, tok, texts) - onnx).max() > 1e-4


@pytest.mark.parametrize("name", ["lora", "adalora", "ia3"])
def test_merge_is_equivalent_and_not_a_no_op(recipe_file, name):
    """Merged weights give the adapter model's logits, and differ from the base model's."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    method = {"name": name, "r": 8, "target_r": 2, "alpha": 8, "dropout": 0.0} if name != "ia3" else {"name": "ia3"}
    recipe = _recipe(recipe_file, method, training__lr=5e-2, training__max_steps=12)
    root = recipe.output_dir()
    train(recipe, root / "train", quiet=True)
    record = merge(root / "train", root / "merged")
    assert record["metrics"]["max_logit_diff"] < 1e-4
    tok = AutoTokenizer.from_pretrained(str(root / "merged"))
    merged = AutoModelForSequenceClassification.from_pretrained(str(root / "merged")).eval()
    torch.manual_seed(0)
    base_model = AutoModelForSequenceClassification.from_pretrained(
        json.loads((root / "train" / "ftexport.json").read_text())["base_model"], num_labels=2
    ).eval()
    base_model.classifier.load_state_dict(merged.classifier.state_dict())  # same head: only the adapter can differ
    texts = ["the film was good", "a very dull plot , really"]
    # merging holds to ~1e-8; the adapter itself moved the logits by far more than that
    assert np.abs(_torch_logits(merged, tok, texts) - _torch_logits(base_model, tok, texts)).max() > 1e-5


def test_bitfit_and_freezing_keep_the_frozen_weights(recipe_file):
    from safetensors.torch import load_file

    recipe = _recipe(
        recipe_file, {"name": "bitfit", "freeze": {"embeddings": True, "layers": 1}}, training__lr=5e-2, training__max_steps=12
    )
    out = recipe.output_dir() / "train"
    record = train(recipe, out, quiet=True)
    base = load_file(str(Path(record["base_model"]) / "model.safetensors"))
    tuned = load_file(str(out / "model.safetensors"))
    changed = {k for k, v in base.items() if not np.allclose(v.numpy(), tuned[f"bert.{k}" if f"bert.{k}" in tuned else k].numpy())}
    assert changed, "nothing was trained"
    assert all(k.endswith(".bias") for k in changed)  # BitFit: biases only
    assert not any(k.startswith(("embeddings.", "encoder.layer.0.")) for k in changed)  # frozen: embeddings and layer 0
    assert any(k.startswith("encoder.layer.1.") for k in changed)


def test_dropout_override_reaches_config_and_modules(recipe_file):
    recipe = _recipe(recipe_file, {"name": "full"}, training__dropout=0.0, training__max_steps=2)
    out = recipe.output_dir() / "train"
    train(recipe, out, quiet=True)
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.0 and config["attention_probs_dropout_prob"] == 0.0


def test_resume_after_an_interruption(recipe_file, monkeypatch):
    """A crash mid-training leaves no stage directory; the next run resumes from the last
    checkpoint instead of step 0 and finishes the same number of steps."""
    import transformers

    recipe = _recipe(
        recipe_file,
        {"name": "lora", "r": 4, "alpha": 8},
        training__max_steps=12,
        training__eval_steps=4,
        training__early_stopping_patience=None,
    )
    out = recipe.output_dir() / "train"
    real_step, calls = transformers.Trainer.training_step, {"n": 0}

    def crashing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated interruption")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, out, quiet=True)
    assert not out.exists()
    calls["n"] = 100  # no more crashes; count the steps the resumed run really trains
    record = train(recipe, out, quiet=True)
    assert record["metrics"]["resumed"] is True and record["metrics"]["steps"] == 12
    assert calls["n"] - 100 == 12 - 4  # resumed from the step-4 checkpoint, not from 0


def test_cli_method_override_is_validated(recipe_file):
    from click.testing import CliRunner

    from ftexport.cli import main

    result = CliRunner().invoke(main, ["-q", "train", str(recipe_file()), "--method", "ia4"])
    assert result.exit_code == 2
    assert "recipe.method.name: expected one of" in result.output and "did you mean 'ia3'?" in result.output


def test_evaluation_does_not_change_the_training_path(recipe_file, monkeypatch):
    """An evaluation draws random numbers; without restoring the generators every later dropout
    mask moved, so the same seed trained a different model per eval_steps (and per transformers
    version). The mean training loss covers every step, whichever checkpoint is kept."""
    import ftexport.train.trainer as trainer_module

    def train_loss(eval_steps: int, tag: str) -> float:
        recipe = _recipe(
            recipe_file,
            {"name": "full"},
            training__max_steps=6,
            training__eval_steps=eval_steps,
            training__dropout=0.3,
            training__early_stopping_patience=None,
            output=str(Path(recipe_file().parent) / f"runs-{tag}"),
        )
        return train(recipe, recipe.output_dir() / "train", quiet=True)["metrics"]["train_loss"]

    often, rarely = train_loss(1, "often"), train_loss(6, "rarely")
    assert often == pytest.approx(rarely, rel=1e-6, abs=1e-7)
    monkeypatch.setattr(trainer_module, "rng_neutral", lambda evaluate: evaluate)  # the control: the test can fail
    assert train_loss(1, "unguarded") != pytest.approx(rarely, rel=1e-6, abs=1e-7)


def test_the_last_step_is_evaluated_when_eval_steps_does_not_divide_it(recipe_file, monkeypatch):
    """transformers 5 evaluates the final step on its own and 4.57 does not, so the same run kept
    a different checkpoint on each stack; ftexport evaluates it on both."""
    import transformers

    steps: list[int] = []
    real_evaluate = transformers.Trainer.evaluate

    def spy(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return real_evaluate(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "evaluate", spy)
    recipe = _recipe(recipe_file, {"name": "lora", "r": 4, "alpha": 8}, training__max_steps=6, training__eval_steps=4)
    train(recipe, recipe.output_dir() / "train", quiet=True)
    assert steps == [4, 6, 6]  # steps 4 and 6 during training, then the closing evaluation of the kept checkpoint
