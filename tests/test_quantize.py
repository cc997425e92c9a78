"""Compression modes on the tiny model: dynamic and static int8 (QDQ / QOperator, three
calibration methods), graph optimization levels, quantizing a fused graph, the
accuracy-aware loop and its refusal cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from ftexport_runtime import Predictor

from ftexport.cli import main
from ftexport.core.errors import RecipeError
from ftexport.export.quantize import quantize
from ftexport.export.quantize.aware import layer_of
from ftexport.recipe import Gate, QuantizeSection, load_recipe

TEXTS = ["a wonderful , moving film", "dull and far too long", "the cast is superb"]


def op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def fp32_agreement(bundle: Path, variant: str) -> float:
    ref = Predictor.from_bundle(bundle, variant="fp32").logits(TEXTS * 4)
    got = Predictor.from_bundle(bundle, variant=variant).logits(TEXTS * 4)
    return float((ref.argmax(-1) == got.argmax(-1)).mean())


@pytest.mark.parametrize(
    ("fmt", "method", "expected_op"),
    [("qdq", "minmax", "QuantizeLinear"), ("qoperator", "entropy", "QLinearMatMul"), ("qdq", "percentile", "DequantizeLinear")],
)
def test_static_int8_calibrates_on_training_texts(tiny_run, tmp_path, fmt, method, expected_op):
    recipe_path, result = tiny_run
    recipe = load_recipe(recipe_path)
    section = QuantizeSection(modes=["static"], format=fmt, calibration={"samples": 16, "method": method})
    manifest = quantize(result.root / "onnx", tmp_path / "q", section, recipe.data)
    variant = manifest.variants["int8-static"]
    assert variant.precision == "int8" and variant.details["format"] == fmt
    assert variant.details["calibration"]["samples"] == 16 and variant.details["calibration"]["method"] == method
    assert expected_op in op_types(tmp_path / "q" / variant.file)
    assert manifest.default_variant == "int8-static"
    # GPUs: CUDA takes fp32; so does TensorRT here (uint8 activations: not symmetric; see test_tensorrt)
    assert manifest.backend_defaults == {"cuda": "fp32", "tensorrt": "fp32"}
    assert fp32_agreement(tmp_path / "q", "int8-static") >= 0.75
    assert not list((tmp_path / "q").glob("augmented*"))  # calibration leftovers cleaned up


def test_static_refuses_to_calibrate_without_data(tiny_run, tmp_path):
    result = tiny_run[1]
    with pytest.raises(RecipeError, match="calibration data"):
        quantize(result.root / "onnx", tmp_path / "q", QuantizeSection(modes=["static"]))
    assert not (tmp_path / "q").exists()
    out = CliRunner().invoke(main, ["-q", "quantize", str(result.root / "onnx"), "-o", str(tmp_path / "q"), "--mode", "static"])
    assert out.exit_code == 2 and "static int8 needs calibration data" in out.output
    assert len(out.output.strip().splitlines()) == 1


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_optimization_levels_keep_fp32_parity(tiny_run, tmp_path, level):
    result = tiny_run[1]
    manifest = quantize(result.root / "onnx", tmp_path / "q", QuantizeSection(modes=[], optimize=level))
    assert manifest.variants["opt"].details["optimization_level"] == level
    assert manifest.default_variant == "opt"
    ref = Predictor.from_bundle(tmp_path / "q", variant="fp32").logits(TEXTS)
    opt = Predictor.from_bundle(tmp_path / "q", variant="opt").logits(TEXTS)
    assert np.abs(ref - opt).max() < 1e-3


def test_quantizing_a_fused_graph(tiny_run, tmp_path):
    """O2 fuses attention and LayerNorm into contrib ops that ONNX shape inference cannot type;
    plain ORT quantization then fails ("Unable to find data type for weight_name ...")."""
    recipe_path, result = tiny_run
    recipe = load_recipe(recipe_path)
    section = QuantizeSection(modes=["dynamic", "static"], optimize="O2", calibration={"samples": 16})
    manifest = quantize(result.root / "onnx", tmp_path / "q", section, recipe.data)
    fused = op_types(tmp_path / "q" / "model.opt.onnx")
    assert {"Attention", "SkipLayerNormalization"} & fused, fused
    dynamic = op_types(tmp_path / "q" / "model.int8.onnx")
    assert {"QAttention", "DynamicQuantizeMatMul", "MatMulInteger"} & dynamic, dynamic
    assert "QuantizeLinear" in op_types(tmp_path / "q" / "model.int8-static.onnx")
    assert manifest.variants["int8"].details["optimization_level"] == "O2"
    assert not (tmp_path / "q" / "_typed.onnx").exists()
    for variant in ("int8", "int8-static"):
        assert fp32_agreement(tmp_path / "q", variant) >= 0.75


@pytest.mark.parametrize("optimize", [None, "O2"])
def test_dynamic_int8_ships_ort_cpu_rewrite_with_identical_outputs(tiny_run, tmp_path, optimize):
    """The dynamic int8 file is ONNX Runtime's own EXTENDED rewrite for the CPU, done once at
    quantize time instead of at every session start: a fixed point of that rewrite (nothing
    left to fuse at load), with outputs bit-identical to the file as quantized."""
    from ftexport.export.quantize.int8 import cpu_preoptimize, int8_onnx

    manifest = quantize(tiny_run[1].root / "onnx", tmp_path / "q", QuantizeSection(modes=["dynamic"], optimize=optimize))
    shipped = tmp_path / "q" / "model.int8.onnx"
    import onnxruntime as ort

    assert manifest.default_variant == "int8" and manifest.backend_defaults == {
        "cuda": "fp32",
        "tensorrt": "fp32",
    }  # GPUs: not the CPU graph
    assert manifest.variants["int8"].details["ort_graph"] == {
        "level": "extended",
        "execution_provider": "CPUExecutionProvider",
        "onnxruntime": ort.__version__,
    }
    source = tmp_path / "q" / ("model.opt.onnx" if optimize else "model.onnx")
    if optimize:  # the quantizer reads the fused graph through symbolic shape inference
        from ftexport.export.quantize.int8 import typed as _typed

        source = _typed(source, tmp_path / "typed.onnx")
    plain = tmp_path / "plain.int8.onnx"
    int8_onnx(source, plain, False, QuantizeSection(modes=["dynamic"]))
    nodes = len(onnx.load(str(shipped)).graph.node)
    assert nodes < len(onnx.load(str(plain)).graph.node)  # fused: fewer nodes than the quantizer wrote
    again = shutil.copy(shipped, tmp_path / "again.onnx")
    cpu_preoptimize(again)
    assert len(onnx.load(str(again)).graph.node) == nodes  # nothing left for a session to do
    assert "MatMulInteger" not in op_types(shipped)  # folded into DynamicQuantizeMatMul / MatMulIntegerToFloat

    enc = Predictor.from_bundle(tmp_path / "q", variant="int8").encode(TEXTS * 3)
    a = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(shipped), providers=["CPUExecutionProvider"])
    feeds = {i.name: enc[i.name] for i in a.get_inputs()}
    assert np.array_equal(a.run(None, feeds)[0], b.run(None, feeds)[0])


def test_fp16_variant_is_the_gpu_default(tiny_run, tmp_path):
    manifest = quantize(tiny_run[1].root / "onnx", tmp_path / "q", QuantizeSection(modes=["fp16"]))
    assert manifest.backend_defaults["cuda"] == "fp16" and manifest.variants["fp16"].details["optimization_level"] == "O4"
    p = Predictor.from_bundle(tmp_path / "q", variant="fp16")  # fp16 graphs also run on ORT's CPU provider
    assert p.logits(TEXTS).dtype == np.float32


def test_tensorrt_default_is_a_graph_tensorrt_reads_never_the_o4_one(tiny_run, tmp_path):
    """The O4 fp16 graph is ONNX Runtime's own, full of contrib ops (Attention,
    SkipLayerNormalization) that TensorRT's parser does not read: CUDA takes it, ONNX Runtime's
    TensorRT provider takes fp32 (or a symmetric Q/DQ int8 when there is one)."""
    import onnx

    manifest = quantize(tiny_run[1].root / "onnx", tmp_path / "q", QuantizeSection(modes=["fp16"]))
    assert {n.domain for n in onnx.load(str(tmp_path / "q" / manifest.variants["fp16"].file)).graph.node} & {"com.microsoft"}
    assert manifest.backend_defaults["cuda"] == "fp16" and manifest.backend_defaults["tensorrt"] == "fp32"


def test_layer_of_groups_nodes_by_layer():
    assert layer_of("/bert/encoder/layer.3/attention/self/query/MatMul") == "layer.3"
    assert layer_of("/model/layers.11/mlp/MatMul") == "layer.11"
    assert layer_of("/bert/embeddings/word_embeddings/Gather") == "bert/embeddings"
    assert layer_of("MatMul_7") == "MatMul_7"


def break_embeddings(merged: Path, out: Path) -> Path:
    """A copy of the model whose fp32 answers are unchanged but whose int8 embeddings are
    ruined: one word-embedding row that no text uses (the last [unused] token) gets a huge
    value. fp32 never reads that row; int8 sizes the table's scale to it, so every other
    embedding rounds to zero and the model sees position embeddings only."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(merged))
    with torch.no_grad():
        table = model.bert.embeddings.word_embeddings.weight
        table[-1] = 500.0 * table.abs().max()
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(merged)).save_pretrained(str(out))
    return out


def test_accuracy_aware_loop_keeps_the_breaking_layer_in_fp32(tiny_run, tmp_path):
    from ftexport.export.stage import export

    recipe_path, result = tiny_run
    recipe = load_recipe(recipe_path)
    broken = break_embeddings(result.root / "merged", tmp_path / "broken")
    export(broken, tmp_path / "onnx")
    plain = QuantizeSection(modes=["dynamic"], per_channel=True)
    quantize(tmp_path / "onnx", tmp_path / "plain", plain, recipe.data)
    gap = _logit_gap(tmp_path / "plain")
    assert gap > 0.1, gap  # the break is real
    # a gate plain int8 misses (how far the tiny model's logits move depends on its training)
    gate = Gate(min_agreement=0.95, max_logit_diff=gap / 2)

    aware = QuantizeSection(modes=["dynamic"], accuracy_aware={"enabled": True, "samples": 32, "max_fp32_layers": 3})
    manifest = quantize(tmp_path / "onnx", tmp_path / "aware", aware, recipe.data, gate)
    report = manifest.variants["int8"].details["accuracy_aware"]
    assert report["passed"] is True
    assert report["all_int8"]["passed"] is False
    assert report["sensitivity"][0]["layer"] == "bert/embeddings"  # the loop found the broken layer first
    assert report["kept_fp32"][0] == "bert/embeddings" and len(report["kept_fp32"]) < 3
    assert report["kept_fp32_nodes"] and all("/embeddings/" in n for n in report["kept_fp32_nodes"])
    assert report["latency_cost"]["final_p50_ms"] > 0
    # what was kept is still fp32 in the graph, the rest is int8
    graph = onnx.load(str(tmp_path / "aware" / "model.int8.onnx")).graph
    kept = [n for n in graph.node if "word_embeddings" in n.name]
    assert kept and all(n.op_type == "Gather" for n in kept)
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in graph.node)
    assert _logit_gap(tmp_path / "aware") < gap / 2
    saved = json.loads((tmp_path / "aware" / "manifest.json").read_text())
    assert saved["variants"]["int8"]["details"]["accuracy_aware"]["kept_fp32"] == report["kept_fp32"]


def _logit_gap(bundle: Path) -> float:
    ref = Predictor.from_bundle(bundle, variant="fp32").logits(TEXTS * 4)
    got = Predictor.from_bundle(bundle, variant="int8").logits(TEXTS * 4)
    return float(np.abs(ref - got).max())


def test_accuracy_aware_needs_a_recipe(tiny_run, tmp_path):
    section = QuantizeSection(accuracy_aware={"enabled": True})
    with pytest.raises(RecipeError, match="accuracy-aware"):
        quantize(tiny_run[1].root / "onnx", tmp_path / "q", section)


def test_quantize_cli_reads_the_recipe_and_flags(tiny_run, tmp_path):
    recipe_path, result = tiny_run
    out = CliRunner().invoke(
        main,
        [
            "-q",
            "quantize",
            str(result.root / "onnx"),
            "-o",
            str(tmp_path / "q"),
            "--recipe",
            str(recipe_path),
            "--mode",
            "static",
            "--format",
            "qoperator",
            "--calibration-samples",
            "8",
            "--per-tensor",
        ],
    )
    assert out.exit_code == 0, out.output
    details = json.loads((tmp_path / "q" / "manifest.json").read_text())["variants"]["int8-static"]["details"]
    assert details["format"] == "qoperator" and details["calibration"]["samples"] == 8 and details["per_channel"] is False


def test_bench_measures_the_plain_optimum_path_side_by_side(tiny_run, tmp_path):
    from ftexport.export import EXPORTERS
    from ftexport.judge.bench import bench
    from ftexport.recipe import BenchSection

    result = tiny_run[1]
    section = BenchSection(
        batch_sizes=[1], seq_len=8, iterations=3, warmup=1, cold_start=False, backends=["pytorch", "optimum-int8", "ort-int8"]
    )
    report = bench(result.root / "quantized", result.root / "merged", section, tmp_path / "b")
    rows = {r["backend"]: r for r in report["results"]}
    missing = EXPORTERS["optimum"].available()
    if missing:  # the current stack: no Optimum, so its row is skipped with the reason, the others still run
        assert set(rows) == {"pytorch", "ort-int8"} and report["skipped"]["optimum-int8"] == missing
        return
    assert set(rows) == {"pytorch", "optimum-int8", "ort-int8"}
    assert rows["optimum-int8"]["p50_ms"] > 0 and rows["optimum-int8"]["speedup_vs_pytorch"] > 0
    assert not list(Path(tmp_path).glob("ftexport-optimum-*"))
    skipped = bench(result.root / "quantized", None, section, tmp_path / "b2")["skipped"]
    assert skipped["optimum-int8"] == "no --reference model given"


def test_weight_only_mode_refuses_a_graph_without_weight_matmuls(tmp_path):
    """MatMulNBits quantizes MatMuls with constant weights only; a graph whose linear layers
    are Gemm (GPT-2's Conv1D through the dynamo exporter) would give a variant identical to
    fp32 that passes every gate. It is refused in one line that names the Gemm nodes."""
    from onnx import TensorProto, helper, numpy_helper

    from ftexport.core.errors import BundleError
    from ftexport.export.quantize import MODES

    w = numpy_helper.from_array(np.ones((8, 8), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "model.onnx"))
    for name in ("int4", "int8-block"):
        with pytest.raises(BundleError, match=rf"^model\.onnx: {name} found no MatMul with constant weights to quantize \(its 1 Gemm"):
            MODES[name].build(None, tmp_path, "model.onnx")
        assert not (tmp_path / MODES[name].file).exists()


def test_the_cli_offers_every_registered_mode():
    from ftexport.cli import QUANTIZE_MODES
    from ftexport.export.quantize import mode_names

    assert QUANTIZE_MODES == mode_names()
