"""GPU paths: training on CUDA, the ONNX Runtime CUDA backend, TensorRT engines.

CI has no GPU: each test skips with the reason. On a machine with a CUDA GPU (torch built with
CUDA, onnxruntime-gpu for the ORT tests, TensorRT 10 and cuda-bindings for the engine tests)
they run for real: `pytest -m gpu tests/test_gpu.py`.
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


needs_cuda = pytest.mark.skipif(_cuda_reason() is not None, reason=_cuda_reason() or "")
needs_ort_cuda = pytest.mark.skipif(_ort_cuda_reason() is not None, reason=_ort_cuda_reason() or "")
needs_trt = pytest.mark.skipif(_trt_reason() is not None, reason=_trt_reason() or "")
pytestmark = pytest.mark.gpu

TEXTS = ["a wonderful , moving film", "dull and far too long", "the cast is superb", "bad", "the story was quite good"] * 8


@needs_cuda
def test_training_on_the_gpu_uses_mixed_precision_tf32_fused_adamw_and_length_grouping(recipe_file, tmp_path):
    import torch

    from ftexport.recipe import load_recipe
    from ftexport.train.trainer import train

    recipe = load_recipe(recipe_file(training__epochs=1))
    record = train(recipe, tmp_path / "train", quiet=True)
    m = record["metrics"]
    assert m["device"] == torch.cuda.get_device_name(0)
    assert m["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert m["optimizer"] == "adamw_torch_fused" and m["group_by_length"] is True
    assert m["tf32"] == (torch.cuda.get_device_capability()[0] >= 8)
    assert m["train_samples_per_second"] > 0


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
