"""`ftexport-runtime serve`: one bundle behind an HTTP JSON API, with dynamic micro-batching.

    POST /v1/predict   {"texts": ["...", ...]} -> {"predictions": [{"label", "score", "scores"}, ...]}
    GET  /healthz      200 {"status": "ok"} while serving
    GET  /v1/metadata  task, labels, max_length, variant, backend and the serving limits
    GET  /v1/stats     requests, texts, batches run, rejections, texts waiting
    GET  /openapi.json an OpenAPI 3 description of the above

Built on Starlette and uvicorn (the optional extra `ftexport-runtime[serve]`), so HTTP
parsing, keep-alive and graceful shutdown are theirs; this module adds the batcher and the
request checks. Only the core runtime is imported by `import ftexport_runtime`, never this.

Requests wait in one bounded queue (counted in texts). A single worker takes what is
queued, waits up to max_wait_ms for more while the batch is under max_batch texts, and runs
one Predictor call in a worker thread, so the event loop keeps accepting and answering
requests meanwhile. A full queue answers 503 at once rather than growing. There is no
endpoint that loads a model: the bundle is fixed when the server starts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import onnxruntime as ort
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .errors import FtexportError

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


@dataclass(frozen=True)
class ServeConfig:
    """Batching and limits of one server. Every field is a `serve` option of the same name."""

    max_batch: int = 32  # texts per model call
    max_wait_ms: float = 5.0  # how long a batch under max_batch waits for company
    queue_size: int = 256  # texts waiting; beyond it requests get 503
    max_text_chars: int = 10_000  # characters per text (the tokenizer truncates far sooner)
    max_request_items: int = 64  # texts per request
    batching: bool = True  # False: one request per model call, in arrival order

    def check(self) -> ServeConfig:
        for name in ("max_batch", "queue_size", "max_text_chars", "max_request_items"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise FtexportError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.max_wait_ms < 0:
            raise FtexportError(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if self.max_request_items > self.queue_size:
            raise FtexportError(
                f"--max-request-items {self.max_request_items} is over --queue-size {self.queue_size}: "
                "such a request could never be queued; raise --queue-size or lower --max-request-items"
            )
        return self

    @property
    def max_body_bytes(self) -> int:
        # 12 bytes per character is the JSON worst case (an escaped surrogate pair is 12 bytes
        # for 2 characters; \u00XX is 6 for 1), plus quotes, commas and the envelope.
        return self.max_request_items * (12 * self.max_text_chars + 4) + 4096


def serving_session_options() -> ort.SessionOptions:
    """ONNX Runtime options for a server: intra-op threads sleep between calls instead of
    spin-waiting, so the event loop (HTTP parsing, JSON) gets the cores back as soon as a
    batch is done. Spinning only pays when model calls follow each other with nothing between."""
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future[list[dict[str, Any]]]


@dataclass
class Stats:
    requests: int = 0  # accepted into the queue
    texts: int = 0
    batches: int = 0  # model calls (Predictor.predict_batch calls)
    rejected: int = 0  # 503s: queue full or shutting down
    largest_batch: int = 0


@dataclass
class MicroBatcher:
    """Collects queued requests into batches and runs each batch in one worker thread.

    predict: texts -> one JSON-ready answer per text (runs in the worker thread).
    """

    predict: Callable[[list[str]], list[dict[str, Any]]]
    max_batch: int
    max_wait_s: float
    capacity: int  # texts
    batching: bool = True
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        # One thread: onnxruntime already spreads one call over every core it is given, so a
        # second concurrent call would only fight the first for them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftexport-predict")

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="ftexport-batcher")

    async def close(self) -> None:
        """Stop taking requests, answer every queued one, then stop the worker."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    async def submit(self, texts: list[str]) -> list[dict[str, Any]]:
        if self._closing:
            self.stats.rejected += 1
            raise ShuttingDown
        if self._queued + len(texts) > self.capacity:
            self.stats.rejected += 1
            raise QueueFull
        assert self._wakeup is not None, "MicroBatcher.start() was not called (the app's lifespan did not run)"
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._queued += len(texts)
        self.stats.requests += 1
        self.stats.texts += len(texts)
        self._wakeup.set()
        return await job.future

    def _pop(self) -> _Job:
        job = self._jobs.popleft()
        self._queued -= len(job.texts)
        return job

    async def _next_batch(self) -> list[_Job]:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        batch = [self._pop()]  # the first job always goes, even one larger than max_batch
        if not self.batching:
            return batch
        size = len(batch[0].texts)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch:
            while self._jobs and size + len(self._jobs[0].texts) <= self.max_batch:
                batch.append(self._pop())
                size += len(batch[-1].texts)
            remaining = deadline - loop.time()
            if self._jobs or size >= self.max_batch or remaining <= 0 or self._closing:
                break  # full, or the next job would overflow it, or time is up
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return batch

    async def _work(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._jobs:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # A client that went away while queued has a cancelled future: skip its texts.
            batch = [job for job in await self._next_batch() if not job.future.done()]
            if not batch:
                continue
            texts = [t for job in batch for t in job.texts]
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(texts))
            try:
                answers = await loop.run_in_executor(self._executor, self.predict, texts)
            except Exception as e:  # a bug or a broken model: fail this batch, keep serving
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            start = 0
            for job in batch:
                if not job.future.done():
                    job.future.set_result(answers[start : start + len(job.texts)])
                start += len(job.texts)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


async def _read_body(request: Request, config: ServeConfig) -> bytes:
    """The request body, refused as soon as it is known to pass config.max_body_bytes."""
    limit = config.max_body_bytes
    too_big = (
        f"request body is over {limit} bytes, the most that {config.max_request_items} texts "
        f"(--max-request-items) of {config.max_text_chars} characters (--max-text-chars) can take; "
        "send fewer or shorter texts"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_texts(body: bytes, config: ServeConfig) -> list[str]:
    """Check a /v1/predict body against the API and the limits; ApiError names what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not UTF-8 (bad byte at position {e.start}); send JSON encoded as UTF-8") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ApiError(400, f'request body is not valid JSON ({reason}); send {{"texts": ["..."]}}') from None
    if not isinstance(data, dict):
        raise ApiError(422, f'request body must be a JSON object {{"texts": [...]}}, got {_json_type(data)}')
    unknown = sorted(set(data) - {"texts"})
    if unknown:
        raise ApiError(422, f'unknown field {json.dumps(unknown[0])} in the request body; the only field is "texts"')
    if "texts" not in data:
        raise ApiError(422, 'request body has no "texts" field; send {"texts": ["..."]}')
    texts = data["texts"]
    if isinstance(texts, str):
        raise ApiError(422, '"texts" must be an array of strings, got a single string; wrap it in [...]')
    if not isinstance(texts, list):
        raise ApiError(422, f'"texts" must be an array of strings, got {_json_type(texts)}')
    if not texts:
        raise ApiError(422, '"texts" is empty; send at least one string')
    if len(texts) > config.max_request_items:
        raise ApiError(
            422,
            f'"texts" has {len(texts)} items, over the limit of {config.max_request_items} per request '
            "(--max-request-items); split it into smaller requests",
        )
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ApiError(422, f'"texts"[{i}] is {_json_type(t)}, not a string')
        if len(t) > config.max_text_chars:
            raise ApiError(
                422,
                f'"texts"[{i}] has {len(t)} characters, over the limit of {config.max_text_chars} '
                "(--max-text-chars); shorten it (the model reads only its first tokens anyway)",
            )
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, f'"texts"[{i}] is not valid Unicode (it holds a lone surrogate escape such as \\ud800)') from None
    return texts


def openapi_schema(config: ServeConfig, info: dict[str, Any]) -> dict[str, Any]:
    """The API as OpenAPI 3.1, with this server's limits in the schemas."""
    error = {"$ref": "#/components/schemas/Error"}

    def answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    labels = [str(x) for x in info.get("labels", [])]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"ftexport-runtime: {info.get('name', 'model')}",
            "version": str(info.get("runtime_version", "0")),
            "description": "Text classification with an ftexport bundle. Requests are micro-batched; "
            "a full queue answers 503 (retry later).",
        },
        "paths": {
            "/v1/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Label and scores for each text, in order",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
                    },
                    "responses": {
                        "200": answer("one prediction per text", {"$ref": "#/components/schemas/PredictResponse"}),
                        "400": answer("the body is not UTF-8 JSON", error),
                        "413": answer("the body is larger than the limits allow", error),
                        "422": answer("the JSON does not follow the schema or passes a limit", error),
                        "503": answer("the queue is full or the server is shutting down; retry later", error),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and readiness",
                    "responses": {
                        "200": answer("serving", {"type": "object", "properties": {"status": {"const": "ok"}}}),
                        "503": answer("shutting down", {"type": "object", "properties": {"status": {"type": "string"}}}),
                    },
                }
            },
            "/v1/metadata": {
                "get": {
                    "operationId": "metadata",
                    "summary": "The model (task, labels, max_length, variant, backend) and the serving limits",
                    "responses": {"200": answer("metadata", {"type": "object"})},
                }
            },
            "/v1/stats": {
                "get": {
                    "operationId": "stats",
                    "summary": "Counters since start: requests, texts, batches, rejections; texts waiting",
                    "responses": {"200": answer("counters", {"type": "object"})},
                }
            },
        },
        "components": {
            "schemas": {
                "PredictRequest": {
                    "type": "object",
                    "required": ["texts"],
                    "additionalProperties": False,
                    "properties": {
                        "texts": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": config.max_request_items,
                            "items": {"type": "string", "maxLength": config.max_text_chars},
                        }
                    },
                },
                "Prediction": {
                    "type": "object",
                    "required": ["label", "score", "scores"],
                    "properties": {
                        "label": {"type": "string", **({"enum": labels} if labels else {})},
                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
                    },
                },
                "PredictResponse": {
                    "type": "object",
                    "required": ["predictions"],
                    "properties": {"predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}},
                },
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            }
        },
    }


def create_app(predictor: Any, config: ServeConfig | None = None) -> Starlette:
    """The ASGI app serving `predictor` (a Predictor, or anything with its predict_batch and metadata).

    Run it with any ASGI server; its lifespan starts and drains the batcher, so the server
    must run lifespan events (uvicorn does by default).
    """
    from . import __version__

    config = (config or ServeConfig()).check()

    def predict(texts: list[str]) -> list[dict[str, Any]]:
        return [p.as_dict() for p in predictor.predict_batch(texts, batch_size=config.max_batch)]

    batcher = MicroBatcher(predict, config.max_batch, config.max_wait_ms / 1000, config.queue_size, config.batching)
    info = {**predictor.metadata(), "runtime_version": __version__}
    metadata = {**info, "serving": asdict(config)}
    schema = openapi_schema(config, info)

    async def predict_route(request: Request) -> JSONResponse:
        try:
            texts = parse_texts(await _read_body(request, config), config)
            answers = await batcher.submit(texts)
        except ApiError as e:
            return _error(e.status, e.message)
        except QueueFull:
            return _error(
                503,
                f"queue full: {batcher.queued} texts are waiting (--queue-size {config.queue_size}); retry later",
                {"Retry-After": "1"},
            )
        except ShuttingDown:
            return _error(503, "server is shutting down; retry on another instance", {"Connection": "close"})
        return JSONResponse({"predictions": answers})

    async def healthz(request: Request) -> JSONResponse:
        if batcher.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def metadata_route(request: Request) -> JSONResponse:
        return JSONResponse(metadata)

    async def stats_route(request: Request) -> JSONResponse:
        return JSONResponse({**asdict(batcher.stats), "queued_texts": batcher.queued})

    async def openapi_route(request: Request) -> JSONResponse:
        return JSONResponse(schema)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        message = {404: f"no endpoint {request.url.path}; see GET /openapi.json",
                   405: f"{request.method} is not allowed on {request.url.path}; see GET /openapi.json"}
        return _error(exc.status_code, message.get(exc.status_code, str(exc.detail)), dict(exc.headers or {}))

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        print(f"ftexport-runtime: error on {request.url.path}: {type(exc).__name__}: {first}", file=sys.stderr)
        return _error(500, f"internal error ({type(exc).__name__}: {first}); this is a bug, please report it")

    @asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        batcher.start()
        try:
            yield
        finally:
            await batcher.close()

    app = Starlette(
        routes=[
            Route("/v1/predict", predict_route, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/v1/metadata", metadata_route, methods=["GET"]),
            Route("/v1/stats", stats_route, methods=["GET"]),
            Route("/openapi.json", openapi_route, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.config = config
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        # Listening before the event loop starts queues early clients in the backlog
        # instead of refusing them.
        sock.listen(2048)
    except OSError as e:
        raise FtexportError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None
    return sock


def serve(
    predictor: Any,
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    access_log: bool = False,
    graceful_timeout: float = 30.0,
) -> None:
    """Serve until SIGTERM or SIGINT, then finish in-flight requests (up to graceful_timeout s)."""
    import uvicorn

    app = create_app(predictor, config)
    sock = bind(host, port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            access_log=access_log,
            log_level="info",
            lifespan="on",
            timeout_graceful_shutdown=graceful_timeout,
        )
    )
    address = sock.getsockname()
    shown = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
    meta = predictor.metadata()
    print(
        f"ftexport-runtime: serving {meta.get('name')} ({meta.get('variant')} on {meta.get('backend')}) "
        f"at http://{shown}:{address[1]} (POST /v1/predict, GET /healthz, GET /v1/metadata, GET /openapi.json)",
        file=sys.stderr,
        flush=True,
    )
    if not ipaddress.ip_address(address[0]).is_loopback:
        print(
            f"ftexport-runtime: warning: listening on {address[0]}, reachable from other machines; "
            "the API has no authentication, so put it behind a proxy that has",
            file=sys.stderr,
            flush=True,
        )
    # uvicorn finishes in-flight requests on SIGTERM/SIGINT and then re-raises the signal so
    # that its default action (death by signal) follows; these handlers make that a clean exit.
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn exits this way when the app's start-up fails
        raise FtexportError("the server stopped during start-up (see the log above)") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
