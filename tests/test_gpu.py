"""GPU paths: training on CUDA, the ONNX Runtime CUDA and TensorRT backends, TensorRT engines.

CI has no GPU: each test skips with the reason. On a machine with a CUDA GPU (torch built with
CUDA, onnxruntime-gpu for the ORT tests, TensorRT 10 or 11 and cuda-bindings for the engine
tests, in one of the combinations of docs/tensorrt.md: `ftexport doctor` names it) they run for
real: `pytest -m gpu tests/test_gpu.py`.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from ftexport_runtime import Predictor


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"


def _ort_cuda_reason() -> str | None:
    import onnxruntime as ort

    if _cuda_reason():
        return _cuda_reason()
    return (
        None
        if "CUDAExecutionProvider" in ort.get_available_providers()
        else "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    )


def _trt_reason() -> str | None:
    if _cuda_reason():
        return _cuda_reason()
    for module, package in (("tensorrt", "tensorrt"), ("cuda", "cuda-bindings")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install 'ftexport[trt]' --extra-index-url https://pypi.nvidia.com)"
    return None


def _ort_trt_reason() -> str | None:
    """Why ONNX Runtime's TensorRT provider cannot run here; None where it can."""
    import onnxruntime as ort

    if _ort_cuda_reason():
        return _ort_cuda_reason()
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no TensorrtExecutionProvider (install onnxruntime-gpu)"
    from ftexport_runtime.engines.ort import tensorrt_provider_problem

    return tensorrt_provider_problem()


needs_cuda = pytest.mark.skipif(_cuda_reason() is not None, reason=_cuda_reason() or "")
needs_ort_cuda = pytest.mark.skipif(_ort_cuda_reason() is not None, reason=_ort_cuda_reason() or "")
needs_trt = pytest.mark.skipif(_trt_reason() is not None, reason=_trt_reason() or "")
needs_ort_trt = pytest.mark.skipif(_ort_trt_reason() is not None, reason=_ort_trt_reason() or "")
pytestmark = pytest.mark.gpu

TEXTS = ["a wonderful , moving film", "dull and far too long", "the cast is superb", "bad", "the story was quite good"] * 8


@needs_cuda
def test_training_on_the_gpu_uses_tf32_fused_adamw_and_length_grouping(recipe_file, tmp_path):
    """auto precision is fp32 with TF32 matmuls (bf16 autocast made the quickstart collapse on an
    H200: docs/results/gpu-h200-precision-ab.json); TF32 is on for the training alone; bf16 is
    taken when the recipe names it."""
    import torch

    from ftexport.recipe import load_recipe
    from ftexport.train.trainer import train

    before = torch.backends.cuda.matmul.fp32_precision if hasattr(torch.backends.cuda.matmul, "fp32_precision") else None
    record = train(load_recipe(recipe_file(training__epochs=1)), tmp_path / "train", quiet=True)
    m = record["metrics"]
    assert m["device"] == torch.cuda.get_device_name(0)
    assert m["precision"] == "fp32"
    assert m["optimizer"] == "adamw_torch_fused" and m["group_by_length"] is True
    assert m["tf32"] == (torch.cuda.get_device_capability()[0] >= 8)
    assert m["train_samples_per_second"] > 0
    if before is not None:
        assert torch.backends.cuda.matmul.fp32_precision == before  # not left on for the fp32 reference
    if torch.cuda.is_bf16_supported():
        bf16 = train(load_recipe(recipe_file(training__epochs=1, training__mixed_precision="bf16")), tmp_path / "bf16", quiet=True)
        assert bf16["metrics"]["precision"] == "bf16"


@needs_ort_cuda
def test_ort_cuda_runs_on_the_gpu_and_matches_the_cpu(bundle):
    cpu = Predictor.from_bundle(bundle, variant="fp32")
    gpu = Predictor.from_bundle(bundle, variant="fp32", backend="cuda")
    assert gpu.providers[0] == "CUDAExecutionProvider" and gpu._io_binding
    assert np.abs(cpu.logits(TEXTS) - gpu.logits(TEXTS)).max() < 1e-3


@needs_ort_cuda
def test_fp16_variant_on_cuda_agrees_with_fp32(tiny_run, tmp_path):
    from ftexport.export.quantize import quantize
    from ftexport.recipe import QuantizeSection

    quantize(tiny_run[1].root / "onnx", tmp_path / "q", QuantizeSection(modes=["fp16"]))
    ref = Predictor.from_bundle(tmp_path / "q", variant="fp32").logits(TEXTS)
    p = Predictor.from_bundle(tmp_path / "q", backend="cuda")
    assert p.variant.name == "fp16" and p.providers[0] == "CUDAExecutionProvider"
    got = p.logits(TEXTS)
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.95 and np.abs(ref - got).max() < 0.05


@needs_trt
def test_tensorrt_engines_build_run_and_match_fp32(tiny_run, tmp_path):
    from ftexport_runtime.engines.tensorrt import current_fingerprint

    from ftexport.export.quantize import quantize
    from ftexport.export.tensorrt import build_engines, timing_cache_path
    from ftexport.recipe import QuantizeSection, load_recipe

    data = load_recipe(tiny_run[0]).data
    quantize(tiny_run[1].root / "onnx", tmp_path / "q", QuantizeSection(modes=["static"], symmetric=True), data)
    manifest = build_engines(tmp_path / "q", tmp_path / "e", ["fp16", "int8"], TEXTS, batch=(1, 4, 16))
    assert manifest.engines["fp16"].fingerprint == current_fingerprint()
    assert timing_cache_path(tmp_path / "e").stat().st_size > 0
    ref = Predictor.from_bundle(tmp_path / "e", variant="fp32").logits(TEXTS)
    for name, tol in (("fp16", 0.05), ("int8", 0.5)):
        p = Predictor.from_bundle(tmp_path / "e", backend="tensorrt", variant=name)
        assert p.engine is not None
        got = p.logits(TEXTS)
        assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.9 and np.abs(ref - got).max() < tol, name


@pytest.fixture
def sym_bundle(tiny_run, tmp_path):
    """The tiny bundle with a static symmetric Q/DQ int8 variant (the graph TensorRT's int8 reads)."""
    from ftexport.export.quantize import quantize
    from ftexport.recipe import QuantizeSection, load_recipe

    data = load_recipe(tiny_run[0]).data
    quantize(tiny_run[1].root / "onnx", tmp_path / "q", QuantizeSection(modes=["static"], symmetric=True), data)
    return tmp_path / "q"


@needs_trt
def test_strongly_typed_fp16_and_int8_engines_on_this_tensorrt(sym_bundle, tmp_path, capsys):
    """TensorRT 10.12+ and 11.x: no precision flags; the fp16 engine from the fp16 cast graph, the
    int8 one from the Q/DQ graph, on a strongly typed network, both close to fp32. A corrupt
    timing cache beside the bundle is reported and replaced; the rebuild then reuses the new one."""
    import tensorrt as trt

    from ftexport.core import progress
    from ftexport.export.tensorrt import FLAGS, STRONGLY_TYPED, build_engines, build_mode, timing_cache_path

    progress.set_quiet(False)
    mode = build_mode(trt)
    major, minor = (int(x) for x in trt.__version__.split(".")[:2])
    assert mode == (STRONGLY_TYPED if (major, minor) >= (10, 12) else FLAGS)
    assert major < 11 or not hasattr(trt.BuilderFlag, "FP16")  # what the double of 11.x models
    cache = timing_cache_path(tmp_path / "e")
    cache.write_bytes(b"not a timing cache")
    manifest = build_engines(sym_bundle, tmp_path / "e", ["fp16", "int8"], TEXTS, batch=(1, 4, 16))
    assert "starting a fresh timing cache" in capsys.readouterr().err
    assert cache.stat().st_size > 0 and cache.read_bytes() != b"not a timing cache"
    fp16, int8 = manifest.engines["fp16"], manifest.engines["int8"]
    assert fp16.details["build"] == int8.details["build"] == mode and fp16.details["tensorrt"] == trt.__version__
    if mode == STRONGLY_TYPED:
        assert fp16.details["graph"].startswith("fp16 cast of fp32") and fp16.details["flags"] == int8.details["flags"] == []
    ref = Predictor.from_bundle(tmp_path / "e", variant="fp32").logits(TEXTS)
    for name, tol in (("fp16", 0.05), ("int8", 0.5)):
        p = Predictor.from_bundle(tmp_path / "e", backend="tensorrt", variant=name)
        got = p.logits(TEXTS)
        assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.9 and np.abs(ref - got).max() < tol, name
        p.engine.close()
        assert p.engine.stream is None
    build_engines(tmp_path / "e", None, ["fp16"], None, seq=(1, 8, 16))  # the rebuild reuses this GPU's cache
    assert "starting a fresh timing cache" not in capsys.readouterr().err


@needs_ort_trt
def test_ort_tensorrt_provider_with_profiles_and_caches(sym_bundle, tmp_path):
    """ONNX Runtime's TensorRT provider ([TensorRT, CUDA, CPU]): one engine per model for every
    shape within the profile (no rebuild on a new batch or length), kept on disk so a restart
    reuses it; its default variant is the Q/DQ int8 graph, and fp32 matches the CPU."""
    cache = tmp_path / "trt"
    cpu = Predictor.from_bundle(sym_bundle, variant="fp32")
    p = Predictor.from_bundle(sym_bundle, backend="ort-tensorrt", variant="fp32", trt_cache=cache, max_batch=8)
    assert p.providers[:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"] and p.engine is None
    assert np.abs(cpu.logits(TEXTS) - p.logits(TEXTS)).max() < 1e-2
    engines = sorted(cache.rglob("*.engine"))
    assert engines, sorted(cache.rglob("*"))
    stamps = {e: e.stat().st_mtime_ns for e in engines}
    for texts in (TEXTS[:1], TEXTS[:3], [t * 4 for t in TEXTS[:8]], ["a"]):  # new batch sizes and lengths
        p.logits(texts)
    assert sorted(cache.rglob("*.engine")) == engines and all(e.stat().st_mtime_ns == t for e, t in stamps.items())
    again = Predictor.from_bundle(sym_bundle, backend="ort-tensorrt", variant="fp32", trt_cache=cache, max_batch=8)  # a restart
    again.logits(TEXTS)
    assert sorted(cache.rglob("*.engine")) == engines and all(e.stat().st_mtime_ns == t for e, t in stamps.items())
    q = Predictor.from_bundle(sym_bundle, backend="ort-tensorrt", trt_cache=cache)
    assert q.variant.name == "int8-static" and q.providers[0] == "TensorrtExecutionProvider"
    ref = cpu.logits(TEXTS)
    assert (ref.argmax(-1) == q.logits(TEXTS).argmax(-1)).mean() >= 0.9
