"""The HTTP side of `ftexport-runtime serve`: the common routes (/healthz, /v1/metadata,
/v1/stats, /openapi.json), the routes the bundle's head offers (heads.base.Route: POST
/v1/predict, /v1/embeddings, /v1/generate...), the ASGI app and the uvicorn server around one
Predictor. Nothing here knows a task: the head's routes get an `Api` that reads bodies within
the limits, queues work on the one micro-batcher and makes responses; this module maps the
queue's refusals to 503 and each route's errors to its own error shape."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from ..errors import FtexportError, PredictError
from ..heads import get_head, route_owners, serve_options
from ..heads.base import ApiError, Route, plain_error
from ..heads.predict import parse_texts
from .batcher import MicroBatcher, QueueFull, ShuttingDown
from .config import ServeConfig
from .openapi import openapi_schema

__all__ = ["Api", "ApiError", "bind", "create_app", "parse_texts", "serve"]

COMMON_ROUTES = ("GET /healthz", "GET /v1/metadata", "GET /v1/stats", "GET /openapi.json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(plain_error(status, message, None), status_code=status, headers=headers)


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


@dataclass
class Api:
    """What a head's route handler gets (heads.base.ServerApi): the predictor, the limits, the
    queue (its route's batch function, or lone calls) and the responses."""

    predictor: Any
    config: ServeConfig
    info: dict[str, Any]
    batcher: MicroBatcher
    defaults: dict[str, int]  # the serve options' defaults
    batch_fn: Callable[[list[str]], list[Any]] | None = None

    async def read_body(self, request: Request) -> bytes:
        return await _read_body(request, self.config)

    async def batch(self, texts: list[str]) -> list[Any]:
        """One answer per text from the route's batch function, micro-batched with other requests."""
        assert self.batch_fn is not None, "this route has no batch function (Route.batch)"
        return await self.batcher.submit(texts, self.batch_fn)

    async def call(self, fn: Callable[[], Any], cost: int = 1) -> Any:
        """fn() alone in the worker thread, in its turn in the queue (QueueFull: 503 at once)."""
        return await self.batcher.call(fn, cost)

    def start(self, fn: Callable[[], Any], cost: int = 1) -> asyncio.Future[Any]:
        """Queue fn() like `call` (QueueFull: 503 at once) without waiting for it."""
        return self.batcher.enqueue(fn, cost)

    def option(self, name: str) -> int:
        return int(self.config.options.get(name, self.defaults[name]))

    def watch_disconnect(self, request: Request, gone: threading.Event) -> asyncio.Task[None]:
        """Set `gone` when the client disconnects (call after reading the body; cancel the task when done)."""

        async def listen() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        return asyncio.get_running_loop().create_task(listen(), name="ftexport-disconnect")

    def json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse(data, status_code=status, headers=headers)

    def events(self, chunks: AsyncIterator[str]) -> Response:
        """Server-sent events: each chunk is one or more `data: ...` lines ending in a blank line."""
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _endpoint(route: Route, api: Api) -> Callable[[Request], Any]:
    """The Starlette endpoint of a head's route: its refusals in the route's error shape."""

    def refuse(status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(route.error(status, message, param), status_code=status, headers=headers)

    async def endpoint(request: Request) -> Response:
        try:
            return await route.handle(request, api)
        except ApiError as e:
            return refuse(e.status, e.message, e.param, e.headers)
        except PredictError as e:  # input the model cannot take (a prompt longer than its positions...)
            return refuse(422, str(e))
        except QueueFull:
            return refuse(
                503,
                f"queue full: {api.batcher.queued} texts are waiting (--queue-size {api.config.queue_size}); retry later",
                headers={"Retry-After": "1"},
            )
        except ShuttingDown:
            return refuse(503, "server is shutting down; retry on another instance", headers={"Connection": "close"})

    return endpoint


def create_app(predictor: Any, config: ServeConfig | None = None) -> Starlette:
    """The ASGI app serving `predictor` (a Predictor, or anything with its metadata and the
    methods its task's routes call, e.g. predict_batch for POST /v1/predict).

    Run it with any ASGI server; its lifespan starts and drains the batcher, so the server
    must run lifespan events (uvicorn does by default).
    """
    from .. import __version__

    config = (config or ServeConfig()).check()
    most = getattr(predictor, "max_batch", None)  # a TensorRT engine lowers it to its profile's largest batch
    if isinstance(most, int) and most < config.max_batch:
        config = replace(config, max_batch=most)  # batches the engine would refuse are never formed
    info = {**predictor.metadata(), "runtime_version": __version__}
    head = get_head(info["task"])
    routes = list(head.routes)
    batcher = MicroBatcher(None, config.max_batch, config.max_wait_ms / 1000, config.queue_size, config.batching)
    defaults = {o.name: o.default for o in serve_options()}
    own = {o.name: int(config.options.get(o.name, o.default)) for o in getattr(head, "serve_options", ())}
    metadata = {**info, "serving": {**config.settings(), **own}}  # the head's own options, at their values here
    schema = openapi_schema(config, info, routes)

    def bound(route: Route) -> Callable[[list[str]], list[Any]] | None:
        if route.batch is None:
            return None
        batch = route.batch
        return lambda texts: batch(predictor, texts, config.max_batch)  # one function per route: its requests batch together

    apis = [Api(predictor, config, info, batcher, defaults, bound(r)) for r in routes]

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

    mine = {r.path for r in routes}
    served = ", ".join(r.label for r in routes)

    def not_here(path: str) -> str:
        """The 404 line; for a route another task's bundle would answer, what this one answers."""
        others = [h for h in route_owners().get(path, []) if h is not head]
        if path in mine or not others:
            return f"no endpoint {path}; see GET /openapi.json"
        tasks = " and ".join(h.name for h in others)
        return (
            f"no endpoint {path}: this server's bundle is {head.name}, which answers {served} "
            f"({path} is for {tasks} bundles); see GET /openapi.json"
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        message = {
            404: not_here(request.url.path),
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
            *(StarletteRoute(r.path, _endpoint(r, api), methods=[r.method]) for r, api in zip(routes, apis)),
            StarletteRoute("/healthz", healthz, methods=["GET"]),
            StarletteRoute("/v1/metadata", metadata_route, methods=["GET"]),
            StarletteRoute("/v1/stats", stats_route, methods=["GET"]),
            StarletteRoute("/openapi.json", openapi_route, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.config = config
    app.state.routes = routes
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
    answers = [r.label for r in app.state.routes] + [c for c in COMMON_ROUTES if c != "GET /v1/stats"]
    print(
        f"ftexport-runtime: serving {meta.get('name')} ({meta.get('variant')} on {meta.get('backend')}) "
        f"at http://{shown}:{address[1]} ({', '.join(answers)})",
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
