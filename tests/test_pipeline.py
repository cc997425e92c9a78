"""The spine end to end on a tiny model: every stage, resume, atomic failure, CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from ftexport_runtime import Bundle, Predictor

from ftexport.cli import main
from ftexport.pipeline import STAGES, run, stage_dirs
from ftexport.recipe import load_recipe


def test_full_run_produces_a_validated_bundle(tiny_run):
    recipe_path, result = tiny_run
    assert result.ran == list(STAGES)
    manifest = Bundle.open(result.bundle).manifest
    assert manifest.labels == ["negative", "positive"]
    assert manifest.default_variant == "int8" and set(manifest.variants) == {"fp32", "int8"}
    assert manifest.parity["passed"] is True
    assert manifest.parity["reference"]["accuracy"] >= 0.8  # training really trained
    fp32 = manifest.parity["variants"]["fp32"]
    assert fp32["agreement"] == 1.0 and fp32["max_logit_diff"] < 1e-3
    backends = {(r["backend"], r["batch"]) for r in manifest.latency["results"]}
    assert backends == {(b, n) for b in ("pytorch", "ort-fp32", "ort-int8") for n in (1, 4)}
    assert {"parity.json", "bench.json", "report.md", "model.onnx", "model.int8.onnx", "tokenizer.json"} <= set(manifest.files)
    report = (result.bundle / "report.md").read_text()
    assert "| ONNX int8" in report and "speed-up vs PyTorch" in report


def test_onnx_axes_are_dynamic(tiny_run):
    import onnx

    model = onnx.load(str(tiny_run[1].bundle / "model.onnx"))
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch_size", "sequence_length"]
    p = Predictor.from_bundle(tiny_run[1].bundle, variant="fp32")
    assert p.logits(["good"]).shape == (1, 2)
    assert p.logits(["good film"] * 3 + ["a very long and quite moving story , really"]).shape == (4, 2)


def test_rerun_skips_up_to_date_stages(tiny_run):
    recipe_path, first = tiny_run
    again = run(load_recipe(recipe_path))
    assert again.ran == [] and again.skipped == list(STAGES)
    assert again.parity == first.parity


def test_cli_run_prints_summary_table(tiny_run):
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_run[0])])
    assert result.exit_code == 0, result.output
    assert "| PyTorch fp32" in result.output and "| ONNX int8" in result.output
    assert "p50 ms (batch 1, seq 16)" in result.output
    assert f"bundle: {tiny_run[1].bundle}" in result.output


def test_cli_run_json(tiny_run):
    result = CliRunner().invoke(main, ["-q", "run", str(tiny_run[0]), "--json"])
    data = json.loads(result.output)
    assert data["parity"]["passed"] is True and data["skipped"] == list(STAGES)


def test_failed_stage_leaves_nothing_and_run_resumes(recipe_file, monkeypatch):
    from ftexport.export import resolve_exporter

    recipe = load_recipe(recipe_file())
    dirs = stage_dirs(recipe)

    def boom(*a, **k):
        raise RuntimeError("simulated crash in the middle of export")

    monkeypatch.setattr(resolve_exporter(recipe.export.exporter), "export", boom)  # whichever exporter this stack runs
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(recipe)
    assert dirs["train"].is_dir() and dirs["merge"].is_dir()
    assert not dirs["export"].exists()
    leftovers = [p.name for p in dirs["export"].parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # no temp directories left behind
    monkeypatch.undo()
    resumed = run(recipe)
    assert resumed.skipped == ["train", "merge"]
    assert resumed.ran == ["export", "quantize", "validate", "bench", "pack"]


def test_changed_settings_rerun_from_that_stage(tiny_run, tmp_path):
    import shutil

    recipe_path, first = tiny_run
    copy_root = tmp_path / "copy"
    shutil.copytree(first.root, copy_root)
    recipe = load_recipe(recipe_path).model_copy(update={"output": str(copy_root)})
    recipe.bench = recipe.bench.model_copy(update={"iterations": 3})
    again = run(recipe)
    assert again.skipped == ["train", "merge", "export", "quantize", "validate"]
    assert again.ran == ["bench", "pack"]
    # validate's batch: dynamic int8's answers depend on it, so its verdict is measured again
    recipe.validate_ = recipe.validate_.model_copy(update={"batch_size": 8})
    third = run(recipe, stop_after="validate")
    assert third.skipped == ["train", "merge", "export", "quantize"] and third.ran == ["validate"]
    assert json.loads((copy_root / "parity" / "ftexport.json").read_text())["settings"]["batch_size"] == 8


def test_full_finetune_merge_passes_through(recipe_file):
    recipe = load_recipe(recipe_file(method__name="full", training__lr=1e-3))
    result = run(recipe, stop_after="merge")
    assert result.ran == ["train", "merge"]
    merged = stage_dirs(recipe)["merge"]
    record = json.loads((merged / "ftexport.json").read_text())
    assert record["settings"] == {"merged": False}
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()


@pytest.mark.parametrize(("stage", "hint"), [("tensorrt", "tensorrt.enabled: true"), ("quantize", "quantize.modes")])
def test_stop_after_a_stage_the_recipe_lacks_is_refused_before_any_work(recipe_file, stage, hint):
    """--stop-after names a stage this recipe does not have: one line naming the stages it has,
    not the whole pipeline run to the end."""
    from click.testing import CliRunner

    from ftexport.cli import main

    path = recipe_file(quantize__modes=[], quantize__optimize=None)
    out = CliRunner().invoke(main, ["-q", "run", str(path), "--stop-after", stage])
    assert out.exit_code == 2, out.output
    assert f"no {stage} stage" in out.output and hint in out.output and "train, merge, export, validate" in out.output
    assert not load_recipe(path).output_dir().exists()


def test_a_checkpoint_cut_short_while_saving_does_not_block_the_next_run(recipe_file):
    """A crash or Ctrl-C while the Trainer saves leaves a checkpoint folder without its
    trainer_state.json (written last); the next run drops it instead of failing to resume."""
    from ftexport.train.trainer import train, train_key

    recipe = load_recipe(recipe_file(method__name="full", training__epochs=1))
    out = stage_dirs(recipe)["train"]
    ckpt = out.parent / f".{out.name}.checkpoints"
    (ckpt / "checkpoint-999").mkdir(parents=True)
    (ckpt / "KEY").write_text(train_key(recipe))
    (ckpt / "checkpoint-999" / "model.safetensors").write_bytes(b"\x00" * 100)  # the save got this far
    train(recipe, out, quiet=True)
    assert (out / "model.safetensors").is_file() and json.loads((out / "ftexport.json").read_text())["stage"] == "train"


def test_lora_merge_is_checked(tiny_run):
    record = json.loads((tiny_run[1].root / "merged" / "ftexport.json").read_text())
    assert record["settings"] == {"merged": True}
    assert record["metrics"]["max_logit_diff"] < 1e-4
    assert not (tiny_run[1].root / "merged" / "adapter_config.json").exists()


def test_unfaithful_merge_fails(tiny_run, tmp_path, monkeypatch):
    import torch
    from peft.tuners.lora import LoraModel

    from ftexport.core.errors import GateFailed
    from ftexport.train.merge import merge

    original = LoraModel.merge_and_unload

    def broken(self, *a, **k):
        model = original(self, *a, **k)
        with torch.no_grad():
            model.classifier.weight.add_(0.5)
        return model

    monkeypatch.setattr(LoraModel, "merge_and_unload", broken)
    with pytest.raises(GateFailed, match="merged model differs from the adapter model"):
        merge(tiny_run[1].root / "train", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def corrupt_int8(bundle_dir: Path, out: Path) -> Path:
    """A copy of the bundle whose int8 model always answers label 0 (hashes re-signed)."""
    import shutil

    import numpy as np
    import onnx
    from ftexport_runtime.bundle import write_manifest
    from onnx import numpy_helper

    shutil.copytree(bundle_dir, out)
    model = onnx.load(str(out / "model.int8.onnx"))
    (bias,) = [i for i in model.graph.initializer if i.name == "classifier.bias"]
    bias.CopyFrom(numpy_helper.from_array(np.array([50.0, -50.0], dtype=np.float32), bias.name))
    onnx.save(model, str(out / "model.int8.onnx"))
    write_manifest(out, Bundle.open(out, verify="none").manifest)
    return out


def test_validate_gate_fails_with_exit_1_on_corrupted_model(tiny_run, tmp_path):
    recipe_path, result = tiny_run
    bad = corrupt_int8(result.root / "quantized", tmp_path / "bad")
    out = CliRunner().invoke(
        main,
        [
            "-q",
            "validate",
            str(bad),
            "--reference",
            str(result.root / "merged"),
            "--recipe",
            str(recipe_path),
            "-o",
            str(tmp_path / "parity"),
        ],
    )
    assert out.exit_code == 1, out.output
    assert "FAIL: min_agreement" in out.output
    parity = json.loads((tmp_path / "parity" / "parity.json").read_text())
    assert parity["passed"] is False and parity["variants"]["fp32"]["passed"] is True
    assert parity["variants"]["int8"]["agreement"] < 0.6  # label 0 always: right on about half
    pack = CliRunner().invoke(main, ["-q", "pack", str(bad), "-o", str(tmp_path / "final"), "--parity", str(tmp_path / "parity")])
    assert pack.exit_code == 1 and "failed the parity gate" in pack.output
    assert not (tmp_path / "final").exists()


def test_validate_json_and_threshold_flags(tiny_run, tmp_path):
    recipe_path, result = tiny_run
    args = [
        "-q",
        "validate",
        str(result.root / "quantized"),
        "--reference",
        str(result.root / "merged"),
        "--recipe",
        str(recipe_path),
        "-o",
        str(tmp_path / "p"),
    ]
    strict = CliRunner().invoke(main, args + ["--json", "--threshold", "int8.max_logit_diff=0"])
    assert strict.exit_code == 1
    report = json.loads(strict.output)
    assert [c["name"] for c in report["variants"]["int8"]["checks"] if not c["passed"]] == ["max_logit_diff"]
    bad = CliRunner().invoke(main, args + ["--threshold", "int8.min_agreement=1.5"])
    assert bad.exit_code == 2
    assert bad.output.strip() == "error: --threshold.int8.min_agreement: input should be less than or equal to 1, got '1.5'"


def test_bench_cli_schema_and_bad_input(tiny_run, tmp_path):
    recipe_path, result = tiny_run
    bundle = result.root / "quantized"
    out = CliRunner().invoke(
        main,
        [
            "-q",
            "bench",
            str(bundle),
            "--reference",
            str(result.root / "merged"),
            "--batch-sizes",
            "1,2",
            "--seq-len",
            "8",
            "--iterations",
            "3",
            "--warmup",
            "1",
            "-o",
            str(tmp_path / "b"),
            "--json",
            "--backends",
            "pytorch,ort-fp32,ort-int8",
            "--traffic",
            "fixed",
            "--no-cold-start",
        ],
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["schema_version"] == 2 and report["seq_len"] == 8 and report["machine"]["cores"] >= 1
    cells = {(r["backend"], r["batch"]) for r in report["results"]}
    assert cells == {(b, n) for b in ("pytorch", "ort-fp32", "ort-int8") for n in (1, 2)}
    for r in report["results"]:
        assert r["p50_ms"] > 0 and r["p50_ms"] <= r["p99_ms"] and r["iterations"] == 3
        assert r["speedup_vs_pytorch"] == pytest.approx(
            next(x["p50_ms"] for x in report["results"] if x["backend"] == "pytorch" and x["batch"] == r["batch"]) / r["p50_ms"]
        )
    too_long = CliRunner().invoke(main, ["-q", "bench", str(bundle), "--seq-len", "999", "-o", str(tmp_path / "c")])
    assert too_long.exit_code == 2 and "exceeds the bundle's max_length 32" in too_long.output
    zero = CliRunner().invoke(main, ["-q", "bench", str(bundle), "--batch-sizes", "1,0", "-o", str(tmp_path / "d")])
    assert zero.exit_code == 2 and "sizes must be positive" in zero.output
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_bench_texts_have_exact_token_length(bundle):
    from ftexport.tasks.encoder import texts_of_length

    p = Predictor.from_bundle(bundle)
    for n in (4, 9, 16, 32):
        texts = texts_of_length(p, n, 3)
        assert len(set(texts)) == 3
        assert p.encode(texts)["input_ids"].shape == (3, n)
        assert p.encode(texts)["attention_mask"].all()


def test_export_refuses_a_path_that_is_not_a_model(tmp_path):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hi")
    out = CliRunner().invoke(main, ["-q", "export", str(tmp_path / "notamodel"), "-o", str(tmp_path / "b")])
    assert out.exit_code == 2
    assert (
        out.output.strip()
        == f"error: model dir: {tmp_path / 'notamodel'} is not a model: it has no config.json (expected a save_pretrained folder)"
    )
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_export_refuses_damaged_weights_in_one_line(tiny_model, tmp_path, damage):
    """A model folder whose model.safetensors is garbage or cut short (an interrupted copy):
    one line naming the file, exit 2, no output; not a SafetensorError traceback."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(os.urandom(100) if damage == "garbage" else data[: len(data) // 2])
    out = CliRunner().invoke(main, ["-q", "export", str(model), "-o", str(tmp_path / "b")])
    assert out.exit_code == 2, out.output
    line = out.output.strip()
    assert line.startswith(f"error: model dir: {weights} cannot be read (") and line.endswith("save or fetch it again"), line
    assert ("cut short" in line) == (damage == "truncated") and "\n" not in line
    assert not (tmp_path / "b").exists()


def test_quantize_refuses_truncated_onnx(tiny_run, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_run[1].root / "onnx", b)
    data = (b / "model.onnx").read_bytes()
    (b / "model.onnx").write_bytes(data[:1000])
    out = CliRunner().invoke(main, ["-q", "quantize", str(b), "-o", str(tmp_path / "q")])
    assert out.exit_code == 2 and "'model.onnx' was modified after the bundle was packed" in out.output
    assert not (tmp_path / "q").exists()


def test_train_refuses_model_path_without_config(recipe_file, tmp_path):
    (tmp_path / "empty_model").mkdir()
    out = CliRunner().invoke(main, ["-q", "train", str(recipe_file(model__path=str(tmp_path / "empty_model")))])
    assert out.exit_code == 2
    assert "is not a model: it has no config.json" in out.output


def test_every_command_has_help():
    for cmd in ("run", "train", "distill", "merge", "export", "quantize", "validate", "bench", "pack", "doctor"):
        out = CliRunner().invoke(main, [cmd, "--help"])
        assert out.exit_code == 0, (cmd, out.output)
        assert "Usage: main " + cmd in out.output or f"Usage: ftexport {cmd}" in out.output, (cmd, out.output)


def test_pack_variants_ships_only_the_chosen_precision(tiny_run, tmp_path):
    """An app that ships int8 does not carry (nor hash at load) the fp32 model."""
    from ftexport_runtime import Predictor
    from ftexport_runtime.bundle import Bundle

    result = tiny_run[1]
    out = CliRunner().invoke(main, ["-q", "pack", str(result.root / "quantized"), "-o", str(tmp_path / "slim"), "--variants", "int8"])
    assert out.exit_code == 0, out.output
    slim = Bundle.open(tmp_path / "slim")  # every listed file verifies
    assert list(slim.manifest.variants) == ["int8"] and slim.manifest.default_variant == "int8"
    assert not (tmp_path / "slim" / "model.onnx").exists() and "model.onnx" not in slim.manifest.files
    assert (result.root / "quantized" / "model.onnx").is_file()  # the source bundle keeps its files
    texts = ["a good film", "dull and boring"]
    assert Predictor.from_bundle(tmp_path / "slim").predict(texts) == Predictor.from_bundle(result.bundle, variant="int8").predict(texts)
    bad = CliRunner().invoke(main, ["-q", "pack", str(result.root / "quantized"), "-o", str(tmp_path / "x"), "--variants", "fp16"])
    assert bad.exit_code == 2 and "no variant 'fp16' in this bundle" in bad.output and not (tmp_path / "x").exists()


# ---- keys, leftovers and records (fixes from the redesign issue) ---------------------------


def _cuda_works() -> bool:
    from ftexport.doctor import probe_provider

    return probe_provider("CUDAExecutionProvider")[0]


def test_gate_failure_on_an_unavailable_backend_is_one_line(tiny_run, tmp_path):
    """validate.backends [cpu, cuda] where CUDA cannot run: the cuda results fail the gate with
    their reason (a string, not a number) and `ftexport run` says so in one line, exit 1."""
    import yaml

    if _cuda_works():
        pytest.skip("this machine runs ONNX Runtime CUDA: the cuda results can pass here (tests/test_gpu.py covers that path)")
    recipe_path, result = tiny_run
    data = yaml.safe_load(Path(recipe_path).read_text())
    data["validate"] = {**data.get("validate", {}), "backends": ["cpu", "cuda"]}
    data["output"] = str(tmp_path / "run")
    shutil.copytree(result.root / "train", tmp_path / "run" / "train")  # reuse the training; merge onwards run again
    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(data))
    out = CliRunner().invoke(main, ["-q", "run", str(path)])
    assert out.exit_code == 1, out.output
    line = [ln for ln in out.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "validate: parity gate failed (fp32@cuda: backend " in line[0] and "(limit cuda)" in line[0], out.output
    assert "Unknown format code" not in out.output and "Traceback" not in out.output


def test_stage_keys_follow_content_not_how_paths_are_spelled(tiny_run, tmp_path, monkeypatch):
    """The same data and model reached through another spelling of their paths keep every
    stage key: running the recipe again that way trains nothing."""
    import os

    import yaml

    from ftexport.data import fingerprint
    from ftexport.recipe import load_recipe
    from ftexport.train.trainer import train_key

    recipe_path, result = tiny_run
    data = yaml.safe_load(Path(recipe_path).read_text())
    monkeypatch.chdir(Path(data["data"]["root"]).parent)
    relative = {
        **data,
        "data": {**data["data"], "root": os.path.relpath(data["data"]["root"])},
        "model": {**data["model"], "path": os.path.relpath(data["model"]["path"])},
    }
    assert relative["data"]["root"] != data["data"]["root"] and not Path(relative["data"]["root"]).is_absolute()
    other = tmp_path / "relative.yaml"
    other.write_text(yaml.safe_dump(relative))
    a, b = load_recipe(recipe_path), load_recipe(other)
    assert fingerprint(a.data) == fingerprint(b.data)
    assert train_key(a) == train_key(b)
    again = run(b)
    assert "train" in again.skipped and again.ran == []
    # and the content does count: one changed training row is a new key
    train_csv = Path(data["data"]["root"]) / data["data"]["train"]
    copy = tmp_path / "data"
    shutil.copytree(train_csv.parent, copy)
    (copy / train_csv.name).write_text((copy / train_csv.name).read_text().replace("good", "fine", 1))
    edited = load_recipe(other).model_copy(update={"data": b.data.model_copy(update={"root": str(copy)})})
    assert fingerprint(edited.data) != fingerprint(b.data)


def test_a_killed_stage_leaves_no_temporary_folder_behind(tmp_path):
    """kill -9 in the middle of a stage leaves .NAME.tmp-PID; the next write of that stage
    removes it (its process is gone) and keeps the folder of a process still running."""
    import signal
    import subprocess
    import sys

    from ftexport.core.artifacts import stage_dir

    script = (
        "import sys, time\n"
        "from ftexport.core.artifacts import stage_dir\n"
        "with stage_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'half').write_text('x')\n"
        "    print('inside', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "stage")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "inside"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(tmp_path.glob(".stage.tmp-*"))
    assert len(left) == 1 and (left[0] / "half").is_file()
    alive = tmp_path / f".stage.tmp-{os.getppid()}"  # a live process's folder: another run may be writing it
    alive.mkdir()
    with stage_dir(tmp_path / "stage") as tmp:
        (tmp / "done").write_text("y")
    assert (tmp_path / "stage" / "done").is_file()
    assert not left[0].exists() and alive.exists()


def test_manifest_records_no_builder_path(tiny_run):
    """source.model_dir is relative to the run folder, not the builder's filesystem."""
    from ftexport_runtime.bundle import Bundle

    result = tiny_run[1]
    source = Bundle.open(result.bundle).manifest.source
    assert source["model_dir"] == "merged" and source["model_key"]
    assert str(result.root.parent) not in json.dumps(source)
