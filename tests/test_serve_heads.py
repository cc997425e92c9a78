"""Heads bring their own commands and routes: the CLI and the server are generic (a new head's
command and route appear without touching either), and the generate head's POST /v1/generate
(JSON or server-sent events, its limits and one-line errors, the queue, a disconnect stopping
the generation, the event loop free while it runs)."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from ftexport_runtime import Predictor, Token
from ftexport_runtime import heads as heads_registry
from ftexport_runtime.heads.base import Command, Route, ServeOption
from test_runtime_chat import CONVERSATIONS, TEMPLATE, build_decoder, with_generation

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

with warnings.catch_warnings():  # Starlette 1.x warns about httpx in its TestClient; it works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from ftexport_runtime.cli import build_parser  # noqa: E402
from ftexport_runtime.server import ServeConfig, bind, create_app  # noqa: E402

LIMITS = ServeConfig(max_batch=8, max_wait_ms=1, queue_size=4, max_text_chars=100, max_request_items=3, options={"max_new_tokens": 16})


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    return build_decoder(tmp_path_factory)


@pytest.fixture(scope="module")
def chat_bundle(decoder, tmp_path_factory) -> Path:
    return with_generation(decoder, tmp_path_factory.mktemp("chat") / "bundle", chat_template=TEMPLATE)


@pytest.fixture(scope="module")
def gp(chat_bundle) -> Predictor:
    return Predictor.from_bundle(chat_bundle)


@pytest.fixture(scope="module")
def client(gp) -> Iterator[TestClient]:
    with TestClient(create_app(gp, LIMITS), raise_server_exceptions=False) as c:
        yield c


def events(body: str) -> list[dict]:
    """The data of each server-sent event; every event is one `data: {json}` line and a blank line."""
    assert body.endswith("\n\n"), body[-50:]
    chunks = body[:-2].split("\n\n")
    assert all(c.startswith("data: ") and "\n" not in c for c in chunks), chunks
    return [json.loads(c[len("data: ") :]) for c in chunks]


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --- POST /v1/generate -------------------------------------------------------------------------


def test_generate_answers_what_the_predictor_answers(client, gp):
    g = gp.generate("the film is", max_new_tokens=8)[0]
    r = client.post("/v1/generate", json={"prompt": "the film is", "max_new_tokens": 8})
    assert r.status_code == 200, r.text
    assert r.json() == {"text": g.text, "token_ids": g.token_ids, "stopped_at_eos": g.stopped_at_eos}
    reply = gp.chat(CONVERSATIONS[1], max_new_tokens=8)[0]
    r = client.post("/v1/generate", json={"messages": CONVERSATIONS[1], "max_new_tokens": 8})
    assert r.json()["token_ids"] == reply.token_ids
    sampled = dict(do_sample=True, temperature=1.3, top_k=20, top_p=0.95, seed=2, max_new_tokens=8)
    r = client.post("/v1/generate", json={"prompt": "the story", **sampled})
    assert r.json()["token_ids"] == gp.generate("the story", **sampled)[0].token_ids
    default = client.post("/v1/generate", json={"prompt": "the story"}).json()  # 20 tokens as generate(), within the limit of 16
    assert len(default["token_ids"]) <= 16 and default["token_ids"] == gp.generate("the story", max_new_tokens=16)[0].token_ids


def test_stream_sends_one_event_per_token_then_the_whole(client, gp):
    for body, expected in (
        ({"prompt": "the film is", "max_new_tokens": 10}, gp.generate("the film is", max_new_tokens=10)[0]),
        ({"messages": CONVERSATIONS[2], "max_new_tokens": 10, "do_sample": True, "seed": 5}, None),
    ):
        whole = client.post("/v1/generate", json=body).json()
        r = client.post("/v1/generate", json={**body, "stream": True})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        *tokens, done = events(r.text)
        assert all(set(t) == {"token", "id"} for t in tokens)
        assert [t["id"] for t in tokens] == whole["token_ids"] == done["token_ids"]
        assert done == {"done": True, **whole}
        assert "".join(t["token"] for t in tokens) == done["text"]
        if expected is not None:
            assert done["token_ids"] == expected.token_ids and done["text"] == expected.text


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"prompt": "the"', 400, r"not valid JSON \(.*\); send \{\"prompt\""),
        (b'"the film"', 422, r'must be a JSON object \{"prompt": "\.\.\."\}, got a string'),
        (b'{"prompt": "a", "messages": []}', 422, r'send "prompt" or "messages", not both'),
        (b'{"max_new_tokens": 3}', 422, r'send "prompt" or "messages", one of them'),
        (b'{"prompt": "a", "n": 2}', 422, r'unknown field "n" in the request body; the fields are "prompt", "messages"'),
        (b'{"prompt": 3}', 422, r'"prompt" is a number, not a string'),
        (json.dumps({"prompt": "x" * 101}).encode(), 422, r'"prompt" has 101 characters, over the limit of 100 \(--max-text-chars\)'),
        (b'{"prompt": "\\ud800"}', 422, "lone surrogate"),
        (b'{"messages": "hi"}', 422, r'"messages" must be a non-empty array'),
        (b'{"messages": []}', 422, r'"messages" must be a non-empty array'),
        (json.dumps({"messages": [{"role": "user", "content": "a"}] * 4}).encode(), 422, r"4 items, over the limit of 3 per request"),
        (b'{"messages": ["hi"]}', 422, r'"messages"\[0\] is a string, not an object'),
        (b'{"messages": [{"role": "user"}]}', 422, r'"messages"\[0\] has no "content"'),
        (b'{"messages": [{"role": "user", "content": 1}]}', 422, r'"messages"\[0\]\.content is a number, not a string'),
        (b'{"messages": [{"role": "tool", "content": "x"}]}', 422, r"chat template refused these messages \(roles are system, user"),
        (
            b'{"prompt": "a", "max_new_tokens": 17}',
            422,
            r'"max_new_tokens" is 17, over the limit of 16 \(--max-new-tokens\); ask for fewer',
        ),
        (b'{"prompt": "a", "max_new_tokens": 0}', 422, r'"max_new_tokens" must be at least 1'),
        (b'{"prompt": "a", "max_new_tokens": "5"}', 422, r'"max_new_tokens" must be an integer, got a string'),
        (b'{"prompt": "a", "max_new_tokens": true}', 422, r'"max_new_tokens" must be an integer, got a boolean'),
        (b'{"prompt": "a", "temperature": "hot"}', 422, r'"temperature" must be a number'),
        (b'{"prompt": "a", "do_sample": true, "temperature": 0}', 422, r"temperature must be > 0"),
        (b'{"prompt": "a", "top_k": 0}', 422, r"top_k must be a positive integer"),
        (b'{"prompt": "a", "top_p": 2}', 422, r"top_p must be in \(0, 1\]"),
        (b'{"prompt": "a", "seed": 1.5}', 422, r'"seed" must be an integer'),
        (b'{"prompt": "a", "do_sample": true, "seed": -1}', 422, r"seed must be an integer of 0 or more, got -1"),
        (b'{"prompt": "a", "do_sample": true, "seed": -1, "stream": true}', 422, r"seed must be an integer of 0 or more"),
        (b'{"prompt": "a", "do_sample": true, "temperature": 1e-320}', 422, r"temperature 1e-320 is under 0.0001"),
        (b'{"prompt": "a", "stream": "yes"}', 422, r'"stream" must be true or false, got a string'),
        (
            json.dumps({"prompt": "\u00e9" * 40, "stream": True}).encode(),
            422,
            r"a prompt of \d+ tokens leaves no room in the model's 48",
        ),
        (json.dumps({"prompt": "x" * 10_000_000}).encode(), 413, r"request body is over \d+ bytes"),
    ],
)
def test_bad_requests_get_one_line_json_errors(client, body, status, message):
    r = client.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")  # refused before any event, streaming or not
    error = r.json()["error"]
    assert "\n" not in error and re.search(message, error), error
    assert client.post("/v1/generate", json={"prompt": "the", "max_new_tokens": 2}).status_code == 200


def test_a_bundle_without_template_refuses_messages(decoder):
    with TestClient(create_app(Predictor.from_bundle(decoder), LIMITS)) as c:
        r = c.post("/v1/generate", json={"messages": CONVERSATIONS[0]})
        assert r.status_code == 422 and r.json()["error"].startswith("chat(): this bundle has no chat template")
        assert c.post("/v1/generate", json={"prompt": "the film", "max_new_tokens": 2}).status_code == 200


def test_openapi_metadata_and_other_routes(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/v1/generate", "/healthz", "/v1/metadata", "/v1/stats"}
    request = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert request["max_new_tokens"]["maximum"] == 16 and request["messages"]["maxItems"] == 3
    assert set(spec["paths"]["/v1/generate"]["post"]["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert refs <= set(spec["components"]["schemas"]), refs
    meta = client.get("/v1/metadata").json()
    assert meta["task"] == "text-generation" and meta["chat"] is True and meta["serving"]["max_new_tokens"] == 16
    r = client.post("/v1/predict", json={"texts": ["a"]})
    assert r.status_code == 404 and r.json()["error"].startswith(
        "no endpoint /v1/predict: this server's bundle is text-generation, which answers POST /v1/generate"
    )


# --- one generation at a time, in the worker thread ------------------------------------------


class SlowStream:
    """A Stream stand-in that makes a token every `pause` seconds until `n`, or until closed."""

    def __init__(self, n: int, pause: float, gate: threading.Event | None = None):
        self.n, self.pause, self.gate = n, pause, gate
        self.made, self.closed, self.result = 0, False, None

    def __iter__(self):
        return self

    def __next__(self) -> Token:
        if self.gate is not None:
            assert self.gate.wait(20), "the test never opened the gate"
        if self.closed or self.made >= self.n:
            from ftexport_runtime import Generation

            self.result = Generation("p", "x" * self.made, list(range(self.made)), False)
            raise StopIteration
        time.sleep(self.pause)
        self.made += 1
        return Token(self.made - 1, "x")

    def close(self) -> None:
        self.closed = True


class Slow:
    """A generation Predictor whose streams are SlowStreams."""

    def __init__(self, predictor: Predictor, pause: float = 0.05, gate: threading.Event | None = None):
        self.predictor, self.pause, self.gate, self.streams = predictor, pause, gate, []

    def metadata(self) -> dict:
        return self.predictor.metadata()

    def stream(self, prompt=None, max_new_tokens=20, messages=None, **settings):
        self.streams.append(SlowStream(max_new_tokens, self.pause, self.gate))
        return self.streams[-1]


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


def test_a_client_that_disconnects_stops_its_generation_and_the_loop_stays_free(gp):
    slow = Slow(gp, pause=0.05)
    app = create_app(slow, ServeConfig(options={"max_new_tokens": 400}))
    with running(app) as url:
        with httpx.Client(base_url=url, timeout=30) as c:
            with c.stream("POST", "/v1/generate", json={"prompt": "the", "max_new_tokens": 400, "stream": True}) as r:
                assert r.status_code == 200
                seen = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                        if len(seen) == 2:
                            break
                start = time.monotonic()
                assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # answered while tokens are being made
                assert time.monotonic() - start < 1.0
        # the connection is closed: the worker stops at its next token, far short of 400
        wait_for(lambda: slow.streams[0].closed, "the generation to stop")
        assert [e["id"] for e in seen] == [0, 1] and slow.streams[0].made < 100
        # without streaming too: a client that gives up stops the generation
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/generate", json={"prompt": "the", "max_new_tokens": 400}, timeout=0.5)
        wait_for(lambda: slow.streams[1].closed, "the generation to stop")
        assert slow.streams[1].made < 100
        assert httpx.post(f"{url}/v1/generate", json={"prompt": "the", "max_new_tokens": 3}, timeout=10).json()["token_ids"] == [0, 1, 2]


def test_generations_run_one_at_a_time_and_a_full_queue_answers_503(gp):
    gate = threading.Event()
    slow = Slow(gp, pause=0, gate=gate)
    config = ServeConfig(queue_size=2, max_request_items=2)
    with TestClient(create_app(slow, config)) as c, ThreadPoolExecutor(4) as pool:
        first = pool.submit(c.post, "/v1/generate", json={"prompt": "a", "max_new_tokens": 2})
        wait_for(lambda: len(slow.streams) == 1, "the first generation")
        waiting = [pool.submit(c.post, "/v1/generate", json={"prompt": "b", "max_new_tokens": 2, "stream": s}) for s in (False, True)]
        wait_for(lambda: c.get("/v1/stats").json()["queued_texts"] == 2, "two queued generations")
        assert len(slow.streams) == 1  # one at a time: the others wait their turn
        full = c.post("/v1/generate", json={"prompt": "c", "stream": True})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert full.json() == {"error": "queue full: 2 texts are waiting (--queue-size 2); retry later"}
        gate.set()
        assert first.result().json() == {"text": "xx", "token_ids": [0, 1], "stopped_at_eos": False}
        assert waiting[0].result().json()["token_ids"] == [0, 1]
        assert [e.get("id") for e in events(waiting[1].result().text)] == [0, 1, None]
        stats = c.get("/v1/stats").json()
        assert (stats["requests"], stats["rejected"], stats["batches"]) == (3, 1, 3)
        c.portal.call(c.app.state.batcher.close)
        r = c.post("/v1/generate", json={"prompt": "d"})
        assert r.status_code == 503 and r.json() == {"error": "server is shutting down; retry on another instance"}


# --- `ftexport-runtime serve` of a generation bundle -----------------------------------------


def test_serve_a_generation_bundle(chat_bundle, gp):
    bad = subprocess.run(
        [sys.executable, "-m", "ftexport_runtime.cli", "serve", str(chat_bundle), "--max-new-tokens", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.splitlines() == ["error: --max-new-tokens must be a positive integer, got 0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftexport_runtime.cli", "serve", str(chat_bundle), "--port", "0", "--max-new-tokens", "8"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        url = None
        end = time.monotonic() + 60
        while url is None:
            assert time.monotonic() < end and proc.poll() is None, "serve did not start"
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if " at http://" in line:
                assert "(POST /v1/generate, GET /healthz, GET /v1/metadata, GET /openapi.json)" in line, line
                url = line.split(" at ", 1)[1].split()[0]
        r = httpx.post(f"{url}/v1/generate", json={"prompt": "the film is", "max_new_tokens": 9}, timeout=30)
        assert r.status_code == 422 and "over the limit of 8 (--max-new-tokens)" in r.json()["error"]
        r = httpx.post(f"{url}/v1/generate", json={"messages": CONVERSATIONS[0], "max_new_tokens": 8, "stream": True}, timeout=30)
        assert [e["id"] for e in events(r.text)[:-1]] == gp.chat(CONVERSATIONS[0], max_new_tokens=8)[0].token_ids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()


# --- the design: a head's command and route need no change to the CLI or the server ----------


def _toy_arguments(p) -> None:
    p.add_argument("word")


def _toy_run(args, load) -> int:
    print(f"toy says {args.word} to {load().metadata()['task']}")
    return 0


async def _toy_handle(request, api):
    body = json.loads(await api.read_body(request))
    answers = await api.batch([body["word"]])
    return api.json({"echo": answers[0], "limit": api.option("toy_limit")})


def _toy_openapi(config, info):
    return {"operationId": "toy", "responses": {"200": {"description": "an echo"}}}, {"ToyAnswer": {"type": "object"}}


class ToyHead:
    """A head of a made-up task: one command, one route, one serve option."""

    name = "toy-task"
    encoder = False
    serves = True
    hint = "use toy()"
    command = "toy"
    commands = (Command("toy", "say a word", _toy_arguments, _toy_run),)
    routes = (Route("POST", "/v1/toy", _toy_handle, _toy_openapi, batch=lambda p, texts, size: [t.upper() for t in texts]),)
    serve_options = (ServeOption("toy_limit", 3, "a toy limit"),)

    @staticmethod
    def check_manifest(data, where):
        return {}

    def __init__(self, predictor) -> None:
        pass


class ToyPredictor:
    def metadata(self) -> dict:
        return {"name": "toy", "task": "toy-task", "labels": []}


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setattr(heads_registry, "_HEADS", dict(heads_registry._HEADS))
    heads_registry.register_head(ToyHead)
    yield ToyHead


def test_every_head_brings_its_commands_and_routes():
    _, commands = build_parser()
    offered = {c.name for c in heads_registry.all_commands()}
    assert offered == {"predict", "generate", "chat", "embed"}
    assert set(commands) == offered | {"info", "verify", "serve"}
    info = {"name": "m", "task": "t", "labels": ["a"], "embedding": {"dimension": 8}}
    paths = set()
    for task in heads_registry.task_names():
        head = heads_registry.get_head(task)
        assert head.serves == bool(head.routes) and head.command in {c.name for c in head.commands}
        for route in head.routes:
            operation, schemas = route.openapi(LIMITS, info)
            refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps([operation, schemas])))
            assert refs <= set(schemas) | {"Error"}, (task, refs)
            paths.add(route.label)
    assert paths == {"POST /v1/predict", "POST /v1/embeddings", "POST /v1/generate"}
    assert heads_registry.task_names(serves=True) == heads_registry.task_names()


def test_a_new_head_gets_its_command_and_route_without_touching_cli_or_server(toy_registered, capsys, monkeypatch):
    from ftexport_runtime import cli

    parser, commands = build_parser()
    assert "toy" in commands
    args = commands["toy"].parse_intermixed_args(["some/bundle", "hello", "--threads", "2"])
    assert (args.bundle, args.word, args.threads) == ("some/bundle", "hello", 2)  # the CLI added the bundle and backend options
    monkeypatch.setattr(cli.Predictor, "from_bundle", classmethod(lambda cls, *a, **k: ToyPredictor()))
    assert cli.main(["toy", "some/bundle", "hello"]) == 0
    assert capsys.readouterr().out == "toy says hello to toy-task\n"
    serve_args = commands["serve"].parse_intermixed_args(["some/bundle", "--toy-limit", "5"])
    assert serve_args.toy_limit == 5
    with TestClient(create_app(ToyPredictor(), ServeConfig(options={"toy_limit": 5}))) as c:
        assert c.post("/v1/toy", json={"word": "hi"}).json() == {"echo": "HI", "limit": 5}
        assert set(c.get("/openapi.json").json()["paths"]) == {"/v1/toy", "/healthz", "/v1/metadata", "/v1/stats"}
        r = c.post("/v1/predict", json={"texts": ["a"]})
        assert r.status_code == 404 and "this server's bundle is toy-task, which answers POST /v1/toy" in r.json()["error"]
    with TestClient(create_app(ToyPredictor())) as c:
        assert c.post("/v1/toy", json={"word": "hi"}).json()["limit"] == 3  # the option's default
