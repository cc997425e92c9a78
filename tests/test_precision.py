"""Numeric precision around training and the parity gate, found on the first GPU machine (an
H200): TF32 stays inside training, the fp32 reference is plain fp32 whatever the process set,
`auto` trains in fp32 (autocast only when asked for), and a score floor that the PyTorch model
itself misses is reported as the training's shortfall. These run anywhere: the TF32 settings are
process state even without a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ftexport.cli import main
from ftexport.core.errors import RecipeError
from ftexport.core.hf import cuda_matmul_precision
from ftexport.train import trainer as trainer_mod


def tf32_state() -> tuple:
    """The CUDA matmul / convolution precision settings, in whichever API this torch has."""
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(m, "fp32_precision"):
        return (m.fp32_precision, c.conv.fp32_precision)
    return (m.allow_tf32, c.allow_tf32)


TF32 = ("tf32", "tf32") if hasattr(torch.backends.cuda.matmul, "fp32_precision") else (True, True)
IEEE = ("ieee", "ieee") if hasattr(torch.backends.cuda.matmul, "fp32_precision") else (False, False)


@pytest.fixture
def restore_tf32():
    """Whatever a test leaves, the next one starts from this process's setting (the helper's own
    restore, which test_cuda_matmul_precision_sets_and_restores_even_on_error checks)."""
    with cuda_matmul_precision("ieee"):
        yield


def test_cuda_matmul_precision_sets_and_restores_even_on_error(restore_tf32):
    before = tf32_state()
    with cuda_matmul_precision("tf32"):
        assert tf32_state() == TF32
        with cuda_matmul_precision("ieee"):
            assert tf32_state() == IEEE
        assert tf32_state() == TF32
    assert tf32_state() == before
    with pytest.raises(KeyError), cuda_matmul_precision("tf32"):
        raise KeyError("boom")
    assert tf32_state() == before


def test_training_turns_tf32_on_for_itself_alone(recipe_file, tmp_path, monkeypatch, restore_tf32):
    """What a GPU does (tf32_wanted is True on Ampere+), here on the CPU: TF32 is on while the
    Trainer trains, and the process has its own setting back afterwards (transformers' tf32=True
    left it on, so the fp32 reference computed after training missed the fp32 gate)."""
    from transformers import Trainer

    from ftexport.recipe import load_recipe

    seen = []
    original = Trainer.train

    def train(self, *a, **k):
        seen.append(tf32_state())
        return original(self, *a, **k)

    monkeypatch.setattr(Trainer, "train", train)
    monkeypatch.setattr(trainer_mod, "tf32_wanted", lambda device: True)
    before = tf32_state()
    record = trainer_mod.train(load_recipe(recipe_file(training__epochs=1)), tmp_path / "train", quiet=True)
    assert seen == [TF32]
    assert tf32_state() == before
    assert record["metrics"]["tf32"] is True and record["metrics"]["precision"] == "fp32"


def test_auto_precision_trains_in_fp32_and_autocast_is_opt_in():
    """On an H200 bf16 autocast made the quickstart's LoRA collapse where fp32 + TF32 trained it:
    `auto` is fp32 on every device, bf16/fp16 only when the recipe names them (and only on CUDA)."""
    for device in ("cpu", "cuda"):
        assert trainer_mod.precision_flags("auto", device) == {"bf16": False, "fp16": False}
        assert trainer_mod.precision_flags("no", device) == {"bf16": False, "fp16": False}
    assert trainer_mod.precision_flags("bf16", "cuda") == {"bf16": True, "fp16": False}
    assert trainer_mod.precision_flags("fp16", "cuda") == {"bf16": False, "fp16": True}
    with pytest.raises(RecipeError, match="needs a CUDA device"):
        trainer_mod.precision_flags("bf16", "cpu")


def test_parity_reference_runs_in_plain_fp32_whatever_the_process_set(tiny_run, tmp_path, monkeypatch, restore_tf32):
    from ftexport.judge.parity import validate
    from ftexport.recipe import load_recipe
    from ftexport.tasks import get_task

    recipe_path, result = tiny_run
    recipe = load_recipe(recipe_path)
    task = get_task(recipe.task)
    seen = []
    original = type(task).parity_case

    def parity_case(self, *a, **k):
        seen.append(tf32_state())
        return original(self, *a, **k)

    monkeypatch.setattr(type(task), "parity_case", parity_case)
    with cuda_matmul_precision("tf32"):  # as a notebook (or the old trainer) would leave it
        report = validate(result.root / "quantized", result.root / "merged", recipe.data, recipe.validate_.gates(), tmp_path / "p")
        assert tf32_state() == TF32
    assert seen == [IEEE]
    assert report.passed


def test_a_score_floor_the_pytorch_model_itself_misses_is_named_as_the_trainings(tiny_run, tmp_path):
    recipe_path, result = tiny_run
    args = ["-q", "validate", str(result.root / "quantized"), "--reference", str(result.root / "merged"), "--recipe", str(recipe_path)]
    out = CliRunner().invoke(main, args + ["-o", str(tmp_path / "p"), "--threshold", "int8.min_accuracy=1.0"])
    assert out.exit_code == 1
    assert "the PyTorch model itself scores" in out.output and "the training fell short" in out.output
    report = json.loads((tmp_path / "p" / "parity.json").read_text())
    assert report["reference_below_gate"]["limit"] == 1.0 and report["reference_below_gate"]["value"] < 1.0
    # a floor the reference clears but a variant misses is the variant's alone
    ref = report["reference"]["accuracy"]
    fine = CliRunner().invoke(main, args + ["-o", str(tmp_path / "q"), "--threshold", f"int8.min_accuracy={ref}", "--json"])
    assert "reference_below_gate" not in json.loads(fine.output)
