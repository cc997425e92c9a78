"""TensorRT engines without TensorRT: what CI can check of `ftexport export --trt` and the
runtime's engine backend.

For real: the symmetric static int8 QDQ model TensorRT's int8 engine is built from (made and
judged on ONNX Runtime CPU), which graphs TensorRT cannot take and why, the optimization
profile from training-text lengths, fingerprints and refusals, the manifest contract for
engines (sha256, bad entries), batches outside the profile, and every refusal's message and
exit code. Through test doubles (tests/fake_tensorrt.py): the builder's TensorRT calls and
the runner's device-memory plumbing. TensorRT itself runs in tests/test_gpu.py only.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import ftexport_runtime.engines.tensorrt as te
import numpy as np
import pytest
from click.testing import CliRunner
from fake_tensorrt import CORRUPT_CACHE, FAKE_VERSION, TRT10_STRONG_VERSION, TRT11_VERSION, FakeCudart, fake_tensorrt, foreign_cache
from ftexport_runtime import Predictor
from ftexport_runtime.bundle import Bundle, sha256_file
from ftexport_runtime.errors import BackendUnavailable, PredictError

from ftexport.cli import main
from ftexport.core.errors import BundleError, RecipeError
from ftexport.export.quantize import quantize
from ftexport.export.tensorrt import (
    FLAGS,
    STRONGLY_TYPED,
    build_engine,
    build_engines,
    build_mode,
    fp16_cast,
    int8_problems,
    plan_engines,
    profile_from_lengths,
    timing_cache_path,
    token_lengths,
)
from ftexport.recipe import QuantizeSection, load_recipe

HERE = {"tensorrt": FAKE_VERSION, "gpu": "Fake GPU", "compute_capability": "9.0", "driver": "unknown"}
TEXTS = ["a wonderful , moving film", "dull and far too long", "the cast is superb", "bad"]


@pytest.fixture(scope="module")
def qbundle(tiny_run, tmp_path_factory) -> Path:
    """The tiny model's bundle with dynamic int8, static uint8 (asymmetric) QDQ and static symmetric int8 QDQ."""
    recipe_path, result = tiny_run
    data = load_recipe(recipe_path).data
    out = tmp_path_factory.mktemp("trt") / "q"
    quantize(result.root / "onnx", out, QuantizeSection(modes=["dynamic", "static"], symmetric=True, calibration={"samples": 32}), data)
    asym = tmp_path_factory.mktemp("trt") / "asym"
    quantize(result.root / "onnx", asym, QuantizeSection(modes=["static"], calibration={"samples": 32}), data)
    return out, asym


@pytest.fixture
def fake_gpu(monkeypatch):
    """tensorrt and cuda-bindings replaced by the test doubles; returns (trt module, cudart)."""
    trt = fake_tensorrt(["input_ids", "attention_mask", "token_type_ids"])
    cudart = FakeCudart()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(te, "_cudart", lambda: cudart)
    return trt, cudart


# Every TensorRT release the builder and runner are written for: 10.0-10.11 (builder flags),
# 10.12+ (flags deprecated: strongly typed) and 11.x (flags removed, always strongly typed).
RELEASES = [FAKE_VERSION, TRT10_STRONG_VERSION, TRT11_VERSION]


@pytest.fixture(params=RELEASES)
def fake_release(request, monkeypatch):
    """The doubles acting as each TensorRT release in turn; returns (trt module, cudart, fingerprint here)."""
    trt = fake_tensorrt(["input_ids", "attention_mask", "token_type_ids"], version=request.param, extra_outputs=("hidden",))
    cudart = FakeCudart()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(te, "_cudart", lambda: cudart)
    return trt, cudart, {**HERE, "tensorrt": request.param}


# ---- what the int8 engine is built from ---------------------------------------------------


def test_symmetric_static_int8_is_the_graph_tensorrt_reads(qbundle):
    sym, asym = qbundle
    b = Bundle.open(sym)
    static = b.manifest.variants["int8-static"]
    assert static.details["activations"] == "int8 symmetric (calibrated)"
    assert int8_problems(b.path_of(static.file)) == []
    # and it is a working model: ONNX Runtime CPU runs it close to fp32
    ref = Predictor(b, variant="fp32").logits(TEXTS * 3)
    got = Predictor(b, variant="int8-static").logits(TEXTS * 3)
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.75 and np.abs(ref - got).max() < 0.5
    dynamic = int8_problems(b.path_of(b.manifest.variants["int8"].file))
    assert any("dynamic or QOperator" in p for p in dynamic)
    a = Bundle.open(asym)
    uint8 = int8_problems(a.path_of(a.manifest.variants["int8-static"].file))
    assert len(uint8) == 1 and "zero points" in uint8[0] and "quantize.symmetric" in uint8[0]
    # TensorRT's default without fp16: the int8 graph it reads, else fp32; CUDA always fp32
    assert b.manifest.backend_defaults == {"cuda": "fp32", "tensorrt": "int8-static"}
    assert a.manifest.backend_defaults == {"cuda": "fp32", "tensorrt": "fp32"}


def test_plan_picks_a_source_and_flags_for_each_engine(qbundle):
    sym, asym = qbundle
    profile = profile_from_lengths([5, 9, 12], 64)
    plans = {p.name: p for p in plan_engines(Bundle.open(sym), ["fp16", "int8", "fp32"], profile, workspace_gib=2)}
    assert (plans["fp16"].source, plans["fp16"].flags) == ("fp32", ("FP16",))
    assert (plans["int8"].source, plans["int8"].flags) == ("int8-static", ("INT8", "FP16"))
    assert (plans["fp32"].source, plans["fp32"].flags) == ("fp32", ())
    assert plans["fp16"].workspace_bytes == 2 * 2**30 and plans["fp16"].inputs == ["input_ids", "attention_mask", "token_type_ids"]
    with pytest.raises(
        RecipeError, match=r"no int8 variant TensorRT can build from \(int8-static: .*zero points.*--mode static --symmetric"
    ):
        plan_engines(Bundle.open(asym), ["int8"], profile)
    gen = Bundle.open(sym)
    gen.manifest.task = "text-generation"
    with pytest.raises(RecipeError, match="encoder bundles"):
        plan_engines(gen, ["fp16"], profile)


# ---- the optimization profile ---------------------------------------------------------------


def test_profile_comes_from_training_text_lengths(qbundle):
    assert profile_from_lengths([5, 7, 9, 12, 40], 128).seq == (1, 16, 64)  # median 9 -> 16; longest 40 -> 64
    assert profile_from_lengths([100, 120], 128).seq == (1, 112, 128)  # the longest is capped at max_length
    assert profile_from_lengths([], 128, batch=(1, 8, 32)).to_json() == {"batch": [1, 8, 32], "seq": [1, 128, 128]}
    assert profile_from_lengths([5], 128, seq=(4, 32, 96)).seq == (4, 32, 96)  # the recipe's wins
    with pytest.raises(RecipeError, match="over the bundle's max_length 128"):
        profile_from_lengths([5], 128, seq=(1, 64, 256))
    b = Bundle.open(qbundle[0])
    lengths = token_lengths(b, TEXTS)
    p = Predictor(b, variant="fp32")
    assert lengths == [int(p.encode([t])["attention_mask"].sum()) for t in TEXTS]  # the runtime's own tokenization


# ---- fingerprints, the manifest contract, the profile at run time ----------------------------


def test_fingerprint_mismatch_names_each_difference_and_the_rebuild_command():
    built = {**HERE, "driver": "550.1"}
    assert te.fingerprint_mismatch(built, HERE) == []  # another driver is fine
    other = {**HERE, "gpu": "NVIDIA A10", "compute_capability": "8.6"}
    problems = te.fingerprint_mismatch(other, HERE)
    assert problems == ["compute_capability '9.0' here, '8.6' in the engine", "gpu 'Fake GPU' here, 'NVIDIA A10' in the engine"]
    spec = te.EngineSpec("fp16", "engines/model.fp16.plan", "fp16", "fp32", te.Profile((1, 1, 8), (1, 16, 64)), other)
    msg = te.refusal(spec, "runs/x/bundle", problems)
    assert "ftexport export --trt --bundle runs/x/bundle" in msg and "fallback='cuda'" in msg and "\n" not in msg


def _with_engine(src: Path, dst: Path, fingerprint: dict, profile=None, **extra) -> Path:
    """A copy of the bundle with one engine entry (its bytes are not an engine: the manifest is the subject)."""
    shutil.copytree(src, dst)
    (dst / "engines").mkdir()
    (dst / "engines" / "model.fp16.plan").write_bytes(b"ENGINE:FP16")
    m = json.loads((dst / "manifest.json").read_text())
    m["engines"] = {
        "fp16": {
            "file": "engines/model.fp16.plan",
            "precision": "fp16",
            "source": "fp32",
            "profile": profile or {"batch": [1, 1, 4], "seq": [1, 16, 32]},
            "fingerprint": fingerprint,
            **extra,
        }
    }
    m["files"]["engines/model.fp16.plan"] = sha256_file(dst / "engines" / "model.fp16.plan")
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_manifest_engines_are_checked_like_every_other_file(qbundle, tmp_path):
    b = _with_engine(qbundle[0], tmp_path / "b", HERE)
    spec = Bundle.open(b).manifest.engines["fp16"]
    assert spec.profile.seq == (1, 16, 32) and spec.on_longer == "error" and spec.source == "fp32"
    (b / "engines" / "model.fp16.plan").write_bytes(b"ENGINE:TAMPERED")
    with pytest.raises(BundleError, match="'engines/model.fp16.plan' was modified after the bundle was packed"):
        Bundle.open(b)
    bad = [
        ({"source": "int4"}, "source 'int4' is not one of the variants"),
        ({"file": "../x.plan"}, "escapes the bundle directory"),
        ({"profile": {"batch": [4, 1, 8], "seq": [1, 2, 3]}}, "need 1 <= min <= opt <= max"),
        ({"fingerprint": {"gpu": "x"}}, "fingerprint must give tensorrt"),
        ({"on_longer": "split"}, "on_longer must be one of error, truncate"),
    ]
    for i, (change, message) in enumerate(bad):
        d = _with_engine(qbundle[0], tmp_path / f"bad{i}", HERE)
        m = json.loads((d / "manifest.json").read_text())
        m["engines"]["fp16"].update(change)
        (d / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
            Bundle.open(d)


def test_batches_outside_the_profile_are_refused_before_tensorrt():
    spec = te.EngineSpec("fp16", "f", "fp16", "fp32", te.Profile((1, 1, 4), (2, 16, 32)), HERE)
    ok = {"input_ids": np.ones((4, 32), np.int64)}
    te.check_batch(spec, ok)
    with pytest.raises(PredictError, match=r"a text is 33 tokens but TensorRT engine 'fp16' accepts at most 32 .*on_longer: truncate"):
        te.check_batch(spec, {"input_ids": np.ones((1, 33), np.int64)})
    with pytest.raises(PredictError, match="batch 5 x 8 tokens is outside its profile"):
        te.check_batch(spec, {"input_ids": np.ones((5, 8), np.int64)})
    with pytest.raises(PredictError, match="batch 1 x 1 tokens is outside"):
        te.check_batch(spec, {"input_ids": np.ones((1, 1), np.int64)})


# ---- the runtime's tensorrt backend --------------------------------------------------------


def _ort_cuda_reason() -> str | None:
    """Why ONNX Runtime cannot run on a CUDA GPU here; None where it can."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    try:
        import torch
    except ImportError:
        return "torch is not installed (it tells whether a CUDA GPU is present)"
    return None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"


def _trt_reason() -> str | None:
    """Why this machine cannot run TensorRT engines; None where it can."""
    for module, package in (("tensorrt", "tensorrt"), ("cuda", "cuda-bindings")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install 'ftexport-runtime[trt]' --extra-index-url https://pypi.nvidia.com)"
    try:
        import torch
    except ImportError:
        return "torch is not installed (it tells whether a CUDA GPU is present)"
    return None if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"


def _check_fallback_to_cuda(b: Path) -> None:
    """fallback="cuda" runs the engine's ONNX model on ONNX Runtime CUDA where that works, and
    names what is missing where it does not."""
    import onnxruntime as ort

    if _ort_cuda_reason() is None:
        p = Predictor.from_bundle(b, backend="tensorrt", fallback="cuda")
        assert p.engine is None and p.backend.name == "cuda" and p.providers[0] == "CUDAExecutionProvider"
        assert p.variant.name == "fp32" and p.fallback_reason  # the engine's source variant, and why
        ref = Predictor.from_bundle(b, variant="fp32").logits(TEXTS)
        assert np.abs(p.logits(TEXTS) - ref).max() < 1e-3
    else:
        missing = "CUDAExecutionProvider" not in ort.get_available_providers()
        with pytest.raises(BackendUnavailable, match="backend 'cuda' needs CUDAExecutionProvider" if missing else "CUDAExecutionProvider"):
            Predictor.from_bundle(b, backend="tensorrt", fallback="cuda")


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None,
    reason="tensorrt is installed here: test_with_tensorrt_an_engine_from_another_machine_is_refused_or_falls_back",
)
def test_without_tensorrt_an_engine_is_refused_or_falls_back_only_when_asked(qbundle, tmp_path):
    b = _with_engine(qbundle[0], tmp_path / "b", HERE)
    with pytest.raises(BackendUnavailable, match=r"tensorrt package is not installed; pip install 'ftexport-runtime\[trt\]'"):
        Predictor.from_bundle(b, backend="tensorrt")
    # asked to fall back, it goes to ONNX Runtime CUDA: it runs there, or the error says what is missing
    _check_fallback_to_cuda(b)
    with pytest.raises(BundleError, match=r"no TensorRT engine 'int8' in this bundle \(it has: fp16\)"):
        Predictor.from_bundle(b, backend="tensorrt", variant="int8")
    with pytest.raises(PredictError, match="fallback must be None or 'cuda'"):
        Predictor.from_bundle(b, backend="tensorrt", fallback="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(_trt_reason() is not None, reason=_trt_reason() or "")
def test_with_tensorrt_an_engine_from_another_machine_is_refused_or_falls_back(qbundle, tmp_path):
    """The counterpart where TensorRT is installed: the engine's fingerprint (a fake GPU) is
    not this machine's, so it is refused before TensorRT reads it, naming the rebuild."""
    b = _with_engine(qbundle[0], tmp_path / "b", HERE)
    with pytest.raises(BackendUnavailable, match=rf"built for another machine .*ftexport export --trt --bundle {b}"):
        Predictor.from_bundle(b, backend="tensorrt")
    _check_fallback_to_cuda(b)
    with pytest.raises(BundleError, match=r"no TensorRT engine 'int8' in this bundle \(it has: fp16\)"):
        Predictor.from_bundle(b, backend="tensorrt", variant="int8")


def test_an_engine_from_another_gpu_is_refused_with_the_rebuild_command(qbundle, tmp_path, fake_gpu):
    b = _with_engine(qbundle[0], tmp_path / "b", {**HERE, "gpu": "NVIDIA A10", "compute_capability": "8.6"})
    with pytest.raises(
        BackendUnavailable,
        match=rf"built for another machine \(compute_capability '9.0' here, '8.6' in the engine; .*ftexport export --trt --bundle {b}",
    ):
        Predictor.from_bundle(b, backend="tensorrt")
    from ftexport.judge.runners import engine_skip_reason

    assert "engine built for another machine: compute_capability" in engine_skip_reason(Bundle.open(b), "fp16")
    assert "has no TensorRT engine 'int8'" in engine_skip_reason(Bundle.open(b), "int8")


def test_engine_runner_moves_batches_through_device_memory(qbundle, tmp_path, fake_gpu):
    """With the doubles, Predictor(backend=tensorrt) tokenizes, casts int64 ids to the engine's
    int32, copies to and from 'device' buffers and returns the fake engine's sums exactly."""
    trt, cudart = fake_gpu
    b = _with_engine(qbundle[0], tmp_path / "b", HERE, profile={"batch": [1, 1, 2], "seq": [1, 8, 12]}, on_longer="truncate")
    p = Predictor.from_bundle(b, backend="tensorrt")
    assert p.engine is not None and p.providers == [f"TensorRT engine fp16 ({FAKE_VERSION})"] and p.variant.precision == "fp16"
    assert p.max_batch == 2 and p.max_length == 12  # the profile's max batch; truncate: texts cut to its max tokens
    texts = TEXTS + ["the film is good and the cast is great and the music is lovely and the end is fine"]
    got = p.logits(texts)
    ref = Predictor(Bundle.open(b), variant="fp32")
    ref.tokenizer.enable_truncation(max_length=12)
    for row, text in zip(got, texts):
        feeds = ref.encode([text])
        assert row[0] == feeds["input_ids"].sum() and row[1] == feeds["attention_mask"].sum() <= 12
    assert cudart.mallocs <= 8  # buffers grow and are reused, not allocated per call
    p.logits(texts)
    assert cudart.mallocs <= 8
    # on_longer: error (the default): the same long text is refused, naming the fix
    b2 = _with_engine(qbundle[0], tmp_path / "b2", HERE, profile={"batch": [1, 1, 2], "seq": [1, 8, 12]})
    with pytest.raises(PredictError, match="accepts at most 12"):
        Predictor.from_bundle(b2, backend="tensorrt").predict(texts[-1:])


# ---- building ------------------------------------------------------------------------------


def test_builder_makes_the_tensorrt_calls_the_plan_asks_for(qbundle, tmp_path):
    b = Bundle.open(qbundle[0])
    profile = te.Profile((1, 2, 8), (1, 16, 48))
    plan = plan_engines(b, ["int8"], profile, workspace_gib=1)[0]
    trt = fake_tensorrt(["input_ids", "attention_mask", "token_type_ids"])
    engine, cache = build_engine(trt, plan, b"old-cache")
    assert engine == b"ENGINE:INT8,FP16" and cache == b"old-cache+tuned"
    assert ("timing_cache_in", b"old-cache") in trt.calls and ("workspace", 2**30) in trt.calls
    shapes = [c for c in trt.calls if c[0] == "set_shape"]
    assert shapes == [("set_shape", n, (1, 1), (2, 16), (8, 48)) for n in ("input_ids", "attention_mask", "token_type_ids")]
    with pytest.raises(BundleError, match="TensorRT's ONNX parser refused it \\(unsupported op Foo; shape bar\\)"):
        build_engine(fake_tensorrt(["input_ids"], parse_errors=["unsupported op Foo", "shape bar"]), plan, None)
    with pytest.raises(BundleError, match="could not build a int8 engine"):
        build_engine(fake_tensorrt(["input_ids", "attention_mask", "token_type_ids"], fail_build=True), plan, None)
    with pytest.raises(BundleError, match="input 'pixel_values' is not one of the bundle's inputs"):
        build_engine(fake_tensorrt(["pixel_values"]), plan, None)


def test_build_engines_writes_a_verified_bundle_and_a_timing_cache(qbundle, tmp_path, fake_gpu):
    trt, _ = fake_gpu
    src = tmp_path / "src"
    shutil.copytree(qbundle[0], src)
    before = json.loads((src / "manifest.json").read_text())
    manifest = build_engines(src, tmp_path / "out", ["fp16", "int8"], TEXTS * 10, batch=(1, 1, 16))
    out = Bundle.open(tmp_path / "out")  # every file, engines included, verified
    assert set(out.manifest.engines) == {"fp16", "int8"} == set(manifest.engines)
    e = out.manifest.engines["int8"]
    assert e.fingerprint == HERE and e.source == "int8-static" and e.details["flags"] == ["INT8", "FP16"]
    assert e.profile.batch == (1, 1, 16) and e.profile.seq[2] == 32 and "40 training texts" in e.details["profile_from"]
    assert (tmp_path / "out" / "engines" / "model.int8.plan").read_bytes() == b"ENGINE:INT8,FP16"
    assert json.loads((src / "manifest.json").read_text()) == before  # the source bundle is untouched
    cache = timing_cache_path(tmp_path / "out")
    assert cache.read_bytes() == b"+tuned+tuned"  # fp16 then int8, each adding to the cache
    # a rebuild in place (a new GPU) starts from the cache beside the bundle
    trt.calls.clear()
    build_engines(tmp_path / "out", None, ["fp16"], None, seq=(1, 8, 16))
    assert ("timing_cache_in", b"+tuned+tuned") in trt.calls
    again = Bundle.open(tmp_path / "out").manifest.engines
    assert again["fp16"].profile.seq == (1, 8, 16) and set(again) == {"fp16", "int8"}


def test_each_release_gets_the_precision_it_can_build(qbundle, tmp_path, fake_release):
    """TensorRT 11 has no BuilderFlag.FP16/INT8 (setting them was an AttributeError after the
    whole export): from 10.12 on the fp16 engine is built from an fp16 cast graph and the int8
    one from the Q/DQ graph, both without flags, on a strongly typed network; the manifest
    says which way built each engine and with which TensorRT."""
    trt, _, here = fake_release
    strong = trt.__version__ != FAKE_VERSION
    assert build_mode(trt) == (STRONGLY_TYPED if strong else FLAGS)
    assert hasattr(trt.BuilderFlag, "FP16") == (trt.__version__ != TRT11_VERSION)  # the double is each release
    src = tmp_path / "src"
    shutil.copytree(qbundle[0], src)
    manifest = build_engines(src, tmp_path / "out", ["fp16", "int8"], TEXTS * 10, batch=(1, 1, 8))
    parsed = [Path(c[1]).name for c in trt.calls if c[0] == "parse"]
    builds = [c[1] for c in trt.calls if c[0] == "build"]
    networks = [c[1] for c in trt.calls if c[0] == "network"]
    fp16, int8 = manifest.engines["fp16"], manifest.engines["int8"]
    if strong:
        assert parsed == ["fp32.fp16-cast.onnx", "model.int8-static.onnx"] and builds == [(), ()]
        assert networks == ["strongly-typed", "strongly-typed"]
        assert (
            fp16.details["build"] == STRONGLY_TYPED
            and fp16.details["graph"].startswith("fp16 cast of fp32")
            and fp16.details["flags"] == []
        )
    else:
        assert parsed == ["model.onnx", "model.int8-static.onnx"] and builds == [("FP16",), ("INT8", "FP16")]
        assert networks == ["weakly-typed", "weakly-typed"]
        assert fp16.details["build"] == FLAGS and fp16.details["graph"] == "fp32" and fp16.details["flags"] == ["FP16"]
    assert (fp16.source, int8.source, int8.details["graph"]) == ("fp32", "int8-static", "int8-static")
    assert fp16.details["tensorrt"] == int8.details["tensorrt"] == trt.__version__ == fp16.fingerprint["tensorrt"]
    out = Bundle.open(tmp_path / "out")  # every file verified; the cast graph was a build input, not shipped
    assert not [f for f in out.manifest.files if "cast" in f] and not list((tmp_path / "out").rglob("*cast*"))
    # the runtime runs what was built, on every release
    p = Predictor.from_bundle(tmp_path / "out", backend="tensorrt", variant="int8")
    assert p.engine is not None and p.logits(TEXTS[:2]).shape == (2, 2)


def test_the_double_refuses_what_each_release_refuses(qbundle):
    """Flags on TensorRT 11 (no such attribute) and flags on a strongly typed network (an error
    at build) are refused by the doubles as by TensorRT, and the builder says what to do."""
    b = Bundle.open(qbundle[0])
    profile = te.Profile((1, 1, 8), (1, 16, 32))
    flagged = plan_engines(b, ["fp16"], profile)[0]
    with pytest.raises(BundleError, match=r"TensorRT 11.4.0-fake has no builder flag FP16 .*strongly-typed"):
        build_engine(fake_tensorrt(["input_ids", "attention_mask", "token_type_ids"], version=TRT11_VERSION), flagged, None)
    strong_with_flags = plan_engines(b, ["fp16"], profile, build=STRONGLY_TYPED)[0]
    assert strong_with_flags.flags == () and strong_with_flags.cast_fp16
    trt = fake_tensorrt(["input_ids", "attention_mask", "token_type_ids"], version=TRT10_STRONG_VERSION)
    from dataclasses import replace

    with pytest.raises(BundleError, match="could not build a fp16 engine"):
        build_engine(trt, replace(strong_with_flags, flags=("FP16",)), None)
    assert any("not allowed" in line for line in trt.log)
    with pytest.raises(ValueError, match="build must be"):
        plan_engines(b, ["fp16"], profile, build="weak")


def test_fp16_cast_is_a_graph_tensorrt_reads_and_close_to_fp32(qbundle, tmp_path):
    """The strongly typed fp16 engine's source, for real on ONNX Runtime CPU: standard ONNX ops
    only (no ONNX Runtime contrib ops, unlike the O4 graph), fp16 weights, fp32 inputs and
    outputs, LayerNorm kept in fp32, and the same answers as fp32."""
    import onnx

    b = Bundle.open(qbundle[0])
    cast = fp16_cast(b.path_of(b.manifest.variants["fp32"].file), tmp_path / "cast.onnx")
    model = onnx.load(str(cast))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    weights = [t.data_type for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert weights.count(onnx.TensorProto.FLOAT16) > weights.count(onnx.TensorProto.FLOAT)
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert norms
    for node in norms:  # fed by a Cast to fp32
        producers = [m for m in model.graph.node if node.input[0] in m.output]
        assert producers and producers[0].op_type == "Cast" and producers[0].attribute[0].i == onnx.TensorProto.FLOAT
    import onnxruntime as ort

    p = Predictor(b, variant="fp32")
    feeds = p.encode(TEXTS * 2)
    ref = p.run(feeds)
    got = ort.InferenceSession(str(cast), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.dtype == np.float32 and np.abs(ref - got).max() < 0.02 and (ref.argmax(-1) == got.argmax(-1)).all()


@pytest.mark.parametrize("version", RELEASES)
@pytest.mark.parametrize("bad", ["foreign", "corrupt"])
def test_a_timing_cache_tensorrt_cannot_use_is_reported_and_replaced(qbundle, tmp_path, version, bad, capsys):
    """set_timing_cache(..., ignore_mismatch=False) returns False for another GPU's cache and
    attaches nothing (get_timing_cache() is then None: serializing it raised after the whole
    build, losing the engine); a corrupt cache cannot even be created. Either way: one line,
    a fresh cache, and the engine."""
    from ftexport.core import progress

    progress.set_quiet(False)
    b = Bundle.open(qbundle[0])
    plan = plan_engines(b, ["int8"], te.Profile((1, 1, 8), (1, 16, 32)), build=STRONGLY_TYPED if version != FAKE_VERSION else FLAGS)[0]
    trt = fake_tensorrt(["input_ids", "attention_mask", "token_type_ids"], version=version)
    old = foreign_cache() if bad == "foreign" else CORRUPT_CACHE
    engine, cache = build_engine(trt, plan, old, "B.timing.cache")
    assert engine.startswith(b"ENGINE:") and cache == b"+tuned"  # a fresh cache, tuned by this build
    assert [c for c in trt.calls if c[0] == "timing_cache_in"] == [("timing_cache_in", old), ("timing_cache_in", b"")]
    lines = [line for line in capsys.readouterr().err.splitlines() if "B.timing.cache" in line]
    why = "made on another GPU or TensorRT version" if bad == "foreign" else "unreadable"
    assert len(lines) == 1 and why in lines[0] and "starting a fresh timing cache" in lines[0]
    # through build_engines: the foreign cache beside the bundle is replaced by this GPU's
    src = tmp_path / "src"
    shutil.copytree(qbundle[0], src)
    timing_cache_path(tmp_path / "out").write_bytes(old)
    monkey = pytest.MonkeyPatch()
    try:
        monkey.setitem(sys.modules, "tensorrt", trt)
        monkey.setattr(te, "_cudart", lambda: FakeCudart())
        build_engines(src, tmp_path / "out", ["fp16", "int8"], None, seq=(1, 8, 16))
    finally:
        monkey.undo()
    assert timing_cache_path(tmp_path / "out").read_bytes() == b"+tuned+tuned"
    assert set(Bundle.open(tmp_path / "out").manifest.engines) == {"fp16", "int8"}


def test_engine_runner_addresses_every_output_and_destroys_its_stream(qbundle, tmp_path, fake_release):
    """TensorRT runs only when every output has an address (the engine here has a second
    output besides the logits); close() frees the buffers and destroys the CUDA stream, once."""
    trt, cudart, here = fake_release
    b = _with_engine(qbundle[0], tmp_path / "b", here, profile={"batch": [1, 1, 4], "seq": [1, 8, 32]})
    p = Predictor.from_bundle(b, backend="tensorrt")
    runner = p.engine
    assert runner.outputs == ["logits", "hidden"] and p.providers == [f"TensorRT engine fp16 ({trt.__version__})"]
    got = p.logits(TEXTS)
    ref = Predictor(Bundle.open(b), variant="fp32")
    for row, text in zip(got, TEXTS):
        feeds = ref.encode([text])
        assert row[0] == feeds["input_ids"].sum() and row[1] == feeds["attention_mask"].sum()
    assert "hidden" in runner._buffers and runner.context.addresses["hidden"] == runner._buffers["hidden"][0]
    stream = runner.stream
    assert cudart.streams == {stream}
    runner.close()
    assert cudart.streams == set() and cudart.destroyed == [stream] and not cudart.buffers
    runner.close()  # a second close (and __del__ after it) does nothing
    assert cudart.destroyed == [stream]
    with pytest.raises(PredictError, match="was closed"):
        p.logits(TEXTS[:1])


# ---- versions that fit together (ftexport doctor) ----------------------------------------


def test_doctor_names_the_combination_and_what_does_not_fit():
    """The supported combinations (docs/tensorrt.md): CUDA 13 = onnxruntime-gpu 1.27+, TensorRT
    11 (tensorrt-cu13), cuda-bindings 13.x, driver r580+; CUDA 12 = onnxruntime-gpu 1.22-1.26,
    TensorRT 10.9+ (tensorrt-cu12), cuda-bindings 12.6+, driver r535+. doctor names the one it
    finds and each package or driver that does not fit, with the pip line that fixes it."""
    from ftexport.doctor import STACKS, check_stack

    cu13 = {"onnxruntime-gpu": "1.31.1", "cuda-bindings": "13.5.0", "onnxruntime": None}
    ok = check_stack(cu13, {"tensorrt": "11.4.0.106", "tensorrt-cu13": "11.4.0.106"}, "580.65.06")
    assert ok == {"stack": "CUDA 13", "combination": ok["combination"], "problems": []}
    assert ok["combination"].startswith("CUDA 13 (onnxruntime-gpu 1.31.1, tensorrt-cu13 11.4.0.106, cuda-bindings 13.5.0, driver 580")
    cu12 = check_stack({"onnxruntime-gpu": "1.26.0", "cuda-bindings": "12.9.2"}, {"tensorrt-cu12": "10.15.1"}, "550.54.15")
    assert cu12["stack"] == "CUDA 12" and cu12["problems"] == []

    def problems(packages, trt, driver, provider=None):
        return check_stack({**cu13, **packages}, trt, driver, provider)["problems"]

    # the cases: a driver too old for the CUDA 13 runtime; TensorRT 10 beside onnxruntime-gpu 1.27+
    (old,) = problems({}, {"tensorrt-cu13": "11.4.0"}, "550.54.15")
    assert "driver 550.54.15 is too old for the CUDA 13 runtime" in old and "r580+" in old and "ftexport[gpu-cu12,trt-cu12]" in old
    (ten,) = problems({}, {"tensorrt-cu13": "10.13.0"}, "580.1")
    assert "tensorrt 10.13.0 does not fit the CUDA 13 combination" in ten and "libnvinfer.so.11" in ten and "tensorrt-cu13>=11.0,<12" in ten
    (flavour,) = problems({}, {"tensorrt-cu12": "11.4.0"}, "580.1")
    assert "tensorrt-cu12 is built for CUDA 12, the rest for CUDA 13" in flavour
    (bindings,) = problems({"cuda-bindings": "12.9.2"}, {"tensorrt-cu13": "11.4.0"}, "580.1")
    assert "cuda-bindings 12.9.2 links the CUDA 12 runtime" in bindings and "cuda-bindings>=13.0,<14" in bindings
    (both,) = problems({"onnxruntime": "1.31.1"}, {"tensorrt-cu13": "11.4.0"}, "580.1")
    assert "both installed" in both and "pip uninstall -y onnxruntime" in both
    (lib,) = problems({}, {"tensorrt-cu13": "11.4.0"}, "580.1", "ONNX Runtime's TensorRT provider cannot load (libnvinfer.so.11: ...)")
    assert "libnvinfer.so.11" in lib
    missing = problems({"cuda-bindings": None}, {}, None)
    assert any("tensorrt is not installed" in m for m in missing) and any("cuda-bindings is not installed" in m for m in missing)
    assert any("no NVIDIA driver answers" in m for m in missing)
    (ancient,) = check_stack({"onnxruntime-gpu": "1.20.1", "cuda-bindings": "12.6.0"}, {"tensorrt-cu12": "10.9.0"}, "550.1")["problems"]
    assert "onnxruntime-gpu 1.20.1 is in no supported combination" in ancient  # >=1.20 admitted CUDA 12 wheels built for TensorRT 10.4
    assert check_stack({}, {}, None)["problems"] == [] and check_stack({}, {}, None)["stack"] is None
    assert STACKS[0].pins() == {"onnxruntime-gpu": ">=1.27,<2", "tensorrt-cu13": ">=11.0,<12", "cuda-bindings": ">=13.0,<14"}


def test_the_extras_and_dockerfiles_pin_the_supported_combinations():
    """pyproject extras, runtime extras and the CUDA base images say the same as doctor's STACKS."""
    import re

    from ftexport.doctor import STACKS

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(__file__).resolve().parents[1]
    cu13, cu12 = STACKS
    for pyproject in (root / "pyproject.toml", root / "runtime" / "pyproject.toml"):
        extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
        assert extras["gpu"] == ["onnxruntime-gpu>=1.27,<2"] and extras["gpu-cu12"] == ["onnxruntime-gpu>=1.22,<1.27"]
        for extra, stack in (("trt", cu13), ("trt-cu12", cu12)):
            assert sorted(extras[extra]) == sorted(f"{name}{pin}" for name, pin in stack.pins().items()), (pyproject, extra)
    for dockerfile in ("runtime-gpu.Dockerfile", "train.Dockerfile"):
        text = (root / "docker" / dockerfile).read_text()
        assert f"ARG CUDA_IMAGE={cu13.image}" in text, dockerfile
        assert re.search(r"tensorrt_libs", text) or dockerfile == "runtime-gpu.Dockerfile" and "RUNTIME_EXTRAS" in text


# ---- the command line -----------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here: tests/test_gpu.py builds real engines"
)
def test_trt_without_tensorrt_is_one_line_and_exit_2(qbundle, tmp_path, tiny_run):
    runner = CliRunner()
    for args in (
        ["export", "--trt", "--bundle", str(qbundle[0])],
        ["export", str(tiny_run[1].root / "merged"), "-o", str(tmp_path / "o"), "--trt"],
    ):
        out = runner.invoke(main, ["-q", *args])
        assert out.exit_code == 2, out.output
        assert (
            out.output.strip()
            == "error: export --trt: the tensorrt package is not installed; pip install 'ftexport[trt]' --extra-index-url https://pypi.nvidia.com"
        )
    assert not (tmp_path / "o").exists()  # refused before exporting anything
    out = runner.invoke(main, ["-q", "export", "--bundle", str(qbundle[0])])
    assert out.exit_code == 2 and "give --trt too" in out.output


def test_export_trt_checks_its_options_before_exporting(fake_gpu, tiny_run, tmp_path):
    """export MODEL -o OUT --trt: a bad --batch, a missing --recipe or --set without one fails
    before the minutes-long ONNX export, not after it with OUT left without engines."""
    merged, out_dir = str(tiny_run[1].root / "merged"), tmp_path / "o"
    for extra, says in [
        (["--batch", "1,x,8"], "--batch"),
        (["--recipe", str(tmp_path / "typo.yaml")], "typo.yaml: recipe file not found"),
    ]:
        out = CliRunner().invoke(main, ["-q", "export", merged, "-o", str(out_dir), "--trt", *extra])
        assert out.exit_code == 2 and says in out.output and len(out.output.strip().splitlines()) == 1, out.output
        assert not out_dir.exists()
    out = CliRunner().invoke(main, ["-q", "export", merged, "-o", str(out_dir), "--set", "tensorrt.precisions=[fp16]"])
    assert out.exit_code == 2 and "are TensorRT options; add --trt" in out.output and not out_dir.exists()


def test_recipe_tensorrt_section(recipe_file, tmp_path):
    runner = CliRunner()
    path = recipe_file(tensorrt__enabled=True, tensorrt__precisions=["int8"])
    out = runner.invoke(main, ["-q", "run", str(path)])
    assert out.exit_code == 2 and "add static to quantize.modes and set quantize.symmetric: true" in out.output
    path = recipe_file(tensorrt__enabled=True, tensorrt__seq="1,64,32")
    out = runner.invoke(main, ["-q", "run", str(path)])
    assert out.exit_code == 2 and "recipe.tensorrt.seq" in out.output and "1 <= min <= opt <= max" in out.output
    if importlib.util.find_spec("tensorrt") is None:  # where it is installed, test_gpu.py builds real engines
        path = recipe_file(tensorrt__enabled=True)
        out = runner.invoke(main, ["-q", "run", str(path)])
        assert out.exit_code == 2 and "tensorrt package is not installed" in out.output
        assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("**/train"))  # refused before training


def test_doctor_names_tensorrt_when_its_provider_falls_back(monkeypatch):
    """Seen on an H200 with onnxruntime-gpu and no TensorRT: the TensorRT provider is listed, the
    session falls back to the CPU, and the reason given must be TensorRT's libraries, not CUDA's."""
    import onnxruntime as ort

    from ftexport.doctor import probe_provider

    class FellBack:
        def __init__(self, path, providers):
            pass

        def run(self, *a):
            return None

        def get_providers(self):
            return ["CPUExecutionProvider"]

    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    monkeypatch.setattr(ort, "InferenceSession", FellBack)
    monkeypatch.setattr(ort, "preload_dlls", lambda: None, raising=False)
    ok, why = probe_provider("TensorrtExecutionProvider")
    assert not ok and "TensorRT's libraries" in why and "cuDNN" not in why
    ok, why = probe_provider("CUDAExecutionProvider")
    assert not ok and "CUDA or cuDNN" in why
