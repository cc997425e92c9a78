"""What a head offers beyond its Predictor methods: its `ftexport-runtime` commands (`Command`),
its HTTP routes under `ftexport-runtime serve` (`Route`, with their OpenAPI pieces) and the
serve options those routes read (`ServeOption`), plus the request checks routes share.

Nothing here imports argparse's parsers, Starlette or uvicorn: the CLI hands a command its
parser and a way to load the Predictor, and the server hands a route's handler the request
and an `api` object (see `ServerApi`) that reads bodies, queues work and makes responses. So
`import ftexport_runtime` stays light, and heads stay below the CLI and the server.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import FtexportError

# ---- CLI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A `ftexport-runtime NAME BUNDLE ...` subcommand.

    arguments(parser) adds the command's own arguments; the CLI adds the `bundle` positional
    before them and the backend options (--variant, --backend, --fallback, --threads) after.
    run(args, load) does the work and returns the exit code; `load()` opens the bundle and
    returns its Predictor (call it after checking the arguments, so bad options fail at once).
    Raise FtexportError (PredictError, ...) for bad input: the CLI prints its one line, exit 2.
    """

    name: str
    help: str
    arguments: Callable[[Any], None]
    run: Callable[[Any, Callable[[], Any]], int]


def add_texts_arguments(parser: Any, what: str) -> None:
    """TEXT... and --file, for commands that take a list of texts."""
    parser.add_argument("texts", nargs="*", help=f"texts to {what}")
    parser.add_argument("--file", help="also read texts from this file, one per line (blank lines skipped)")


def read_texts(args: Any) -> list[str]:
    """The texts of the command line, then those of --file."""
    texts = list(args.texts)
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                texts += [line.rstrip("\n") for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise FtexportError(f"--file {args.file}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not texts:  # before the bundle is loaded
        raise FtexportError(
            f"--file {args.file}: no texts in it (blank lines are skipped)"
            if args.file and not args.texts
            else "no texts: give TEXT arguments or --file FILE (one text per line)"
        )
    return texts


# ---- HTTP -----------------------------------------------------------------------------------


class ApiError(Exception):
    """A request the server refuses: the status and one line saying what is wrong (and, for
    APIs that report it, the request field `param` that holds the problem)."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers


def plain_error(status: int, message: str, param: str | None) -> dict[str, Any]:
    """The body of an error answer: {"error": "one line"} (the server's own shape)."""
    return {"error": message}


@dataclass(frozen=True)
class Route:
    """An HTTP route a head offers under `ftexport-runtime serve`.

    handle(request, api): the async handler; it reads the body with `api.read_body(request)`,
        queues work with `api.batch(texts)` or `api.call(fn)` / `api.start(fn)`, and answers
        with `api.json(...)` or `api.events(...)`. Raise ApiError (or PredictError: 422) to
        refuse; the server answers QueueFull / shutting down with 503 itself.
    openapi(config, info) -> (operation, schemas): the route's OpenAPI operation object and
        the component schemas it refers to (#/components/schemas/NAME; "Error" exists).
    batch(predictor, texts, batch_size) -> one JSON-ready answer per text: what
        `api.batch(texts)` runs in the worker thread, micro-batched with other requests.
    error(status, message, param) -> the JSON body of an error answer of this route.
    summary: what the route does, for the 404 hint another head's server gives.
    """

    method: str
    path: str
    handle: Callable[[Any, Any], Awaitable[Any]]
    openapi: Callable[[Any, dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]
    batch: Callable[[Any, list[str], int], list[Any]] | None = None
    error: Callable[[int, str, str | None], dict[str, Any]] = plain_error
    summary: str = ""

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class ServeOption:
    """A `serve` option a head's routes read (`--NAME` with dashes, a positive integer),
    e.g. the generate head's --max-new-tokens; the route reads it as `api.option(name)`."""

    name: str
    default: int
    help: str


class ServerApi(Protocol):
    """What the server gives a route handler (ftexport_runtime.server.app.Api)."""

    predictor: Any  # the served Predictor (or an object with the methods the route calls)
    config: Any  # the ServeConfig: limits (max_request_items, max_text_chars, max_batch, ...)
    info: dict[str, Any]  # Predictor.metadata() and runtime_version

    async def read_body(self, request: Any) -> bytes: ...  # refused with 413 past the size limit

    async def batch(self, texts: list[str]) -> list[Any]: ...  # the route's batch function, micro-batched

    async def call(self, fn: Callable[[], Any], cost: int = 1) -> Any: ...  # fn() alone in the worker thread

    def start(self, fn: Callable[[], Any], cost: int = 1) -> Any: ...  # queue fn(), return its asyncio future

    def option(self, name: str) -> int: ...

    def watch_disconnect(self, request: Any, gone: Any) -> Any: ...  # sets gone (threading.Event); .cancel()

    def json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any: ...

    def events(self, chunks: Any) -> Any: ...  # text/event-stream of an async iterator of str


_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


def json_type(value: Any) -> str:
    """How a JSON value's type reads in an error: 'an object', 'a number', 'null'..."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def load_json(body: bytes, example: str) -> Any:
    """The JSON of a request body; ApiError 400 when it is not UTF-8 JSON (`example`: what to send)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not UTF-8 (bad byte at position {e.start}); send JSON encoded as UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ApiError(400, f"request body is not valid JSON ({reason}); send {example}") from None


def check_text_items(texts: Sequence[Any], field: str, config: Any) -> list[str]:
    """A JSON array of texts (field `field` of the body) against the limits: how many, each a
    string, each at most config.max_text_chars characters, each valid Unicode."""
    if len(texts) > config.max_request_items:
        raise ApiError(
            422,
            f'"{field}" has {len(texts)} items, over the limit of {config.max_request_items} per request '
            "(--max-request-items); split it into smaller requests",
            field,
        )
    for i, t in enumerate(texts):
        check_text(t, f'"{field}"[{i}]', config, field)
    return list(texts)


def check_text(t: Any, where: str, config: Any, param: str | None = None, what: str = "a string") -> str:
    """One text of a request: a string, not longer than config.max_text_chars, valid Unicode."""
    if not isinstance(t, str):
        raise ApiError(422, f"{where} is {json_type(t)}, not {what}", param)
    if len(t) > config.max_text_chars:
        raise ApiError(
            422,
            f"{where} has {len(t)} characters, over the limit of {config.max_text_chars} "
            "(--max-text-chars); shorten it (the model reads only its first tokens anyway)",
            param,
        )
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(422, f"{where} is not valid Unicode (it holds a lone surrogate escape such as \\ud800)", param) from None
    return t


def check_fields(data: Any, allowed: Sequence[str], example: str) -> dict[str, Any]:
    """A request body that must be a JSON object with only the `allowed` fields."""
    if not isinstance(data, dict):
        raise ApiError(422, f"request body must be a JSON object {example}, got {json_type(data)}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        if len(allowed) == 1:
            known = f'the only field is "{allowed[0]}"'
        else:
            known = "the fields are " + ", ".join(f'"{a}"' for a in allowed)
        raise ApiError(422, f"unknown field {json.dumps(unknown[0])} in the request body; {known}", unknown[0])
    return data


def request_schema_error() -> dict[str, Any]:
    """The OpenAPI answers every route shares (bad JSON, too big, schema or limit, 503)."""
    error = {"$ref": "#/components/schemas/Error"}
    return {
        "400": answer("the body is not UTF-8 JSON", error),
        "413": answer("the body is larger than the limits allow", error),
        "422": answer("the JSON does not follow the schema or passes a limit", error),
        "503": answer("the queue is full or the server is shutting down; retry later", error),
    }


def answer(description: str, schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    """An OpenAPI response object."""
    return {"description": description, "content": {media: {"schema": schema}}}


def json_body(ref: str) -> dict[str, Any]:
    """An OpenAPI requestBody holding the component schema `ref`."""
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}
