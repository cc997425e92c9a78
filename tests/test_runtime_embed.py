"""The runtime's embed head (feature-extraction bundles): Predictor.embed against the torch
module it was exported from, the refusals, the `embed` command and POST /v1/embeddings in
OpenAI's shape. The bundle is built here without the toolchain: a tiny random BERT with masked
mean pooling and L2 normalization on top, exported with torch, and a manifest written with the
runtime's own Manifest/write_manifest."""

from __future__ import annotations

import base64
import json
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ftexport_runtime import BundleError, PredictError, Predictor
from ftexport_runtime.bundle import Manifest, Variant, write_manifest
from helpers import make_tiny_model

TEXTS = ["the film is wonderful and moving", "a dull , tedious plot", "fine", "", "caf\u00e9 \U0001f600 music"]
MAX_LENGTH = 32


class MeanPooled:
    """What the toolchain exports for sentence embeddings: the encoder, masked mean pooling, L2."""

    @staticmethod
    def build(model_dir: Path):
        import torch
        from transformers import BertModel

        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = BertModel.from_pretrained(str(model_dir)).eval()

            def forward(self, input_ids, attention_mask, token_type_ids):
                hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2, dim=-1)

        return Module().eval()


def _manifest(**changes) -> Manifest:
    m = Manifest(
        task="feature-extraction",
        labels=[],
        max_length=MAX_LENGTH,
        inputs=["input_ids", "attention_mask", "token_type_ids"],
        outputs=["sentence_embedding"],
        variants={"fp32": Variant("fp32", "model.onnx", "fp32")},
        default_variant="fp32",
        tokenizer={"file": "tokenizer.json", "pad_token": "[PAD]", "pad_id": 0},
        name="tiny-embed",
        embedding={"dimension": 32, "pooling": "mean", "normalize": True},
    )
    for k, v in changes.items():
        setattr(m, k, v)
    return m


@pytest.fixture(scope="module")
def embed_bundle(tmp_path_factory) -> tuple[Path, object]:
    """(bundle directory, the torch module it was exported from)."""
    import torch

    tmp = tmp_path_factory.mktemp("embed")
    model_dir = make_tiny_model(tmp / "model", seed=3)
    module = MeanPooled.build(model_dir)
    out = tmp / "bundle"
    out.mkdir()
    shutil.copy(model_dir / "tokenizer.json", out / "tokenizer.json")
    ids = torch.tensor([[2, 10, 11, 3, 0], [2, 12, 13, 14, 3]])
    args = (ids, (ids != 0).long(), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(out / "model.onnx"),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    write_manifest(out, _manifest())
    return out, module


@pytest.fixture(scope="module")
def emb(embed_bundle) -> Predictor:
    return Predictor.from_bundle(embed_bundle[0])


def _torch_embed(module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return module(*(torch.from_numpy(feeds[n].astype(np.int64)) for n in ("input_ids", "attention_mask", "token_type_ids"))).numpy()


# --- Predictor.embed ---------------------------------------------------------------------------


def test_embed_matches_the_torch_module_and_is_normalized(embed_bundle, emb):
    _, module = embed_bundle
    vectors = emb.embed(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(vectors, _torch_embed(module, emb.encode(TEXTS)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # batched by max_batch (or batch_size): the same vectors, whatever the chunks
    np.testing.assert_allclose(Predictor.from_bundle(embed_bundle[0], max_batch=2).embed(TEXTS), vectors, atol=1e-5)
    np.testing.assert_allclose(emb.embed(TEXTS, batch_size=1), vectors, atol=1e-5)
    counted, counts = emb.embed(TEXTS, return_token_counts=True)
    np.testing.assert_array_equal(counted, vectors)
    assert counts == [int(m.sum()) for m in emb.encode(TEXTS)["attention_mask"]]
    meta = emb.metadata()
    assert meta["task"] == "feature-extraction" and meta["embedding"] == {"dimension": 32, "pooling": "mean", "normalize": True}


def test_long_texts_are_truncated_to_max_length(embed_bundle, emb):
    long = "good " * 500
    assert emb.encode([long])["input_ids"].shape == (1, MAX_LENGTH)
    vector, counts = emb.embed([long], return_token_counts=True)
    assert counts == [MAX_LENGTH]
    np.testing.assert_allclose(vector, _torch_embed(embed_bundle[1], emb.encode([long])), atol=1e-5)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], r"^embed\(\) got an empty list of texts; pass at least one string$"),
        ("just a string", r"^embed\(\) takes a list of texts, got a single string; wrap it in a list$"),
        (["ok", 3], r"^embed\(\): text #1 is a int, not a string$"),
        (["\ud800"], r"^embed\(\): text #0 is not valid Unicode"),
    ],
)
def test_bad_embed_input(emb, texts, message):
    with pytest.raises(PredictError, match=message):
        emb.embed(texts)


def test_each_bundle_refuses_what_it_does_not_do_in_one_line(emb, bundle):
    made = "this bundle makes sentence embeddings (feature-extraction); use embed()"
    with pytest.raises(PredictError) as e:
        emb.predict(["a text"])
    assert str(e.value) == f"predict(): {made}"
    with pytest.raises(PredictError, match=re.escape(f"predict(): {made}")):
        emb.predict_batch(["a text"])
    with pytest.raises(PredictError, match=re.escape(f"generate(): {made}")):
        emb.generate("a prompt")
    with pytest.raises(PredictError, match=re.escape("entities() needs a token-classification bundle; this one is feature-extraction")):
        emb.entities(["a text"])
    with pytest.raises(PredictError, match="batch_size must be a positive integer"):
        emb.embed(["a"], batch_size=0)
    classifier = Predictor.from_bundle(bundle)
    with pytest.raises(PredictError) as e:
        classifier.embed(["a text"])
    assert str(e.value) == "embed(): this bundle's task is text-classification; use predict()"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"embedding": None}, r"a feature-extraction bundle needs an 'embedding' object"),
        ({"embedding": {"dimension": 0, "pooling": "mean", "normalize": True}}, r"field 'embedding\.dimension' must be a positive integer"),
        ({"embedding": {"dimension": True, "pooling": "mean", "normalize": True}}, r"field 'embedding\.dimension'"),
        (
            {"embedding": {"dimension": 32, "pooling": "sum", "normalize": True}},
            r"field 'embedding\.pooling' must be one of mean, cls, max",
        ),
        ({"embedding": {"dimension": 32, "pooling": "cls"}}, r"field 'embedding\.normalize' must be true or false"),
        ({"labels": ["a"]}, r"field 'labels' must be \[\] for a feature-extraction bundle"),
        ({"outputs": ["last_hidden_state"]}, r"field 'outputs' must be \['sentence_embedding'\]"),
    ],
)
def test_manifest_checks_name_the_field(embed_bundle, tmp_path, change, message):
    b = tmp_path / "b"
    shutil.copytree(embed_bundle[0], b)
    data = json.loads((b / "manifest.json").read_text())
    data.update(change)
    if data["embedding"] is None:
        del data["embedding"]
    (b / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message) as e:
        Predictor.from_bundle(b)
    assert "\n" not in str(e.value)


def test_a_dimension_the_graph_does_not_make_is_refused_at_load(embed_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(embed_bundle[0], b)
    write_manifest(b, _manifest(embedding={"dimension": 384, "pooling": "mean", "normalize": True}))
    with pytest.raises(BundleError, match=r"makes 32-dimensional embeddings but embedding\.dimension says 384"):
        Predictor.from_bundle(b)


# --- the command -------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftexport_runtime.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_embed_prints_dimension_values_and_text(embed_bundle, emb, tmp_path):
    b = str(embed_bundle[0])
    out = run_cli("embed", b, "the film is wonderful and moving", "fine")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    first = emb.embed(["the film is wonderful and moving"])[0]
    assert lines[0] == f"dim=32  [{', '.join(f'{x:.4f}' for x in first[:4])}, ... ]  the film is wonderful and moving"
    assert re.fullmatch(r"dim=32  \[(-?\d\.\d{4}, ){4}\.\.\. \]  fine", lines[1]), lines[1]
    texts = tmp_path / "texts.txt"
    texts.write_text("a dull , tedious plot\n\nfine\n")
    js = run_cli("embed", b, "--json", "--file", str(texts), "--threads", "1")
    assert js.returncode == 0, js.stderr
    rows = json.loads(js.stdout)
    assert [r["text"] for r in rows] == ["a dull , tedious plot", "fine"]
    np.testing.assert_array_equal(np.array([r["embedding"] for r in rows], dtype=np.float32), emb.embed([r["text"] for r in rows]))


def test_cli_refusals_are_one_line_exit_2(embed_bundle, bundle):
    out = run_cli("predict", str(embed_bundle[0]), "a text")
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["error: predict(): this bundle makes sentence embeddings (feature-extraction); use embed()"]
    out = run_cli("embed", str(bundle), "a text")
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["error: embed(): this bundle's task is text-classification; use predict()"]
    out = run_cli("embed", str(embed_bundle[0]))
    assert (out.returncode, out.stderr.strip()) == (2, "error: no texts: give TEXT arguments or --file FILE (one text per line)")
    out = run_cli("embed", str(embed_bundle[0]), "--file", "/nonexistent/texts.txt")
    assert out.returncode == 2 and out.stderr.startswith("error: --file /nonexistent/texts.txt: cannot read it")
    info = run_cli("info", str(embed_bundle[0]))
    assert info.returncode == 0 and "embedding 32 dims, mean pooling, L2-normalized" in info.stdout


# --- POST /v1/embeddings -----------------------------------------------------------------------

LIMITS = dict(max_batch=8, max_wait_ms=1, queue_size=16, max_text_chars=200, max_request_items=4)


class Stack:
    """The server stack (the `serve` extra), imported only by the tests that need it."""

    def __init__(self) -> None:
        self.httpx = pytest.importorskip("httpx")
        pytest.importorskip("starlette")
        with warnings.catch_warnings():  # Starlette 1.x warns about httpx in its TestClient; it works
            warnings.simplefilter("ignore")
            from starlette.testclient import TestClient
        from ftexport_runtime.server import ServeConfig, create_app

        self.TestClient, self.ServeConfig, self.create_app = TestClient, ServeConfig, create_app

    def client(self, predictor, **limits):
        return self.TestClient(self.create_app(predictor, self.ServeConfig(**(limits or LIMITS))), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def stack() -> Stack:
    return Stack()


@pytest.fixture(scope="module")
def client(emb, stack):
    with stack.client(emb) as c:
        yield c


def _decode(item) -> np.ndarray:
    if isinstance(item, str):
        return np.frombuffer(base64.b64decode(item), dtype="<f4")
    return np.asarray(item, dtype=np.float32)


def test_embeddings_answer_in_openais_shape(client, emb):
    texts = TEXTS[:4]
    r = client.post("/v1/embeddings", json={"input": texts, "model": "tiny-embed"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"object", "data", "model", "usage"} and body["object"] == "list" and body["model"] == "tiny-embed"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", i) for i in range(4)]
    vectors, counts = emb.embed(texts, return_token_counts=True)
    np.testing.assert_array_equal(np.stack([_decode(d["embedding"]) for d in body["data"]]), vectors)
    assert body["usage"] == {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
    assert "x-ftexport-warning" not in r.headers
    # base64: the little-endian float32 bytes, the same vectors
    b64 = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()
    assert all(isinstance(d["embedding"], str) for d in b64["data"])
    np.testing.assert_array_equal(np.stack([_decode(d["embedding"]) for d in b64["data"]]), vectors)
    assert b64["usage"] == body["usage"]
    # one string, "dimensions" equal to the model's, an explicit float format, a user
    one = client.post("/v1/embeddings", json={"input": "fine", "dimensions": 32, "encoding_format": "float", "user": "u1"}).json()
    assert len(one["data"]) == 1
    np.testing.assert_array_equal(_decode(one["data"][0]["embedding"]), emb.embed(["fine"])[0])


def test_another_model_name_is_answered_by_this_model_with_a_note(client):
    r = client.post("/v1/embeddings", json={"input": ["fine"], "model": "text-embedding-3-small"})
    assert r.status_code == 200 and r.json()["model"] == "tiny-embed"
    assert r.headers["x-ftexport-warning"] == "model 'text-embedding-3-small' is not served here; answered by 'tiny-embed'"


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        (b'{"input": ["a"', 400, None, r"not valid JSON"),
        (b'["a"]', 422, None, r"must be a JSON object .*got an array"),
        (b"{}", 422, "input", r'no "input" field'),
        (b'{"input": []}', 422, "input", r'"input" is empty'),
        (b'{"input": 3}', 422, "input", r"must be a string or an array of strings, got a number"),
        (b'{"input": [1, 2, 3]}', 422, "input", r'"input" holds token ids; this server tokenizes text itself'),
        (b'{"input": [[1, 2], [3]]}', 422, "input", r'"input" holds token ids'),
        (b'{"input": {"a": 1}}', 422, "input", r"must be a string or an array of strings, got an object"),
        (b'{"input": ["a", null]}', 422, "input", r'"input"\[1\] is null, not a string'),
        (b'{"input": ["a", "b", "c", "d", "e"]}', 422, "input", r"5 items, over the limit of 4 per request"),
        (json.dumps({"input": ["x" * 201]}).encode(), 422, "input", r"201 characters, over the limit of 200"),
        (b'{"input": ["\\ud800"]}', 422, "input", r"lone surrogate"),
        (b'{"input": ["a"], "dimensions": 16}', 422, "dimensions", r'"dimensions" is 16, but this model makes 32-dimensional embeddings'),
        (b'{"input": ["a"], "encoding_format": "int8"}', 422, "encoding_format", r'must be "float" or "base64", got "int8"'),
        (b'{"input": ["a"], "model": 5}', 422, "model", r'"model" must be a string'),
        (b'{"input": ["a"], "temperature": 1}', 422, "temperature", r'unknown field "temperature"'),
        (json.dumps({"input": ["x" * 10_000_000]}).encode(), 413, None, r"request body is over \d+ bytes"),
    ],
)
def test_bad_requests_get_openai_shaped_errors(client, body, status, param, message):
    r = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] is None and error["param"] == param
    assert "\n" not in error["message"] and re.search(message, error["message"]), error["message"]
    assert client.post("/v1/embeddings", json={"input": "fine"}).status_code == 200


def test_routes_of_other_tasks_answer_404_with_the_way(client, bundle, stack):
    r = client.post("/v1/predict", json={"texts": ["fine"]})
    assert r.status_code == 404
    assert r.json() == {
        "error": "no endpoint /v1/predict: this server's bundle is feature-extraction, which answers POST /v1/embeddings "
        "(/v1/predict is for text-classification and token-classification bundles); see GET /openapi.json"
    }
    r = client.get("/v1/embeddings")
    assert (r.status_code, r.json()["error"]) == (405, "GET is not allowed on /v1/embeddings; see GET /openapi.json")
    with stack.client(Predictor.from_bundle(bundle, variant="fp32")) as classifier:
        r = classifier.post("/v1/embeddings", json={"input": "fine"})
        assert r.status_code == 404
        assert r.json()["error"].startswith(
            "no endpoint /v1/embeddings: this server's bundle is text-classification, which answers POST /v1/predict"
        )
        assert classifier.post("/v1/predict", json={"texts": ["fine"]}).status_code == 200


def test_openapi_and_metadata_describe_the_route(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/v1/embeddings", "/healthz", "/v1/metadata", "/v1/stats"}
    request = spec["components"]["schemas"]["EmbeddingsRequest"]
    assert request["properties"]["input"]["oneOf"][1]["maxItems"] == 4
    assert request["properties"]["dimensions"] == {"type": "integer", "const": 32}
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert refs <= set(spec["components"]["schemas"]), refs
    meta = client.get("/v1/metadata").json()
    assert meta["embedding"]["dimension"] == 32 and meta["serving"]["max_request_items"] == 4


class Gated:
    """An embedding Predictor whose model calls wait for `gate`."""

    def __init__(self, predictor: Predictor):
        self.predictor, self.gate, self.calls = predictor, threading.Event(), []

    def metadata(self) -> dict:
        return self.predictor.metadata()

    def embed(self, texts, batch_size=None, return_token_counts=False):
        self.calls.append(list(texts))
        assert self.gate.wait(20)
        return self.predictor.embed(texts, batch_size, return_token_counts)


def test_requests_share_the_micro_batcher_and_a_full_queue_answers_503(emb, stack):
    from concurrent.futures import ThreadPoolExecutor

    gated = Gated(emb)
    with stack.client(gated, max_batch=64, max_wait_ms=0, queue_size=3, max_request_items=2) as c, ThreadPoolExecutor(4) as pool:
        first = pool.submit(c.post, "/v1/embeddings", json={"input": ["fine"]})
        _wait(lambda: len(gated.calls) == 1)
        queued = [pool.submit(c.post, "/v1/embeddings", json={"input": t}) for t in (["a", "b"], ["c"])]
        _wait(lambda: c.get("/v1/stats").json()["queued_texts"] == 3)
        full = c.post("/v1/embeddings", json={"input": "d"})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["message"] == "queue full: 3 texts are waiting (--queue-size 3); retry later"
        gated.gate.set()
        assert first.result().status_code == 200
        for f, texts in zip(queued, (["a", "b"], ["c"])):
            data = f.result().json()["data"]
            np.testing.assert_array_equal(np.stack([_decode(d["embedding"]) for d in data]), emb.embed(texts))
        assert [len(x) for x in gated.calls] == [1, 3]  # the two queued requests shared one model call
        c.portal.call(c.app.state.batcher.close)
        r = c.post("/v1/embeddings", json={"input": "e"})
        assert r.status_code == 503 and r.json()["error"]["message"] == "server is shutting down; retry on another instance"


def _wait(condition, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


# --- a live `ftexport-runtime serve`, and OpenAI's own client ----------------------------------


@pytest.fixture
def live(embed_bundle, stack) -> Iterator[str]:
    pytest.importorskip("uvicorn")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftexport_runtime.cli", "serve", str(embed_bundle[0]), "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        end = time.monotonic() + 60
        while True:
            assert time.monotonic() < end and proc.poll() is None, "serve did not start"
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if " at http://" in line:
                assert "(POST /v1/embeddings, GET /healthz, GET /v1/metadata, GET /openapi.json)" in line, line
                yield line.split(" at ", 1)[1].split()[0]
                break
    finally:
        proc.terminate()
        proc.wait(20)


def test_live_serve_answers_embeddings(live, emb, stack):
    r = stack.httpx.post(f"{live}/v1/embeddings", json={"input": ["fine", "a dull , tedious plot"]}, timeout=30)
    assert r.status_code == 200
    np.testing.assert_array_equal(
        np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32), emb.embed(["fine", "a dull , tedious plot"])
    )


@pytest.fixture
def openai():
    return pytest.importorskip("openai", reason="the openai package is not installed (a client-side check only; not installed for tests)")


def test_openais_client_parses_the_answers(openai, live, emb):
    client = openai.OpenAI(base_url=f"{live}/v1", api_key="unused", max_retries=0)
    texts = ["fine", "a dull , tedious plot"]
    result = client.embeddings.create(model="tiny-embed", input=texts)  # openai-python asks for base64 by default
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, emb.embed(texts), atol=1e-7)
    assert result.model == "tiny-embed" and result.usage.prompt_tokens == sum(emb.embed(texts, return_token_counts=True)[1])
    floats = client.embeddings.create(model="tiny-embed", input="fine", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, emb.embed(["fine"])[0], atol=1e-7)
    with pytest.raises(openai.UnprocessableEntityError, match="holds token ids"):
        client.embeddings.create(model="tiny-embed", input=[[1, 2, 3]])
