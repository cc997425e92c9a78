"""How a text-generation bundle is used from outside the process: its commands and its route.

    ftexport-runtime generate BUNDLE PROMPT... [--stream] [--json] [sampling options]
    ftexport-runtime chat BUNDLE MESSAGE [--system TEXT] [--stream] [--json] [sampling options]
    POST /v1/generate   {"prompt": "..."} or {"messages": [...]}, sampling settings, "stream"
        stream false -> {"text", "token_ids", "stopped_at_eos"}
        stream true  -> text/event-stream: data: {"token", "id"} per token, then
                        data: {"done": true, "text", "token_ids", "stopped_at_eos"}

A generation runs alone in the server's worker thread (one at a time, in arrival order,
through the same bounded queue as batched requests), so the event loop goes on answering
meanwhile; its tokens reach the event loop as they are made. A client that disconnects stops
its generation at the next token. The code here uses only Predictor methods (generate, chat,
stream), so it imports nothing of the generation loop.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FtexportError
from .base import ApiError, Command, Route, ServeOption, check_fields, check_text, json_body, json_type, load_json
from .base import request_schema_error as common_answers

MAX_NEW_TOKENS = ServeOption(
    "max_new_tokens", 512, "text-generation bundles: the most new tokens a request may ask for; more is refused with 422 (default: 512)"
)
DEFAULT_NEW_TOKENS = 20  # as Predictor.generate

# ---- commands ---------------------------------------------------------------------------------


def _sampling_arguments(p: Any) -> None:
    p.add_argument(
        "--max-new-tokens", type=int, default=DEFAULT_NEW_TOKENS, help="tokens to add at most; stops earlier at eos (default: 20)"
    )
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="with --sample: divide logits by this (default: 1.0)")
    p.add_argument("--top-k", type=int, help="with --sample: draw among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="with --sample: draw from the smallest set whose probability reaches p (nucleus)")
    p.add_argument("--seed", type=int, help="with --sample: RNG seed, for a reproducible draw")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (slow; for checking the cache)")
    p.add_argument("--stream", action="store_true", help="print each token as it is made")


def _settings(args: Any) -> dict[str, Any]:
    return {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.sample,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "use_cache": not args.no_cache,
    }


def _no_stream_json(args: Any) -> None:
    if args.stream and args.json:
        raise FtexportError("--stream prints the text as it is made and --json prints whole results; choose one")


def _print_stream(stream: Any, before: str = "", space: bool = False) -> None:
    """Write a Stream's text as it comes (after `before`; `space`: one space between them when
    the continuation does not start with one, as the non-streaming output reads)."""
    out = sys.stdout
    out.write(before)
    out.flush()
    first = True
    for token in stream:
        if token.text:
            if first and space and not token.text.startswith(" "):
                out.write(" ")
            first = False
            out.write(token.text)
            out.flush()
    out.write("\n")
    out.flush()


def _as_json(g: Any) -> dict[str, Any]:
    return {**g.as_dict(), "stop_id": g.stop_id}


def _generate_arguments(p: Any) -> None:
    p.add_argument("prompts", nargs="+", help="prompts to continue (a batch, left-padded; with --stream, one after another)")
    _sampling_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON (prompt, text, token_ids, stopped_at_eos, stop_id)")


def _generate_run(args: Any, load: Callable[[], Any]) -> int:
    _no_stream_json(args)
    predictor = load()
    if args.stream:  # every prompt is checked (stream() refuses before any model call) before the first is printed
        streams = [predictor.stream(prompt, **_settings(args)) for prompt in args.prompts]
        for prompt, stream in zip(args.prompts, streams):
            _print_stream(stream, prompt, space=True)
        return 0
    results = predictor.generate(list(args.prompts), **_settings(args))
    if args.json:
        print(json.dumps([_as_json(r) for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.prompt}{r.text}" if r.text.startswith(" ") or not r.text else f"{r.prompt} {r.text}")
    return 0


def _chat_arguments(p: Any) -> None:
    p.add_argument("message", help="the user's message")
    p.add_argument("--system", help="a system message before it")
    _sampling_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON (the rendered prompt, text, token_ids, stopped_at_eos, stop_id)")


def _chat_run(args: Any, load: Callable[[], Any]) -> int:
    _no_stream_json(args)
    messages = ([{"role": "system", "content": args.system}] if args.system is not None else []) + [
        {"role": "user", "content": args.message}
    ]
    predictor = load()
    if args.stream:
        _print_stream(predictor.stream(messages=messages, **_settings(args)))
        return 0
    reply = predictor.chat(messages, **_settings(args))[0]
    print(json.dumps(_as_json(reply), indent=2) if args.json else reply.text)
    return 0


GENERATE = Command(
    "generate", "continue prompts with a text-generation bundle (KV cache, numpy sampling)", _generate_arguments, _generate_run
)
CHAT = Command("chat", "one reply of a chat model to a message (its chat template, stop ids)", _chat_arguments, _chat_run)


# ---- POST /v1/generate ----------------------------------------------------------------------

FIELDS = ("prompt", "messages", "max_new_tokens", "temperature", "top_k", "top_p", "do_sample", "seed", "stream")
EXAMPLE = '{"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}'


@dataclass
class GenerateRequest:
    prompt: str | None
    messages: list[dict[str, Any]] | None
    stream: bool
    settings: dict[str, Any] = field(default_factory=dict)


def _number(data: dict[str, Any], key: str, integer: bool) -> Any:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ApiError(422, f'"{key}" must be {"an integer" if integer else "a number"}, got {json_type(value)}', key)
    return value


def parse_generate(body: bytes, config: Any, max_new_tokens: int) -> GenerateRequest:
    """Check a /v1/generate body against the API and the limits; ApiError names what is wrong."""
    data = check_fields(load_json(body, EXAMPLE), FIELDS, '{"prompt": "..."}')
    if ("prompt" in data) == ("messages" in data):
        raise ApiError(422, f'send "prompt" or "messages", {"not both" if "prompt" in data else "one of them"}: {EXAMPLE}')
    prompt = messages = None
    if "prompt" in data:
        prompt = check_text(data["prompt"], '"prompt"', config, "prompt")
    else:
        messages = data["messages"]
        if not isinstance(messages, list) or not messages:
            raise ApiError(
                422, f'"messages" must be a non-empty array of {{"role", "content"}} objects, got {json_type(messages)}', "messages"
            )
        if len(messages) > config.max_request_items:
            raise ApiError(
                422,
                f'"messages" has {len(messages)} items, over the limit of {config.max_request_items} per request (--max-request-items)',
                "messages",
            )
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ApiError(422, f'"messages"[{i}] is {json_type(m)}, not an object {{"role", "content"}}', "messages")
            for key in ("role", "content"):
                if key not in m:
                    raise ApiError(422, f'"messages"[{i}] has no "{key}"', "messages")
                check_text(m[key], f'"messages"[{i}].{key}', config, "messages")
    settings: dict[str, Any] = {}
    n = _number(data, "max_new_tokens", integer=True)
    if n is not None:
        if n < 1:
            raise ApiError(422, f'"max_new_tokens" must be at least 1, got {n}', "max_new_tokens")
        if n > max_new_tokens:
            raise ApiError(
                422, f'"max_new_tokens" is {n}, over the limit of {max_new_tokens} (--max-new-tokens); ask for fewer', "max_new_tokens"
            )
    settings["max_new_tokens"] = min(DEFAULT_NEW_TOKENS, max_new_tokens) if n is None else n
    for key, integer in (("temperature", False), ("top_k", True), ("top_p", False), ("seed", True)):
        value = _number(data, key, integer)
        if value is not None:
            settings[key] = value
    for key in ("do_sample", "stream"):
        if key in data and not isinstance(data[key], bool):
            raise ApiError(422, f'"{key}" must be true or false, got {json_type(data[key])}', key)
    settings["do_sample"] = bool(data.get("do_sample", False))
    return GenerateRequest(prompt, messages, bool(data.get("stream", False)), settings)


def _answer(g: Any) -> dict[str, Any]:
    return {"text": g.text, "token_ids": g.token_ids, "stopped_at_eos": g.stopped_at_eos}


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


async def _handle(request: Any, api: Any) -> Any:
    req = parse_generate(await api.read_body(request), api.config, api.option(MAX_NEW_TOKENS.name))
    predictor = api.predictor
    gone = threading.Event()  # set when the client disconnects: the worker stops at the next token

    def open_stream() -> Any:
        return predictor.stream(req.prompt, messages=req.messages, **req.settings)

    if not req.stream:

        def whole() -> Any:
            stream = open_stream()
            for _ in stream:
                if gone.is_set():
                    stream.close()
                    return None
            return stream.result

        watcher = api.watch_disconnect(request, gone)
        try:
            result = await api.call(whole)
        finally:
            watcher.cancel()
        if result is None:
            return api.json({"error": "the client disconnected; generation stopped"}, status=499)
        return api.json(_answer(result))

    import asyncio  # here, not at the top: `import ftexport_runtime` loads no event loop machinery

    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def emit(kind: str, value: Any = None) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (the server stopped): nobody listens
            pass

    def work() -> None:
        # every path ends with one of: error (before the first token), done, failed, stopped
        if gone.is_set():
            emit("stopped")
            return
        try:
            stream = open_stream()
        except Exception as e:  # noqa: BLE001  # handed to the handler: 422 for a PredictError, 500 otherwise
            emit("error", e)
            return
        emit("started")
        try:
            for token in stream:
                if gone.is_set():
                    stream.close()
                    emit("stopped")
                    return
                emit("token", token)
            emit("done", stream.result)
        except Exception as e:  # noqa: BLE001  # the response has started: reported as an event
            emit("failed", e)

    watcher = api.watch_disconnect(request, gone)
    try:
        api.start(work)  # QueueFull / shutting down: 503 at once
        kind, value = await events.get()  # waits its turn in the queue, then the prompt's checks
    except BaseException:
        gone.set()
        watcher.cancel()
        raise
    if kind != "started":
        watcher.cancel()
        if kind == "error":
            raise value  # PredictError: 422 with its line; anything else: 500
        return api.json({"error": "the client disconnected; generation stopped"}, status=499)

    async def body() -> AsyncIterator[str]:
        try:
            while True:
                kind, value = await events.get()
                if kind == "token":
                    yield _event({"token": value.text, "id": value.id})
                elif kind == "done":
                    yield _event({"done": True, **_answer(value)})
                    return
                elif kind == "failed":
                    print(f"ftexport-runtime: error on /v1/generate: {type(value).__name__}: {_one_line(value)}", file=sys.stderr)
                    yield _event({"error": f"internal error ({type(value).__name__}: {_one_line(value)}); this is a bug, please report it"})
                    return
                else:
                    return
        finally:
            gone.set()  # finished, or the client went away (the response task was cancelled): the worker stops
            watcher.cancel()

    return api.events(body())


def _openapi(config: Any, info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    limit = (config.options or {}).get(MAX_NEW_TOKENS.name, MAX_NEW_TOKENS.default)
    text = {"type": "string", "maxLength": config.max_text_chars}
    operation = {
        "operationId": "generate",
        "summary": "Continue a prompt, or reply to a conversation with the model's chat template; JSON, or server-sent events per token",
        "requestBody": json_body("GenerateRequest"),
        "responses": {
            "200": {
                "description": 'the generation (stream false), or text/event-stream: data: {"token", "id"} per token, '
                'then data: {"done": true, "text", "token_ids", "stopped_at_eos"}',
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/GenerateResponse"}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **common_answers(),
        },
    }
    schemas = {
        "Message": {
            "type": "object",
            "required": ["role", "content"],
            "properties": {"role": text, "content": text},
        },
        "GenerateRequest": {
            "type": "object",
            "additionalProperties": False,
            "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
            "properties": {
                "prompt": text,
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": config.max_request_items,
                    "items": {"$ref": "#/components/schemas/Message"},
                },
                "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": limit, "default": min(DEFAULT_NEW_TOKENS, limit)},
                "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
                "top_k": {"type": ["integer", "null"], "minimum": 1},
                "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
                "do_sample": {"type": "boolean", "default": False},
                "seed": {"type": ["integer", "null"], "minimum": 0},
                "stream": {"type": "boolean", "default": False},
            },
        },
        "GenerateResponse": {
            "type": "object",
            "required": ["text", "token_ids", "stopped_at_eos"],
            "properties": {
                "text": {"type": "string"},
                "token_ids": {"type": "array", "items": {"type": "integer"}},
                "stopped_at_eos": {"type": "boolean"},
            },
        },
    }
    return operation, schemas


GENERATE_ROUTE = Route("POST", "/v1/generate", _handle, _openapi, summary="continues prompts and chats")
