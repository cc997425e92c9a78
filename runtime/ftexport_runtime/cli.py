"""`ftexport-runtime`: predict with, inspect and verify bundles from the shell.

argparse, not click: the runtime depends on onnxruntime, tokenizers and numpy only.
"""

from __future__ import annotations

import argparse
import json
import sys

from .bundle import Bundle
from .errors import FtexportError
from .heads import task_names
from .predictor import Predictor


def _predict(args: argparse.Namespace) -> int:
    texts = list(args.texts)
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            texts += [line.rstrip("\n") for line in f if line.strip()]
    predictor = Predictor.from_bundle(
        args.bundle, variant=args.variant, backend=args.backend, threads=args.threads, fallback=args.fallback, trt_cache=args.trt_cache
    )
    preds = predictor.predict(texts)
    if args.json:
        print(json.dumps([dict(text=t, **p.as_dict()) for t, p in zip(texts, preds)], indent=2))
    else:
        for t, p in zip(texts, preds):  # the task's head says how an answer reads as text
            print(predictor.head.format_text(t, p))
    return 0


def _generate(args: argparse.Namespace) -> int:
    predictor = Predictor.from_bundle(
        args.bundle, variant=args.variant, backend=args.backend, threads=args.threads, fallback=args.fallback, trt_cache=args.trt_cache
    )
    results = predictor.generate(
        list(args.prompts),
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        use_cache=not args.no_cache,
    )
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.prompt}{r.text}" if r.text.startswith(" ") or not r.text else f"{r.prompt} {r.text}")
    return 0


def _info(args: argparse.Namespace) -> int:
    bundle = Bundle.open(args.bundle, verify="none" if args.no_verify else "all")
    m = bundle.manifest
    if args.json:
        print(json.dumps(m.to_json(), indent=2))
        return 0
    print(f"bundle    {bundle.root}")
    print(f"name      {m.name}\ntask      {m.task}\nlabels    {', '.join(m.labels)}\nmax len   {m.max_length}")
    if m.generation:
        g = m.generation
        print(f"decoder   {g.get('num_layers')} layers x {g.get('num_heads')} heads with KV cache, eos id {g.get('eos_id')}")
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
    if not head.serves:  # POST /v1/predict classifies; generation over HTTP is not built yet
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

    p = commands["predict"] = sub.add_parser("predict", help="print label and score for each text (entities for an NER bundle)")
    p.add_argument("bundle", help="bundle directory or .tar.gz")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", help="also read texts from this file, one per line")
    _backend_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_predict)

    p = commands["generate"] = sub.add_parser("generate", help="continue prompts with a text-generation bundle (KV cache, numpy sampling)")
    p.add_argument("bundle", help="bundle directory or .tar.gz")
    p.add_argument("prompts", nargs="+", help="prompts to continue (a batch, left-padded)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="tokens to add at most; stops earlier at eos (default: 20)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="with --sample: divide logits by this (default: 1.0)")
    p.add_argument("--top-k", type=int, help="with --sample: draw among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="with --sample: draw from the smallest set whose probability reaches p (nucleus)")
    p.add_argument("--seed", type=int, help="with --sample: RNG seed, for a reproducible draw")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence each step (slow; for checking the cache)")
    _backend_args(p)
    p.add_argument("--json", action="store_true", help="print JSON (prompt, text, token_ids, stopped_at_eos)")
    p.set_defaults(func=_generate)

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
        help="serve a bundle over HTTP (POST /v1/predict) with micro-batching; needs ftexport-runtime[serve]",
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
