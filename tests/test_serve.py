"""Serving: Predictor.predict_batch and its thread safety, and `ftexport-runtime serve`
(micro-batching, the bounded queue, request checks, OpenAPI, graceful shutdown)."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from ftexport_runtime import PredictError, Predictor

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from ftexport_runtime.server import ServeConfig, bind, create_app  # noqa: E402

TEXTS = [
    "the film is wonderful and moving",
    "the plot is dull and tedious",
    "a charming , lovely story",
    "the acting was awful",
    "really quite good music",
    "bland , weak and boring",
    "superb cast",
    "",
    "the ending was very brilliant",
    "a clumsy movie",
    "fine",
    "poor",
    "the story is delightful",
    "terrible terrible terrible",
    "great great",
    "the music was tedious and the plot bad",
]


def answers(predictor, texts: list[str]) -> list[dict]:
    # Through JSON, as a client sees them: Python floats survive the round trip exactly.
    return json.loads(json.dumps([p.as_dict() for p in predictor.predict(texts)]))


def close(a: list[dict], b: list[dict], atol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(
        x["label"] == y["label"] and all(abs(x["scores"][k] - y["scores"][k]) <= atol for k in x["scores"]) for x, y in zip(a, b)
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def fp32(tiny_run) -> Predictor:
    # fp32: its scores do not depend on which texts share a batch (int8's dynamic
    # quantization picks its scales per call), so batched answers must equal lone ones.
    return Predictor.from_bundle(tiny_run[1].bundle, variant="fp32")


class Gated:
    """A Predictor whose calls wait for `gate`: the test decides when a batch finishes."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.gate = threading.Event()
        self.calls: list[list[str]] = []

    def metadata(self) -> dict:
        return self.predictor.metadata()

    def predict_batch(self, texts, batch_size=None):
        self.calls.append(list(texts))
        assert self.gate.wait(20), "the test never opened the gate"
        return self.predictor.predict_batch(texts, batch_size)


@contextmanager
def running(app) -> Iterator[str]:
    """uvicorn serving `app` in a thread on a free port; yields the base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn to start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)


def post(url: str, texts) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", json={"texts": texts}, timeout=30)


# --- Predictor.predict_batch ---------------------------------------------------------------


def test_predict_batch_matches_predict_whatever_the_chunk_size(fp32):
    whole = answers(fp32, TEXTS)
    for size in (1, 3, 64):
        got = [p.as_dict() for p in fp32.predict_batch(TEXTS, batch_size=size)]
        assert close(got, whole)
    for bad in (0, -1, 2.5):
        with pytest.raises(PredictError, match="batch_size must be a positive integer"):
            fp32.predict_batch(TEXTS, batch_size=bad)
    with pytest.raises(PredictError, match="empty list"):
        fp32.predict_batch([])


def test_one_predictor_shared_by_threads_answers_as_sequential_calls(tiny_run):
    p = Predictor.from_bundle(tiny_run[1].bundle)  # the default int8 variant: the one served
    calls = [TEXTS[i % 7 : i % 7 + 1 + i % 9] for i in range(64)]
    expected = [[x.as_dict() for x in p.predict(c)] for c in calls]
    barrier = threading.Barrier(8)

    def worker(k: int) -> list[tuple[int, list[dict]]]:
        barrier.wait()
        return [(i, [x.as_dict() for x in p.predict_batch(calls[i])]) for i in range(k, len(calls), 8)]

    with ThreadPoolExecutor(8) as pool:
        results = [r for rs in pool.map(worker, range(8)) for r in rs]
    assert len(results) == len(calls)
    for i, got in results:
        assert got == expected[i], f"call {i} differs when run from 8 threads at once"


# --- the API, on a real uvicorn in a thread --------------------------------------------------


@pytest.fixture(scope="module")
def client(fp32) -> Iterator[httpx.Client]:
    config = ServeConfig(max_batch=8, max_wait_ms=1, queue_size=32, max_text_chars=200, max_request_items=4)
    with running(create_app(fp32, config)) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def test_predict_answers_what_the_predictor_answers(client, fp32):
    r = client.post("/v1/predict", json={"texts": TEXTS[:4]})
    assert r.status_code == 200
    assert r.json() == {"predictions": answers(fp32, TEXTS[:4])}


def test_health_metadata_and_openapi(client, fp32):
    assert client.get("/healthz").json() == {"status": "ok"}
    meta = client.get("/v1/metadata").json()
    assert {k: meta[k] for k in ("task", "labels", "max_length", "variant", "backend")} == {
        "task": "text-classification",
        "labels": ["negative", "positive"],
        "max_length": fp32.max_length,
        "variant": "fp32",
        "backend": "cpu",
    }
    assert meta["serving"]["max_request_items"] == 4 and meta["serving"]["batching"] is True
    spec = json.loads(client.get("/openapi.json").text)
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/v1/predict", "/healthz", "/v1/metadata", "/v1/stats"}
    texts = spec["components"]["schemas"]["PredictRequest"]["properties"]["texts"]
    assert (texts["maxItems"], texts["items"]["maxLength"]) == (4, 200)
    # every $ref points at a schema that exists
    refs = {r.rsplit("/", 1)[1] for r in _refs(spec)}
    assert refs <= set(spec["components"]["schemas"]), refs


def _refs(node) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from [v] if k == "$ref" else _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"texts": ["good"', 400, r"not valid JSON \(.*\); send"),
        (b'{"texts": ["\xff\xfe"]}', 400, r"not UTF-8 \(bad byte at position 12\)"),
        (b"[" * 10_000, 400, "not valid JSON"),  # nested past the recursion limit
        (b'["good"]', 422, r"must be a JSON object .*got an array"),
        (b'{"text": ["good"]}', 422, 'unknown field "text"'),
        (b"{}", 422, 'no "texts" field'),
        (b'{"texts": "good"}', 422, r"got a single string; wrap it in \[...\]"),
        (b'{"texts": {"a": 1}}', 422, "must be an array of strings, got an object"),
        (b'{"texts": []}', 422, '"texts" is empty'),
        (b'{"texts": ["a", "b", "c", "d", "e"]}', 422, r"5 items, over the limit of 4 per request \(--max-request-items\)"),
        (b'{"texts": ["good", 3]}', 422, r'"texts"\[1\] is a number, not a string'),
        (b'{"texts": [null]}', 422, r'"texts"\[0\] is null, not a string'),
        (json.dumps({"texts": ["x" * 201]}).encode(), 422, r"201 characters, over the limit of 200 \(--max-text-chars\)"),
        (b'{"texts": ["\\ud800"]}', 422, "lone surrogate"),
        (json.dumps({"texts": ["x" * 10_000_000]}).encode(), 413, r"over \d+ bytes, the most that 4 texts"),
    ],
)
def test_bad_requests_get_one_line_json_errors_and_serving_goes_on(client, body, status, message):
    r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert "\n" not in error
    assert re.search(message, error), error
    assert client.post("/v1/predict", json={"texts": ["fine"]}).status_code == 200


def test_unknown_paths_and_methods_answer_json(client):
    r = client.get("/v1/predict")
    assert (r.status_code, r.json()["error"]) == (405, "GET is not allowed on /v1/predict; see GET /openapi.json")
    r = client.post("/v1/load", json={"path": "/etc"})  # no endpoint loads a model from a client's path
    assert (r.status_code, r.json()["error"]) == (404, "no endpoint /v1/load; see GET /openapi.json")


def test_control_characters_and_unicode_are_texts_like_any_other(client, fp32):
    texts = ["\x00\x01\x1b[31m", "caf\u00e9 \U0001f600 \u202e", "\t\n\r "]
    r = client.post("/v1/predict", json={"texts": texts})
    assert r.status_code == 200
    assert r.json()["predictions"] == answers(fp32, texts)


def test_a_predictor_that_caps_its_batch_caps_the_server_s(fp32):
    """A TensorRT engine lowers the Predictor's max_batch to its profile's largest batch; the
    server must form no larger batch (the engine would refuse it, failing valid requests)."""
    from starlette.testclient import TestClient

    class Capped:
        max_batch = 3

        def __init__(self):
            self.sizes: list[int | None] = []

        def metadata(self) -> dict:
            return fp32.metadata()

        def predict_batch(self, texts, batch_size=None):
            self.sizes.append(batch_size)  # predict_batch runs the model on chunks of batch_size texts
            return fp32.predict_batch(texts, batch_size)

    capped = Capped()
    with TestClient(create_app(capped, ServeConfig(max_batch=32, max_wait_ms=0))) as c:
        assert c.get("/v1/metadata").json()["serving"]["max_batch"] == 3
        r = c.post("/v1/predict", json={"texts": TEXTS[:7]})
    assert r.status_code == 200 and close(r.json()["predictions"], answers(fp32, TEXTS[:7]))
    assert capped.sizes and set(capped.sizes) == {3}


def test_bad_settings_fail_before_serving():
    with pytest.raises(Exception, match=r"--max-request-items 64 is over --queue-size 8"):
        ServeConfig(queue_size=8).check()
    with pytest.raises(Exception, match=r"--max-batch must be a positive integer, got 0"):
        ServeConfig(max_batch=0).check()
    for wait in (-1.0, float("inf"), float("nan"), 1e300):  # a lone request would wait for company for ever
        with pytest.raises(Exception, match=r"--max-wait-ms must be from 0 to 60000, got"):
            ServeConfig(max_wait_ms=wait).check()
    assert ServeConfig(max_wait_ms=60_000).check().max_wait_ms == 60_000


# --- batching and the queue ------------------------------------------------------------------


def _stats(url: str) -> dict:
    return httpx.get(f"{url}/v1/stats").json()


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_share_model_calls_only_with_batching(fp32, batching):
    gated = Gated(fp32)
    app = create_app(gated, ServeConfig(max_batch=64, max_wait_ms=0, batching=batching))
    with running(app) as url, ThreadPoolExecutor(16) as pool:
        first = pool.submit(post, url, TEXTS[:1])
        wait_for(lambda: len(gated.calls) == 1, "the first request's model call")
        rest = [pool.submit(post, url, [t]) for t in TEXTS[1:16]]
        wait_for(lambda: _stats(url)["queued_texts"] == 15, "15 queued requests")
        assert httpx.get(f"{url}/healthz").status_code == 200  # the loop answers while a batch runs
        gated.gate.set()
        responses = [f.result() for f in [first, *rest]]
        stats = _stats(url)
    assert [r.status_code for r in responses] == [200] * 16
    for text, r in zip(TEXTS, responses):
        assert close(r.json()["predictions"], answers(fp32, [text])), text
    assert (stats["requests"], stats["texts"], stats["rejected"]) == (16, 16, 0)
    if batching:
        assert stats["batches"] == 2 and [len(c) for c in gated.calls] == [1, 15]
    else:
        assert stats["batches"] == 16 and all(len(c) == 1 for c in gated.calls)


def test_requests_arriving_within_max_wait_are_batched(fp32):
    app = create_app(fp32, ServeConfig(max_batch=64, max_wait_ms=400))
    barrier = threading.Barrier(8)

    def send(text: str) -> httpx.Response:
        barrier.wait()
        return post(url, [text])

    with running(app) as url, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, TEXTS[:8]))
        stats = _stats(url)
    assert all(r.status_code == 200 for r in responses)
    assert all(close(r.json()["predictions"], answers(fp32, [t])) for t, r in zip(TEXTS, responses))
    assert stats["batches"] < 8, stats
    assert stats["largest_batch"] > 1, stats


def test_one_request_that_fails_its_batch_fails_alone(fp32):
    """A text the model refuses (say one longer than a TensorRT engine takes) fails the model
    call of every request batched with it; those requests are run again alone, so only its
    sender gets the 422."""

    class Picky:
        def __init__(self):
            self.calls: list[int] = []

        def metadata(self) -> dict:
            return fp32.metadata()

        def predict_batch(self, texts, batch_size=None):
            self.calls.append(len(texts))
            if "refused" in texts:
                raise PredictError("a text is 40 tokens but the engine accepts at most 16")
            return fp32.predict_batch(texts, batch_size)

    picky = Picky()
    app = create_app(picky, ServeConfig(max_batch=64, max_wait_ms=400))
    barrier = threading.Barrier(4)

    def send(texts: list[str]) -> httpx.Response:
        barrier.wait()
        return post(url, texts)

    requests = [[TEXTS[0]], ["refused"], [TEXTS[1], TEXTS[2]], [TEXTS[3]]]
    with running(app) as url, ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(send, requests))
    assert [r.status_code for r in responses] == [200, 422, 200, 200], [r.text for r in responses]
    assert "at most 16" in responses[1].json()["error"]
    for texts, r in zip(requests, responses):
        if r.status_code == 200:
            assert close(r.json()["predictions"], answers(fp32, texts))
    assert max(picky.calls) > 2, picky.calls  # they did share a model call first


def test_full_queue_answers_503_at_once_and_never_grows(fp32):
    gated = Gated(fp32)
    app = create_app(gated, ServeConfig(max_batch=1, max_wait_ms=0, queue_size=4, max_request_items=2))
    with running(app) as url, ThreadPoolExecutor(8) as pool:
        running_one = pool.submit(post, url, TEXTS[:1])
        wait_for(lambda: len(gated.calls) == 1, "the first model call")
        queued = [pool.submit(post, url, TEXTS[i : i + 2]) for i in (1, 3)]
        wait_for(lambda: _stats(url)["queued_texts"] == 4, "4 queued texts")
        start = time.monotonic()
        full = post(url, TEXTS[5:6])
        assert time.monotonic() - start < 5
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json() == {"error": "queue full: 4 texts are waiting (--queue-size 4); retry later"}
        assert _stats(url)["queued_texts"] == 4
        gated.gate.set()
        assert running_one.result().status_code == 200
        for i, f in zip((1, 3), queued):
            assert f.result().status_code == 200
            assert close(f.result().json()["predictions"], answers(fp32, TEXTS[i : i + 2]))
        assert post(url, TEXTS[5:6]).status_code == 200  # room again
        assert _stats(url)["rejected"] == 1


# --- the command: a real `ftexport-runtime serve` process -----------------------------------


def _start(bundle: Path, *options: str) -> tuple[subprocess.Popen, str, queue.Queue]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftexport_runtime.cli", "serve", str(bundle), "--port", "0", *options],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, f"serve exited with {proc.returncode}"
            continue
        if " at http://" in line:
            return proc, line.split(" at ", 1)[1].split()[0], lines
    proc.kill()
    raise AssertionError("serve did not print its address")


def test_sigterm_finishes_the_in_flight_request_then_exits_0(tiny_run, fp32):
    # A long max-wait keeps the lone request waiting in the batcher when SIGTERM arrives.
    proc, url, _ = _start(tiny_run[1].bundle, "--variant", "fp32", "--max-wait-ms", "1500")
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, "healthz")
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, url, TEXTS[:3])
            wait_for(lambda: _stats(url)["requests"] == 1, "the request to be queued")
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):  # no longer listening...
                httpx.get(f"{url}/healthz")
            r = pending.result()  # ...but the request it had accepted is answered
        assert r.status_code == 200
        assert r.json()["predictions"] == answers(fp32, TEXTS[:3])
        assert proc.wait(20) == 0
    finally:
        proc.kill()


def test_serve_errors_are_one_line(tiny_run, tmp_path):
    def serve(*args: str, code: str = "") -> subprocess.CompletedProcess:
        script = code + "import sys; from ftexport_runtime.cli import main; sys.exit(main(sys.argv[1:]))"
        return subprocess.run([sys.executable, "-c", script, "serve", *args], capture_output=True, text=True, timeout=60)

    bundle = str(tiny_run[1].bundle)
    missing = serve(bundle, code="import sys; sys.modules['uvicorn'] = None\n")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "error: serve needs the optional server stack (uvicorn is not installed): pip install 'ftexport-runtime[serve]'"
    ]
    r = serve(bundle, "--max-request-items", "10", "--queue-size", "5")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--max-request-items 10 is over --queue-size 5" in r.stderr
    with bind("127.0.0.1", 0) as taken:
        r = serve(bundle, "--port", str(taken.getsockname()[1]))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot listen on 127.0.0.1:"), r.stderr
    assert "choose another --port" in r.stderr


def test_the_core_runtime_imports_no_server_stack():
    code = (
        "import sys, ftexport_runtime, ftexport_runtime.cli\n"
        "loaded = [m for m in ('starlette', 'uvicorn', 'httpx', 'torch') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loadtest_tool_runs_and_checks_every_answer(tiny_run, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:8]) + "\n")
    out = tmp_path / "result.json"
    r = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[1] / "tools" / "loadtest.py"),
            str(tiny_run[1].bundle),
            "--duration",
            "1",
            "--warmup",
            "0",
            "--concurrency",
            "4",
            "--texts",
            str(texts),
            "--modes",
            "batching,no-batching@fp32",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    modes = json.loads(out.read_text())["modes"]
    assert set(modes) == {"batching", "no-batching@fp32"}
    for result in modes.values():
        assert result["ok"] > 0 and result["lost"] == 0 and result["wrong"] == 0, result
        assert result["server_exit_code"] == 0
    assert modes["no-batching@fp32"]["mean_batch"] == 1.0 and modes["no-batching@fp32"]["variant"] == "fp32"
