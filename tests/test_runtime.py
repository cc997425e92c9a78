"""ftexport-runtime: torch-free, verifies what it loads, refuses bad bundles and bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from ftexport_runtime import BackendUnavailable, Bundle, BundleError, PredictError, Predictor
from ftexport_runtime.bundle import make_tarball


def copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def test_import_and_predict_never_import_torch(bundle):
    code = (
        "import sys\n"
        "from ftexport_runtime import Predictor\n"
        f"p = Predictor.from_bundle({str(bundle)!r})\n"
        "print(p.predict(['a wonderful , moving film'])[0].label)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'optimum', 'peft') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() in ("negative", "positive")


def test_predictions_match_labels_and_scores(bundle, tiny_run):
    p = Predictor.from_bundle(bundle)
    preds = p.predict(["the film is wonderful and moving", "the plot is dull and tedious"])
    assert [x.label for x in preds] == ["positive", "negative"]  # the tiny model learned the task
    for x in preds:
        assert 0.5 <= x.score <= 1.0
        assert abs(sum(x.scores.values()) - 1.0) < 1e-6
        assert x.scores[x.label] == x.score


def test_default_variant_is_int8_and_fp32_selectable(bundle):
    assert Predictor.from_bundle(bundle).variant.precision == "int8"
    p32 = Predictor.from_bundle(bundle, variant="fp32")
    assert p32.variant.file == "model.onnx"
    with pytest.raises(BundleError, match=r"no variant 'fp16' in this bundle \(it has: fp32, int8\)"):
        Predictor.from_bundle(bundle, variant="fp16")


def test_batches_larger_than_max_batch_are_split(bundle):
    texts = [f"the movie is {'good' if i % 2 else 'bad'}" for i in range(13)]
    whole = Predictor.from_bundle(bundle, variant="fp32", max_batch=64).logits(texts)
    split = Predictor.from_bundle(bundle, variant="fp32", max_batch=4).logits(texts)
    assert whole.shape == (13, 2)
    np.testing.assert_allclose(whole, split, atol=1e-5)


def test_overlong_text_is_truncated_to_max_length(bundle):
    p = Predictor.from_bundle(bundle)
    enc = p.encode(["good " * 500])
    assert enc["input_ids"].shape == (1, p.max_length)
    assert p.predict(["good " * 500])[0].label in p.labels


@pytest.mark.parametrize(
    "texts, message",
    [
        ([], "empty list of texts"),
        ("just a string", "takes a list of texts, got a single string"),
        (["ok", 3], "text #1 is a int, not a string"),
    ],
)
def test_bad_predict_input(bundle, texts, message):
    with pytest.raises(PredictError, match=message):
        Predictor.from_bundle(bundle).predict(texts)


def test_tampered_file_is_refused(bundle, tmp_path):
    b = copy(bundle, tmp_path)
    with open(b / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(BundleError, match=r"'tokenizer\.json' was modified after the bundle was packed \(sha256 mismatch\)"):
        Predictor.from_bundle(b)


def test_verify_used_hashes_only_the_files_it_loads(bundle, tmp_path):
    """By default every file is checked; verify="used" checks what it loads (the chosen variant
    and the tokenizer) before loading it, and nothing else."""
    b = copy(bundle, tmp_path)
    with open(b / "model.onnx", "ab") as f:  # the fp32 variant; the CPU default is int8
        f.write(b"x")
    p = Predictor.from_bundle(b, verify="used")
    assert p.variant.name == "int8" and p.predict(["a good film"])[0].label in ("positive", "negative")
    with pytest.raises(BundleError, match=r"'model\.onnx' was modified"):
        Predictor.from_bundle(b)
    with pytest.raises(BundleError, match=r"'model\.onnx' was modified"):
        Predictor.from_bundle(b, variant="fp32", verify="used")
    with pytest.raises(PredictError, match="verify must be"):
        Predictor.from_bundle(b, verify="some")


@pytest.mark.parametrize("verify", ["all", "used"])
def test_the_bytes_checked_are_the_bytes_loaded(bundle, tmp_path, monkeypatch, verify):
    """A file swapped on disk right after its hash was checked is not what gets loaded: the
    Predictor runs the bytes it verified, not a second read of the path."""
    b = copy(bundle, tmp_path)
    texts = ["a good film", "a dull and tedious film", "fine"]
    int8 = Predictor.from_bundle(b, variant="int8").logits(texts)
    fp32 = Predictor.from_bundle(b, variant="fp32").logits(texts)
    assert np.abs(int8 - fp32).max() > 1e-5  # the two models are told apart by their answers

    checked = Bundle._check

    def check_then_swap(self, rel, digest):
        checked(self, rel, digest)
        if rel == "model.int8.onnx":  # an attacker replaces the verified file with another valid model
            shutil.copyfile(b / "model.onnx", b / "model.int8.onnx")

    monkeypatch.setattr(Bundle, "_check", check_then_swap)
    p = Predictor.from_bundle(b, variant="int8", verify=verify)
    np.testing.assert_allclose(p.logits(texts), int8, atol=1e-6)


def test_every_file_is_checked_while_the_session_builds(bundle, tmp_path):
    """verify="all" hashes the files it does not load on a thread; from_bundle still returns
    only after they matched, and a tampered one is reported even when loading also fails."""
    b = copy(bundle, tmp_path)
    with open(b / "model.onnx", "ab") as f:  # fp32, not loaded by the CPU default (int8)
        f.write(b"x")
    with pytest.raises(BundleError, match=r"'model\.onnx' was modified"):
        Predictor.from_bundle(b)
    with pytest.raises(BundleError, match=r"'model\.onnx' was modified"):
        Predictor.from_bundle(b, variant="no-such-variant")
    with pytest.raises(BundleError, match="no variant 'no-such-variant'"):
        Predictor.from_bundle(b, variant="no-such-variant", verify="used")


def test_a_file_expected_to_load_but_not_read_is_still_checked(bundle, tmp_path, monkeypatch):
    """The split between "checked as it is read" and "checked on the thread" is a guess; when it
    names a file that is not read after all (another engine, a fallback), from_bundle checks it
    before returning."""
    b = copy(bundle, tmp_path)
    with open(b / "model.onnx", "ab") as f:  # fp32: not read by the CPU default (int8)
        f.write(b"x")
    every = staticmethod(lambda bundle, variant, backend: set(bundle.manifest.files))
    monkeypatch.setattr(Predictor, "_loaded_files", every)  # "all of them will be read": none go to the thread
    with pytest.raises(BundleError, match=r"'model\.onnx' was modified"):
        Predictor.from_bundle(b)


def test_the_session_does_not_keep_a_copy_of_the_model(bundle):
    p = Predictor.from_bundle(bundle)  # loaded from the verified bytes
    assert getattr(p.session, "_model_bytes", None) is None  # ORT would hold them for the session's life
    assert p.predict(["a good film"])[0].label in ("positive", "negative")


def test_truncated_onnx_is_refused(bundle, tmp_path):
    b = copy(bundle, tmp_path)
    data = (b / "model.int8.onnx").read_bytes()
    (b / "model.int8.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"'model\.int8\.onnx' was modified"):
        Predictor.from_bundle(b)
    # Even with a manifest rewritten to match, ONNX Runtime's refusal is one clean line.
    manifest = json.loads((b / "manifest.json").read_text())
    from ftexport_runtime.bundle import sha256_file

    manifest["files"]["model.int8.onnx"] = sha256_file(b / "model.int8.onnx")
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"model\.int8\.onnx: ONNX Runtime cannot load this model") as e:
        Predictor.from_bundle(b)
    assert "written by onnxruntime" not in str(e.value)  # this runtime's version wrote the graph
    # A graph that a newer onnxruntime wrote (quantize stores ORT's rewrite) fails with the way out.
    assert manifest["variants"]["int8"]["details"]["ort_graph"]["onnxruntime"]
    manifest["variants"]["int8"]["details"]["ort_graph"]["onnxruntime"] = "99.1.0"
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        BundleError,
        match=r"cannot load this model \(.*\); this graph was written by onnxruntime 99\.1\.0 and this is "
        r"[\d.]+: pip install 'onnxruntime>=99\.1\.0', or re-quantize",
    ) as e:
        Predictor.from_bundle(b)
    assert "\n" not in str(e.value)


def test_missing_file_and_unlisted_reference(bundle, tmp_path):
    b = copy(bundle, tmp_path)
    (b / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"'model\.onnx' is listed in the manifest but missing"):
        Bundle.open(b)
    b2 = copy(bundle, tmp_path / "two")
    manifest = json.loads((b2 / "manifest.json").read_text())
    del manifest["files"]["model.onnx"]
    (b2 / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"'model\.onnx' is used but has no sha256"):
        Bundle.open(b2)


@pytest.mark.parametrize("path", ["../outside.onnx", "/etc/passwd", "a/../../x"])
def test_manifest_paths_cannot_escape(bundle, tmp_path, path):
    b = copy(bundle, tmp_path)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["variants"]["fp32"]["file"] = path
    manifest["files"][path] = "0" * 64
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="escapes the bundle directory"):
        Bundle.open(b)


def test_symlink_out_of_bundle_is_refused(bundle, tmp_path):
    b = copy(bundle, tmp_path)
    outside = tmp_path / "outside.json"
    shutil.copy(b / "tokenizer.json", outside)
    (b / "tokenizer.json").unlink()
    (b / "tokenizer.json").symlink_to(outside)
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        Bundle.open(b)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        Bundle.open(tmp_path / "nothing")
    with pytest.raises(BundleError, match="not a bundle: it has no manifest.json"):
        Bundle.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        Bundle.open(tmp_path)


def test_manifest_schema_errors_name_the_field(bundle, tmp_path):
    b = copy(bundle, tmp_path)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["format_version"] = 99
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        Bundle.open(b)
    manifest["format_version"] = 1
    manifest["max_length"] = "long"
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="field 'max_length' has the wrong type"):
        Bundle.open(b)


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        (("versions",), "x", "field 'versions' must be an object, not str"),
        (("source",), [1], "field 'source' must be an object, not list"),
        (("variants", "fp32", "details"), [], "field 'variants.fp32.details' must be an object"),
        (("variants", "fp32", "extra_files"), "model.onnx", "field 'variants.fp32.extra_files' must be a list"),
        (("tokenizer", "pad_id"), "abc", "tokenizer.pad_id must be an integer token id, not 'abc'"),
    ],
)
def test_hand_edited_manifest_fields_are_one_line_errors(bundle, tmp_path, path, value, says):
    """manifest.json is the one file its own sha256 list cannot cover: every field it reads is
    type-checked, so an edit gives an error naming the field, never a traceback."""
    b = copy(bundle, tmp_path)
    manifest = json.loads((b / "manifest.json").read_text())
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=re.escape(says)):
        Bundle.open(b)


@pytest.mark.parametrize("labels", [["only"], ["negative", "neutral", "positive"]])
def test_labels_that_do_not_match_the_model_are_refused_not_misnamed(bundle, tmp_path, labels):
    """Fewer labels than the model's scores failed on an index; more named the answers wrongly."""
    b = copy(bundle, tmp_path)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["labels"] = labels
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"the model gives 2 scores per text but manifest.json names {len(labels)} labels"):
        Predictor.from_bundle(b).predict(["a fine film"])
    out = run_cli("predict", str(b), "a fine film")
    assert out.returncode != 0 and "manifest.json names" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_tarball_round_trip(bundle, tmp_path):
    archive = make_tarball(bundle, tmp_path / "b.tar.gz")
    p = Predictor.from_bundle(archive)
    assert p.predict(["good film"])[0].label in ("positive", "negative")


def test_tarball_with_escaping_member_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../../escaped.txt")
    with pytest.raises(BundleError, match="escapes the bundle directory"):
        Bundle.open(evil)
    assert not (tmp_path.parent / "escaped.txt").exists()
    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as tar:
        info = tarfile.TarInfo("b/manifest.json")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(BundleError, match="is a link or device"):
        Bundle.open(link)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftexport_runtime.cli", *args], capture_output=True, text=True)


def test_cli_predict_prints_label_and_score(bundle):
    out = run_cli("predict", str(bundle), "the film is wonderful and moving")
    assert out.returncode == 0, out.stderr
    label, score, text = out.stdout.strip().split("\t")
    assert label == "positive" and 0.5 <= float(score) <= 1 and text == "the film is wonderful and moving"
    js = run_cli("predict", str(bundle), "--json", "dull", "wonderful")
    assert [r["text"] for r in json.loads(js.stdout)] == ["dull", "wonderful"]


def test_cli_errors_are_one_line_exit_2(bundle, tmp_path):
    out = run_cli("predict", str(bundle))
    assert out.returncode == 2
    assert out.stderr.strip() == "error: no texts: give TEXT arguments or --file FILE (one text per line)"
    (tmp_path / "blank.txt").write_text("\n  \n")
    out = run_cli("predict", str(tmp_path / "nope"), "--file", str(tmp_path / "blank.txt"))  # refused before the bundle is read
    assert (out.returncode, out.stderr.strip()) == (2, f"error: --file {tmp_path / 'blank.txt'}: no texts in it (blank lines are skipped)")
    b = copy(bundle, tmp_path)
    (b / "model.onnx").write_bytes(b"garbage")
    out = run_cli("verify", str(b))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "sha256 mismatch" in out.stderr


def test_cli_info_and_verify(bundle):
    info = run_cli("info", str(bundle))
    assert info.returncode == 0 and "variant   int8: model.int8.onnx [int8] (default)" in info.stdout
    assert "parity    passed" in info.stdout
    ok = run_cli("verify", str(bundle))
    assert ok.returncode == 0 and ok.stdout.startswith("ok:")


def test_silent_gpu_fallback_is_refused(monkeypatch, bundle):
    """ORT builds a CUDA session that quietly runs on the CPU when the CUDA/cuDNN libraries
    do not load; the runtime must raise instead of running slowly."""
    import onnxruntime as ort
    from ftexport_runtime.engines import get_backend
    from ftexport_runtime.engines.ort import check_session
    from ftexport_runtime.errors import BackendUnavailable

    class FellBack:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    with pytest.raises(BackendUnavailable, match="silent fallback"):
        check_session(FellBack(), get_backend("cuda"))
    check_session(FellBack(), get_backend("cpu"))  # what was asked for: fine

    # the whole path: the provider "exists" but the session comes up on the CPU
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession

    def cpu_only(path, sess_options=None, providers=None, **kw):
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", cpu_only)
    with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider but ONNX Runtime is running on CPUExecutionProvider"):
        Predictor.from_bundle(bundle, backend="cuda")


class _Recorder:
    """ort.InferenceSession as a GPU machine would build it: records the providers asked for,
    runs on the CPU, and reports the providers it was asked for (or, with `falls_back`, the CPU
    only, as ONNX Runtime does when a GPU provider's libraries do not load)."""

    def __init__(self, monkeypatch, falls_back: bool = False):
        import onnxruntime as ort

        self.calls, self.real, self.events = [], ort.InferenceSession, []
        monkeypatch.setattr(
            ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        )
        monkeypatch.setattr(ort, "InferenceSession", self)
        self.falls_back = falls_back

    def __call__(self, model, sess_options=None, providers=None, **kw):
        self.calls.append(providers)
        self.events.append("session")
        session = self.real(model, sess_options=sess_options, providers=["CPUExecutionProvider"])
        if self.falls_back or providers == ["CPUExecutionProvider"]:
            return session
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        return type("Pretend", (), {"__getattr__": lambda _, a: getattr(session, a), "get_providers": lambda _: names})()


def test_ort_tensorrt_provider_gets_caches_profiles_and_cuda_behind_it(bundle, tmp_path, monkeypatch):
    """[TensorRT(options), CUDA, CPU], not [TensorRT, CPU] without options: CUDA takes what
    TensorRT cannot; engines and the timing cache go to a folder the user controls; one profile
    covers batch 1..max_batch and 1..max_length tokens, so serve neither rebuilds on a new
    shape nor on a restart. The default variant is one TensorRT reads (fp32 here), not the
    CPU's int8 rewrite, even in a bundle whose manifest says otherwise."""
    rec = _Recorder(monkeypatch)
    p = Predictor.from_bundle(bundle, backend="tensorrt", trt_cache=tmp_path / "cache", max_batch=16)
    assert p.providers[0] == "TensorrtExecutionProvider" and p.variant.name == "fp32" and p.engine is None
    (trt, options), *rest = rec.calls[-1]
    assert trt == "TensorrtExecutionProvider" and rest == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    engines = Path(options["trt_engine_cache_path"])
    assert options["trt_engine_cache_enable"] is True and options["trt_timing_cache_enable"] is True
    assert engines.parent == tmp_path / "cache" == Path(options["trt_timing_cache_path"]) and engines.is_dir()
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["files"]["model.onnx"][:16] in engines.name and "fp32" in engines.name  # one folder per model file
    names = m["inputs"]
    assert options["trt_profile_min_shapes"] == ",".join(f"{n}:1x1" for n in names)
    assert options["trt_profile_opt_shapes"] == ",".join(f"{n}:1x{m['max_length']}" for n in names)  # max_length 32 < 128
    assert options["trt_profile_max_shapes"] == ",".join(f"{n}:16x{m['max_length']}" for n in names)
    # the environment names the folder when the caller does not; "ort-tensorrt" is the provider by name
    monkeypatch.setenv("FTEXPORT_TRT_CACHE", str(tmp_path / "env"))
    q = Predictor.from_bundle(bundle, backend="ort-tensorrt")
    assert q.backend.name == "ort-tensorrt" and Path(rec.calls[-1][0][1]["trt_timing_cache_path"]) == tmp_path / "env"
    # an older manifest that points TensorRT at ONNX Runtime's own graph: fp32 instead; a named variant is honoured
    old = copy(bundle, tmp_path)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["backend_defaults"]["tensorrt"] = "int8"
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert Predictor.from_bundle(old, backend="tensorrt").variant.name == "fp32"
    assert Predictor.from_bundle(old, backend="tensorrt", variant="int8").variant.name == "int8"
    # a cache folder that cannot be written is one line naming the fix
    (tmp_path / "file").write_text("x")
    with pytest.raises(BackendUnavailable, match="needs a writable cache folder .*trt_cache=.*FTEXPORT_TRT_CACHE"):
        Predictor.from_bundle(bundle, backend="tensorrt", trt_cache=tmp_path / "file")


def test_pips_tensorrt_libraries_are_loaded_before_a_tensorrt_session(bundle, tmp_path, monkeypatch):
    """pip's TensorRT libraries live in site-packages/tensorrt_libs, on no loader path, and
    onnxruntime.preload_dlls covers CUDA and cuDNN only: the runtime loads libnvinfer, its
    plugin and the ONNX parser itself, in that order, before the session is built."""
    import ctypes
    import importlib.machinery
    import importlib.util

    import ftexport_runtime.engines.ort as eo

    libs = tmp_path / "tensorrt_libs"
    libs.mkdir()
    for name in ("libnvonnxparser.so.11", "libnvinfer_plugin.so.11", "libnvinfer.so.11", "libnvinfer_builder_resource.so.11.4.0"):
        (libs / name).write_bytes(b"")
    spec = importlib.machinery.ModuleSpec("tensorrt_libs", None, is_package=True)
    spec.submodule_search_locations = [str(libs)]
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "tensorrt_libs" else real_find(name, *a))
    rec = _Recorder(monkeypatch)
    loaded = []

    def fake_cdll(path, mode=0):
        loaded.append((Path(path).name, mode))
        rec.events.append("load")

    monkeypatch.setattr(ctypes, "CDLL", fake_cdll)
    eo.preload_tensorrt_libs.cache_clear()
    try:
        Predictor.from_bundle(bundle, backend="tensorrt", trt_cache=tmp_path / "c")
    finally:
        eo.preload_tensorrt_libs.cache_clear()
    assert [n for n, _ in loaded] == ["libnvinfer.so.11", "libnvinfer_plugin.so.11", "libnvonnxparser.so.11"]
    assert all(mode == ctypes.RTLD_GLOBAL for _, mode in loaded)
    assert rec.events.index("load") < rec.events.index("session")


def test_a_tensorrt_provider_that_cannot_load_says_which_library(monkeypatch, tmp_path):
    """onnxruntime lists TensorrtExecutionProvider whenever its .so is in the wheel; when the
    session then falls back, the error names the TensorRT library the provider could not load."""
    import ftexport_runtime.engines.ort as eo
    from ftexport_runtime.engines import get_backend
    from ftexport_runtime.errors import BackendUnavailable

    lib = tmp_path / "libonnxruntime_providers_tensorrt.so"
    lib.write_bytes(b"")
    monkeypatch.setattr(eo, "_provider_library", lambda name: lib if name == "tensorrt" else tmp_path / "absent.so")

    def fails(path, mode=0):
        raise OSError("libnvinfer.so.11: cannot open shared object file: No such file or directory")

    why = eo.tensorrt_provider_problem(load=fails)
    assert "libnvinfer.so.11: cannot open shared object file" in why and "tensorrt-cu13 11.x" in why
    assert eo.tensorrt_provider_problem(load=lambda path, mode=0: None) is None
    monkeypatch.setattr(eo, "tensorrt_provider_problem", lambda load=None: why)

    class FellBack:
        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    with pytest.raises(BackendUnavailable, match=r"running on CUDAExecutionProvider, CPUExecutionProvider .*libnvinfer\.so\.11"):
        eo.check_session(FellBack(), get_backend("tensorrt"))


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


def _validate_on_cuda(tiny_run, tmp_path):
    from click.testing import CliRunner

    from ftexport.cli import main

    recipe_path, result = tiny_run
    out = CliRunner().invoke(
        main,
        [
            "-q",
            "validate",
            str(result.root / "quantized"),
            "--reference",
            str(result.root / "merged"),
            "--recipe",
            str(recipe_path),
            "--backend",
            "cuda",
            "-o",
            str(tmp_path / "p"),
            "--json",
        ],
    )
    return out, json.loads((tmp_path / "p" / "parity.json").read_text())


@pytest.mark.skipif(_ort_cuda_reason() is None, reason="ONNX Runtime runs on CUDA here: test_validate_runs_a_gpu_backend_the_machine_has")
def test_validate_fails_a_gpu_backend_the_machine_cannot_run(tiny_run, tmp_path):
    out, report = _validate_on_cuda(tiny_run, tmp_path)
    assert out.exit_code == 1
    failed = report["variants"]["int8@cuda"]
    assert failed["passed"] is False and "CUDAExecutionProvider" in json.dumps(failed)


@pytest.mark.gpu
@pytest.mark.skipif(_ort_cuda_reason() is not None, reason=_ort_cuda_reason() or "")
def test_validate_runs_a_gpu_backend_the_machine_has(tiny_run, tmp_path):
    out, report = _validate_on_cuda(tiny_run, tmp_path)
    assert out.exit_code in (0, 1), out.output  # the parity gate decides; the backend is no reason to fail
    on_cuda = {k: v for k, v in report["variants"].items() if k.endswith("@cuda")}
    assert "int8@cuda" in on_cuda
    for key, result in on_cuda.items():
        assert "error" not in result and result["providers"][0] == "CUDAExecutionProvider", (key, result)
