"""The HTTP side of `ftexport-runtime serve`: the routes, the request checks, the ASGI app
and the uvicorn server around one Predictor."""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import FtexportError
from .batcher import MicroBatcher, QueueFull, ShuttingDown
from .config import ServeConfig
from .openapi import openapi_schema

_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


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


def create_app(predictor: Any, config: ServeConfig | None = None) -> Starlette:
    """The ASGI app serving `predictor` (a Predictor, or anything with its predict_batch and metadata).

    Run it with any ASGI server; its lifespan starts and drains the batcher, so the server
    must run lifespan events (uvicorn does by default).
    """
    from .. import __version__

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
        message = {
            404: f"no endpoint {request.url.path}; see GET /openapi.json",
            405: f"{request.method} is not allowed on {request.url.path}; see GET /openapi.json",
        }
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
