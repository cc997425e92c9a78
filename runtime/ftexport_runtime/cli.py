"""`ftexport-runtime`: predict with, inspect, verify and serve bundles from the shell.

The common commands (info, verify, serve) are here; the task commands (predict, embed,
generate, chat...) are the heads' (heads.base.Command): this module adds each one's bundle
argument and backend options, and hands it a way to load the Predictor.

argparse, not click: the runtime depends on onnxruntime, tokenizers and numpy only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from .bundle import Bundle
from .errors import FtexportError
from .heads import all_commands, get_head, serve_options, task_names
from .heads.base import Command
from .predictor import Predictor


def _head_command(command: Command) -> Callable[[argparse.Namespace], int]:
    """Run a head's command with a loader of the bundle named on the command line."""

    def run(args: argparse.Namespace) -> int:
        def load() -> Predictor:
            return Predictor.from_bundle(
                args.bundle,
                variant=args.variant,
                backend=args.backend,
                threads=args.threads,
                fallback=args.fallback,
                trt_cache=args.trt_cache,
            )

        return command.run(args, load)

    return run


def _info(args: argparse.Namespace) -> int:
    bundle = Bundle.open(args.bundle, verify="none" if args.no_verify else "all")
    m = bundle.manifest
    if args.json:
        print(json.dumps(m.to_json(), indent=2))
        return 0
    print(f"bundle    {bundle.root}")
    print(f"name      {m.name}\ntask      {m.task}\nlabels    {', '.join(m.labels)}\nmax len   {m.max_length}")
    describe = getattr(get_head(m.task), "describe", None)  # the task's own lines (a decoder's cache, an embedding's size)
    for line in describe(m) if describe else []:
        print(line)
    for name, v in m.variants.items():
        mark = " (default)" if name == m.default_variant else ""
        print(f"variant   {name}: {v.file} [{v.precision}]{mark}")
    if m.parity:
        print(f"parity    {'passed' if m.parity.get('passed') else 'FAILED'}")
    print("verified  " + ("no (--no-verify)" if args.no_verify else f"sha256 of {len(m.files)} files"))
    return 0


def _verify(args: argparse.Namespace) -> int:
    bundle = Bundle.open(args.bundle)
    print(f"ok: {len(bundle.manifest.files)} files match their sha256 in {bundle.root}/manifest.json")
    return 0


def _serve(args: argparse.Namespace) -> int:
    # The server stack is an optional extra: check for it before loading anything.
    try:
        import uvicorn  # noqa: F401

        from .server import ServeConfig, serve, serving_session_options
    except ImportError as e:
        raise FtexportError(
            f"serve needs the optional server stack ({e.name or e} is not installed): pip install 'ftexport-runtime[serve]'"
        ) from None
    config = ServeConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        queue_size=args.queue_size,
        max_text_chars=args.max_text_chars,
        max_request_items=args.max_request_items,
        batching=not args.no_batching,
        options={o.name: getattr(args, o.name) for o in serve_options()},
    ).check()
    predictor = Predictor.from_bundle(
        args.bundle,
        variant=args.variant,
        backend=args.backend,
        threads=args.threads,
        max_batch=args.max_batch,
        fallback=args.fallback,
        session_options=serving_session_options(),
        trt_cache=args.trt_cache,
    )
    head = predictor.head
    if not head.routes:  # a head that offers no HTTP routes
        served = " and ".join(task_names(serves=True))
        raise FtexportError(
            f"{args.bundle}: serve answers {served} bundles only; use `ftexport-runtime {head.command}` for this {head.name} bundle"
        )
    serve(predictor, config, host=args.host, port=args.port, access_log=args.access_log, graceful_timeout=args.graceful_timeout)
    return 0


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--variant",
        help="model variant from the manifest (default: the bundle's default); with --backend "
        "tensorrt and a bundle that holds TensorRT engines, the engine (fp16, int8, ...)",
    )
    p.add_argument(
        "--backend",
        default="cpu",
        choices=["cpu", "cuda", "tensorrt", "ort-tensorrt"],
        help="execution backend; tensorrt runs the bundle's TensorRT engine, or ONNX Runtime's TensorRT provider when it has none; "
        "ort-tensorrt always runs ONNX Runtime's TensorRT provider",
    )
    p.add_argument(
        "--fallback",
        choices=["cuda"],
        help="with --backend tensorrt: when the engine was built for another GPU or TensorRT version (or TensorRT is "
        "missing), run its ONNX model on ONNX Runtime CUDA instead of refusing",
    )
    p.add_argument(
        "--trt-cache",
        metavar="DIR",
        help="with ONNX Runtime's TensorRT provider: the folder for its engine and timing caches, so a restart does not rebuild "
        "engines (default: $FTEXPORT_TRT_CACHE, else ~/.cache/ftexport/tensorrt)",
    )
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="ftexport-runtime", description="Run ftexport bundles with ONNX Runtime (no torch).")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, argparse.ArgumentParser] = {}

    for command in all_commands():  # the heads' commands: predict, generate, chat, embed...
        p = commands[command.name] = sub.add_parser(command.name, help=command.help)
        p.add_argument("bundle", help="bundle directory or .tar.gz")
        command.arguments(p)
        _backend_args(p)
        p.set_defaults(func=_head_command(command))

    p = commands["info"] = sub.add_parser("info", help="show what a bundle holds")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    p.set_defaults(func=_info)

    p = commands["verify"] = sub.add_parser("verify", help="check every file's sha256 against the manifest")
    p.add_argument("bundle")
    p.set_defaults(func=_verify)

    p = commands["serve"] = sub.add_parser(
        "serve",
        help="serve a bundle over HTTP (its task's routes: POST /v1/predict, /v1/embeddings, /v1/generate) with micro-batching; "
        "needs ftexport-runtime[serve]",
    )
    p.add_argument("bundle", help="bundle directory or .tar.gz")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port, printed at start)")
    _backend_args(p)
    p.add_argument("--max-batch", type=int, default=32, help="most texts per model call (default: 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch under --max-batch waits for more requests (default: 5)")
    p.add_argument("--queue-size", type=int, default=256, help="most texts waiting; beyond it requests get 503 (default: 256)")
    p.add_argument("--max-text-chars", type=int, default=10_000, help="longest text accepted (default: 10000)")
    p.add_argument("--max-request-items", type=int, default=64, help="most texts per request (default: 64)")
    p.add_argument("--no-batching", action="store_true", help="run each request as its own model call")
    p.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="seconds to finish in-flight requests after SIGTERM/SIGINT (default: 30)"
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    for option in serve_options():  # the heads' own limits, e.g. --max-new-tokens for generation
        p.add_argument(f"--{option.name.replace('_', '-')}", type=int, default=option.default, help=option.help)
    p.set_defaults(func=_serve)
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, commands = build_parser()
    if argv and argv[0] in commands:  # options may follow the texts: predict B "a" --json
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FtexportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
