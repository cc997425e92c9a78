"""`ftexport pack --triton DIR`: the Triton model repository written from the tiny bundle.

No Triton server runs here, so the repository is checked the ways that do not need one:
config.pbtxt parses (with Triton's own ModelConfig protobuf where tritonclient is installed,
and always with a small text-format reader), its names, types and dims match the ONNX graph,
and the repository's model.onnx run on the repository's tokenizer.json gives the bundle's
Predictor logits.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from ftexport_runtime import Predictor
from ftexport_runtime.bundle import sha256_file
from tokenizers import Tokenizer

from ftexport.cli import main
from ftexport.core.errors import BundleError
from ftexport.ship.triton import TritonError, write_triton_repo

TEXTS = ["a wonderful, moving film", "the plot was dull and the acting awful", "fine", "really quite a lovely and charming story ."]
ORT_TO_TRITON = {"tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}


# ---- a small reader for protobuf text format (the subset config.pbtxt uses) ----------------

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([A-Za-z0-9_.+-]+))')


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Every field maps to the list of its values; messages are dicts, scalars stay strings
    (quoted ones unquoted). Raises ValueError on anything that is not well-formed."""
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"unexpected character at {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.group(1) is None and m.group(0).strip():
            tokens.append(m.group(0).strip())
    i = 0

    def value() -> Any:
        nonlocal i
        tok = tokens[i]
        if tok == "{":
            i += 1
            msg = fields("}")
            i += 1
            return msg
        if tok in "}[]:,":
            raise ValueError(f"expected a value, got {tok!r}")
        i += 1
        return json.loads(tok) if tok.startswith('"') else tok

    def fields(end: str | None) -> dict[str, list[Any]]:
        nonlocal i
        out: dict[str, list[Any]] = {}
        while i < len(tokens) and tokens[i] != end:
            key = tokens[i]
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"expected a field name, got {key!r}")
            i += 1
            if tokens[i] == ":":
                i += 1
            if tokens[i] == "[":
                i += 1
                while tokens[i] != "]":
                    out.setdefault(key, []).append(value())
                    if tokens[i] == ",":
                        i += 1
                    elif tokens[i] != "]":
                        raise ValueError(f"expected ',' or ']' in list {key!r}, got {tokens[i]!r}")
                i += 1
                out.setdefault(key, [])
            else:
                out.setdefault(key, []).append(value())
        if end is not None and i >= len(tokens):
            raise ValueError(f"missing {end!r}")
        return out

    result = fields(None)
    if i != len(tokens):
        raise ValueError(f"trailing tokens from {tokens[i]!r}")
    return result


def one(msg: dict[str, list[Any]], key: str) -> Any:
    values = msg.get(key, [])
    assert len(values) == 1, f"{key}: expected one value, got {values}"
    return values[0]


@functools.cache
def triton_model_config() -> Any:
    """Triton's ModelConfig message class, from the model_config_pb2.py that tritonclient
    ships, loaded by path so tritonclient's grpc extra (grpcio) is not needed."""
    try:
        path = Path(str(metadata.distribution("tritonclient").locate_file("tritonclient/grpc/model_config_pb2.py")))
    except metadata.PackageNotFoundError:
        return None
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelConfig


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tiny_run, tmp_path_factory) -> Path:
    return write_triton_repo(tiny_run[1].bundle, tmp_path_factory.mktemp("triton") / "repo")


def model_dir(repo: Path) -> Path:
    dirs = [d for d in repo.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def config(repo: Path) -> dict[str, list[Any]]:
    return parse_pbtxt((model_dir(repo) / "config.pbtxt").read_text())


# ---- the repository ------------------------------------------------------------------------


def test_repository_layout(repo, bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    name = manifest["name"]
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == sorted(
        ["README.txt", "tokenizer.json", f"{name}/config.pbtxt", f"{name}/labels.txt", f"{name}/1/model.onnx"]
    )
    # the bundle's CPU choice (int8 here) is the model, byte for byte
    default = manifest["backend_defaults"].get("cpu") or manifest["default_variant"]
    variant = manifest["variants"][default]
    assert sha256_file(repo / name / "1" / "model.onnx") == manifest["files"][variant["file"]]
    assert (repo / name / "labels.txt").read_text().splitlines() == manifest["labels"]
    readme = (repo / "README.txt").read_text()
    assert "token ids" in readme and "tokenizer.json" in readme and "tritonserver --model-repository" in readme
    assert not [p for p in repo.parent.iterdir() if p.name.startswith(".")], "a temporary sibling was left behind"


def test_config_matches_the_onnx_graph_and_manifest(repo, bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    cfg = config(repo)
    assert one(cfg, "name") == manifest["name"] == model_dir(repo).name
    assert one(cfg, "backend") == "onnxruntime"
    assert "platform" not in cfg
    assert int(one(cfg, "max_batch_size")) == 32
    batching = one(cfg, "dynamic_batching")
    assert [int(x) for x in batching["preferred_batch_size"]] == [8, 16, 32]
    assert int(one(batching, "max_queue_delay_microseconds")) == 1000
    group = one(cfg, "instance_group")
    assert one(group, "kind") == "KIND_CPU" and int(one(group, "count")) == 1

    session = ort.InferenceSession(str(model_dir(repo) / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {t["name"][0]: t for t in cfg["input"]}
    assert list(inputs) == [i.name for i in session.get_inputs()]
    assert set(inputs) >= set(manifest["inputs"])
    for i in session.get_inputs():
        assert one(inputs[i.name], "data_type") == ORT_TO_TRITON[i.type] == "TYPE_INT64"
        assert [int(d) for d in inputs[i.name]["dims"]] == [-1]  # sequence axis; batch implied by max_batch_size
        assert len(i.shape) == 2 and isinstance(i.shape[0], str)
    outputs = cfg["output"]
    assert [one(o, "name") for o in outputs] == [o.name for o in session.get_outputs()] == manifest["outputs"]
    logits = outputs[0]
    assert one(logits, "data_type") == ORT_TO_TRITON[session.get_outputs()[0].type] == "TYPE_FP32"
    assert [int(d) for d in logits["dims"]] == [len(manifest["labels"])]
    assert one(logits, "label_filename") == "labels.txt"


def test_config_is_a_valid_triton_model_config(repo):
    """The real check: Triton's model_config.proto parses config.pbtxt (unknown fields or
    enum values would fail here)."""
    ModelConfig = triton_model_config()
    if ModelConfig is None:
        pytest.skip("tritonclient is not installed (pip install --no-deps tritonclient), so Triton's ModelConfig proto is not at hand")
    from google.protobuf import text_format

    msg = text_format.Parse((model_dir(repo) / "config.pbtxt").read_text(), ModelConfig())
    assert msg.backend == "onnxruntime" and msg.max_batch_size == 32
    assert [i.name for i in msg.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(list(i.dims) == [-1] for i in msg.input)
    assert msg.output[0].label_filename == "labels.txt"
    assert msg.instance_group[0].kind == msg.instance_group[0].KIND_CPU
    assert list(msg.dynamic_batching.preferred_batch_size) == [8, 16, 32]


def test_repository_model_gives_the_predictor_logits(repo, bundle):
    """A client that follows README.txt (tokenize with tokenizer.json, send the ids) gets
    what the bundle's Predictor computes."""
    tok = Tokenizer.from_file(str(repo / "tokenizer.json"))
    encs = tok.encode_batch(TEXTS + ["long " * 200])
    fields = {
        "input_ids": [e.ids for e in encs],
        "attention_mask": [e.attention_mask for e in encs],
        "token_type_ids": [e.type_ids for e in encs],
    }
    session = ort.InferenceSession(str(model_dir(repo) / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(fields[i.name], dtype=np.int64) for i in session.get_inputs()}
    assert feeds["input_ids"].shape[1] == json.loads((bundle / "manifest.json").read_text())["max_length"]  # truncated as Predictor does
    got = session.run(None, feeds)[0]
    predictor = Predictor.from_bundle(bundle)
    want = predictor.logits(TEXTS + ["long " * 200])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    labels = (model_dir(repo) / "labels.txt").read_text().splitlines()
    assert [labels[k] for k in got.argmax(1)] == [p.label for p in predictor.predict(TEXTS + ["long " * 200])]


def test_variant_name_batch_and_gpu_options(bundle, tmp_path):
    out = write_triton_repo(bundle, tmp_path / "t", variant="fp32", model_name="sentiment", max_batch=8, gpu=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert sha256_file(out / "sentiment" / "1" / "model.onnx") == manifest["files"][manifest["variants"]["fp32"]["file"]]
    cfg = parse_pbtxt((out / "sentiment" / "config.pbtxt").read_text())
    assert one(cfg, "name") == "sentiment" and int(one(cfg, "max_batch_size")) == 8
    assert [int(x) for x in one(cfg, "dynamic_batching")["preferred_batch_size"]] == [2, 4, 8]
    assert one(one(cfg, "instance_group"), "kind") == "KIND_GPU"
    session = ort.InferenceSession(str(out / "sentiment" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    encs = tok.encode_batch(TEXTS)
    feeds = {
        i.name: np.asarray(
            [getattr(e, {"input_ids": "ids", "token_type_ids": "type_ids"}.get(i.name, i.name)) for e in encs], dtype=np.int64
        )
        for i in session.get_inputs()
    }
    np.testing.assert_allclose(
        session.run(None, feeds)[0], Predictor.from_bundle(bundle, variant="fp32").logits(TEXTS), rtol=1e-5, atol=1e-5
    )
    if ModelConfig := triton_model_config():
        from google.protobuf import text_format

        msg = text_format.Parse((out / "sentiment" / "config.pbtxt").read_text(), ModelConfig())
        assert msg.instance_group[0].kind == msg.instance_group[0].KIND_GPU


REWRITE_OPS = {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"}  # ONNX Runtime's CPU fusions of the quantizer's MatMulInteger


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_the_int8_rewrite_says_which_onnxruntime_it_needs(repo, bundle):
    """The CPU int8 variant is this onnxruntime's own rewritten graph, which an older onnxruntime
    inside Triton may refuse: the repository says which onnxruntime (hence Triton) it needs, and
    how to get a portable graph instead."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    wrote = manifest["variants"]["int8"]["details"]["ort_graph"]["onnxruntime"]
    assert _ops(model_dir(repo) / "1" / "model.onnx") & REWRITE_OPS  # what ships by default: the rewrite
    readme = (repo / "README.txt").read_text()
    assert f"onnxruntime {wrote} or newer" in readme and f"ONNX Runtime >= {wrote}" in readme and "--triton-portable" in readme


def test_portable_ships_the_plain_quantizer_output_that_answers_as_the_variant(bundle, tmp_path):
    out = write_triton_repo(bundle, tmp_path / "p", portable=True)
    model = model_dir(out) / "1" / "model.onnx"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert sha256_file(model) != manifest["files"]["model.int8.onnx"]
    ops = _ops(model)
    assert not ops & REWRITE_OPS and {"MatMulInteger", "DynamicQuantizeLinear"} <= ops  # standard int8 operators
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    encs = tok.encode_batch(TEXTS)
    feeds = {
        "input_ids": [e.ids for e in encs],
        "attention_mask": [e.attention_mask for e in encs],
        "token_type_ids": [e.type_ids for e in encs],
    }
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: np.asarray(feeds[i.name], dtype=np.int64) for i in session.get_inputs()})[0]
    np.testing.assert_allclose(got, Predictor.from_bundle(bundle).logits(TEXTS), rtol=1e-5, atol=1e-5)
    readme = (out / "README.txt").read_text()
    assert "plain quantizer output" in readme and "Older onnxruntime versions read it" in readme and "or newer" not in readme
    # a variant that is portable already ships byte for byte
    fp32 = write_triton_repo(bundle, tmp_path / "f", variant="fp32", portable=True)
    assert sha256_file(model_dir(fp32) / "1" / "model.onnx") == manifest["files"]["model.onnx"]
    assert "standard ONNX graph" in (fp32 / "README.txt").read_text()
    # from the command line
    cli = CliRunner().invoke(main, ["-q", "pack", str(bundle), "--triton", str(tmp_path / "c"), "--triton-portable"])
    assert cli.exit_code == 0, cli.output
    assert not _ops(model_dir(tmp_path / "c") / "1" / "model.onnx") & REWRITE_OPS


def test_tarball_bundle(tiny_run, tmp_path):
    from ftexport_runtime.bundle import make_tarball

    archive = make_tarball(tiny_run[1].bundle, tmp_path / "b.tar.gz")
    out = write_triton_repo(archive, tmp_path / "t")
    assert (model_dir(out) / "1" / "model.onnx").is_file()


# ---- errors: one line, nothing written -----------------------------------------------------


def _tampered(bundle: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "tampered"
    shutil.copytree(bundle, bad)
    target = bad / "model.int8.onnx"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.unlink()  # may be a hard link into the fixture bundle
    target.write_bytes(bytes(data))
    return bad


def test_errors_leave_nothing_behind(bundle, tmp_path):
    with pytest.raises(BundleError, match=r"'model\.int8\.onnx' was modified after the bundle was packed"):
        write_triton_repo(_tampered(bundle, tmp_path), tmp_path / "t1")
    with pytest.raises(BundleError, match=r"no such bundle"):
        write_triton_repo(tmp_path / "nope", tmp_path / "t2")
    with pytest.raises(BundleError, match=r"no variant 'fp16' in this bundle \(it has: fp32, int8\)"):
        write_triton_repo(bundle, tmp_path / "t3", variant="fp16")
    with pytest.raises(TritonError, match=r"model name 'a/b' cannot be a Triton model directory"):
        write_triton_repo(bundle, tmp_path / "t4", model_name="a/b")
    with pytest.raises(TritonError, match=r"--triton-max-batch must be at least 1, got 0"):
        write_triton_repo(bundle, tmp_path / "t5", max_batch=0)
    assert not [p.name for p in tmp_path.iterdir() if p.name != "tampered"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(TritonError, match=r"full: directory is not empty; give --triton a new or empty directory"):
        write_triton_repo(bundle, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()  # an existing empty directory is fine
    assert (write_triton_repo(bundle, tmp_path / "empty") / "README.txt").is_file()


# ---- the command line ----------------------------------------------------------------------


def test_cli_pack_triton(bundle, tmp_path):
    out = CliRunner().invoke(
        main,
        [
            "-q",
            "pack",
            str(bundle),
            "--triton",
            str(tmp_path / "t"),
            "--triton-variant",
            "fp32",
            "--triton-name",
            "sst2",
            "--triton-max-batch",
            "16",
            "--triton-gpu",
        ],
    )
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == str(tmp_path / "t")
    cfg = parse_pbtxt((tmp_path / "t" / "sst2" / "config.pbtxt").read_text())
    assert int(one(cfg, "max_batch_size")) == 16 and one(one(cfg, "instance_group"), "kind") == "KIND_GPU"
    # with -o, the bundle is packed and the repository is written from the packed bundle
    both = CliRunner().invoke(main, ["-q", "pack", str(bundle), "-o", str(tmp_path / "final"), "--triton", str(tmp_path / "t2")])
    assert both.exit_code == 0, both.output
    assert both.stdout.split() == [str(tmp_path / "final"), str(tmp_path / "t2")]
    assert (tmp_path / "final" / "manifest.json").is_file() and (model_dir(tmp_path / "t2") / "config.pbtxt").is_file()


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_empty", r"^error: .*t: directory is not empty; give --triton a new or empty directory \(or remove it\)$"),
        ("tampered", r"^error: .*'model\.int8\.onnx' was modified after the bundle was packed .*Re-export or re-pack the bundle$"),
        ("missing", r"^error: .*nope: no such bundle .*$"),
        ("variant", r"^error: .*no variant 'fp16' in this bundle \(it has: fp32, int8\)$"),
        ("neither", r"^error: pack: give -o/--output for the final bundle, --triton DIR for a Triton repository, or both$"),
        ("tar_without_output", r"^error: pack: --parity, --bench, --tar and --variants need -o/--output .*$"),
        ("max_batch", r"^error: --triton-max-batch must be at least 1, got 0$"),
    ],
)
def test_cli_errors_are_one_line_exit_2(bundle, tmp_path, case, message):
    src, extra = str(bundle), ["--triton", str(tmp_path / "t")]
    if case == "not_empty":
        (tmp_path / "t").mkdir()
        (tmp_path / "t" / "x").write_text("x")
    elif case == "tampered":
        src = str(_tampered(bundle, tmp_path))
    elif case == "missing":
        src = str(tmp_path / "nope")
    elif case == "variant":
        extra += ["--triton-variant", "fp16"]
    elif case == "neither":
        extra = []
    elif case == "tar_without_output":
        extra += ["--tar"]
    elif case == "max_batch":
        extra += ["--triton-max-batch", "0"]
    out = CliRunner().invoke(main, ["-q", "pack", src, *extra])
    assert out.exit_code == 2, out.output
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(message, lines[0]), out.stderr
    assert out.stdout == ""
    # nothing was written: no repository, and no packed bundle either
    assert case == "not_empty" or not (tmp_path / "t").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--variants", "int8", "--triton-variant", "fp32"], "--triton-variant fp32: the packed bundle keeps only int8 (--variants)"),
        (["--variants", "int8", "--triton-gpu"], "--triton-gpu: variant int8 is ONNX Runtime's CPU rewrite of dynamic int8"),
        (["--triton-variant", "int8", "--triton-gpu"], "--triton-gpu: variant int8 is ONNX Runtime's CPU rewrite"),
    ],
)
def test_cli_pack_triton_chooses_among_the_variants_kept(bundle, tmp_path, extra, says):
    """With -o and --variants the repository is written from the packed bundle: its variant is
    checked against what --variants keeps, before anything is written; a GPU repository never
    gets the CPU-only int8 rewrite (the packed bundle's GPU default went with fp32)."""
    out = CliRunner().invoke(main, ["-q", "pack", str(bundle), "-o", str(tmp_path / "final"), "--triton", str(tmp_path / "t"), *extra])
    assert out.exit_code == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.output
    assert not (tmp_path / "final").exists() and not (tmp_path / "t").exists()


def test_cli_refuses_a_bad_triton_option_before_packing(bundle, tmp_path):
    out = CliRunner().invoke(
        main, ["-q", "pack", str(bundle), "-o", str(tmp_path / "final"), "--triton", str(tmp_path / "t"), "--triton-variant", "fp16"]
    )
    assert out.exit_code == 2 and "no variant 'fp16'" in out.stderr
    assert not (tmp_path / "final").exists()
