"""`ftexport bench`: latency and throughput of PyTorch fp32 eager (the baseline, in every
run) and the bundle's ONNX variants through the runtime's Predictor, on the same texts,
in the same process, with the same thread count.

Every timed call goes from text to answer (tokenization included) because that is what an
application pays. Inputs are real held-out sentences cut to exactly `seq_len` tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ftexport_runtime import Predictor
from ftexport_runtime.backends import get_backend
from ftexport_runtime.bundle import Bundle

from . import progress
from .artifacts import make_key, read_record, stage_dir, write_record
from .errors import RecipeError
from .recipe import BenchSection
from .report import bench_html, bench_table, machine_info
from .tasks import get_task
from .train import check_model_dir, load_tokenizer

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
REPORT_HTML = "report.html"
SCHEMA_VERSION = 1

# Used when no held-out texts are given: plain English, so WordPiece lengths are realistic.
_FILLER = (
    "the film is a quiet , patient portrait of a family that slowly comes apart , and its "
    "best scenes are the ones in which nothing much seems to happen at all . the acting is "
    "uneven but the direction is confident , the score is lovely and the ending lands with "
    "real force . it is too long by half an hour and some of the jokes fall flat , yet it "
    "stays with you for days afterwards ."
)


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def texts_of_length(predictor: Predictor, seq_len: int, batch: int, pool: list[str] | None = None) -> list[str]:
    """`batch` different texts that each tokenize to exactly `seq_len` tokens (specials included)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(predictor.tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    words = " ".join(pool or [_FILLER]).split()
    while len(words) < 4 * seq_len + batch * 7:
        words = words + words
    out = []
    for row in range(batch):
        start = (row * 7) % max(1, len(words) - 3 * seq_len)
        text = " ".join(words[start : start + 3 * seq_len])
        enc = tok.encode(text)
        real = [i for i, s in enumerate(enc.special_tokens_mask) if not s]
        n_special = len(enc.ids) - len(real)
        want = seq_len - n_special
        for cut in (want, want - 1, want + 1, want - 2, want + 2):
            candidate = text[: enc.offsets[real[cut - 1]][1]]
            if len(predictor.tokenizer.encode(candidate).ids) == seq_len:
                out.append(candidate)
                break
        else:
            raise RecipeError(f"bench: could not build a text of exactly {seq_len} tokens")
    return out


def time_calls(fn: Callable[[], Any], warmup: int, iterations: int, max_seconds: float | None = None) -> list[float]:
    """Wall time of `iterations` calls after `warmup` untimed ones; with `max_seconds`, stop
    early once the budget is spent (at least 3 timed calls, so percentiles mean something)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and len(times) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return times


def summarize(times: list[float], batch: int) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "throughput_per_s": float(batch / (ms.mean() / 1e3)),
        "iterations": len(ms),
    }


def bench_key(bundle_dir: Path, reference_dir: Path, section: BenchSection) -> str:
    keys = [(read_record(d) or {}).get("key") or str(d.resolve()) for d in (bundle_dir, reference_dir)]
    return make_key("bench", keys, section.model_dump())


def _pytorch_runner(model: Any, tokenizer: Any, texts: list[str], max_length: int, device: str) -> Callable[[], Any]:
    import torch

    def run() -> Any:
        with torch.inference_mode():
            enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
            return torch.softmax(logits, -1).cpu()  # .cpu() waits for the GPU: the answer is on the host

    return run


def parse_backend(name: str) -> tuple[str, str, str | None]:
    """'pytorch' -> (pytorch, cpu, None); 'ort-cuda-fp16' -> (ort, cuda, fp16); 'ort-int8' -> (ort, cpu, int8);
    'optimum-int8' -> (optimum, cpu, None): the plain Optimum path, exported and quantized here."""
    if name == "optimum-int8":
        return "optimum", "cpu", None
    if name.startswith("pytorch"):
        return "pytorch", "cuda" if name == "pytorch-cuda" else "cpu", None
    rest = name.removeprefix("ort-")
    for device in ("cuda", "tensorrt", "cpu"):
        if rest.startswith(device + "-"):
            return "ort", device, rest[len(device) + 1 :]
    return "ort", "cpu", rest


def skip_reason(name: str, bundle: Bundle, reference_dir: Path | None) -> str | None:
    """Why this machine or this bundle cannot run a backend, or None when it can."""
    import onnxruntime as ort
    import torch

    kind, device, variant = parse_backend(name)
    if kind in ("pytorch", "optimum"):
        if reference_dir is None:
            return "no --reference model given"
        if device == "cuda" and not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return None
    if variant not in bundle.manifest.variants:
        return f"the bundle has no {variant} variant (it has: {', '.join(bundle.manifest.variants)})"
    provider = get_backend(device).provider
    if provider not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no {provider}"
    return None


def bench(
    bundle_dir: str | Path,
    reference_dir: str | Path | None,
    section: BenchSection,
    output: str | Path,
    texts_pool: list[str] | None = None,
    parity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time every requested backend in each grid cell; write bench.json, bench.md and
    report.html (plots; with `parity`, the accuracy-vs-latency scatter too)."""
    import torch

    bundle_dir, output = Path(bundle_dir), Path(output)
    reference = Path(reference_dir) if reference_dir else None
    bundle = Bundle.open(bundle_dir)
    too_long = [n for n in section.grid_seq_lens() if n > bundle.manifest.max_length]
    if too_long:
        raise RecipeError(f"bench sequence length {too_long[0]} exceeds the bundle's max_length {bundle.manifest.max_length}; use at most {bundle.manifest.max_length}")
    if reference is not None:
        check_model_dir(reference, "reference model")
    threads = section.threads or default_threads()
    torch.set_num_threads(threads)
    skipped = {b: r for b in section.backends if (r := skip_reason(b, bundle, reference))}
    backends = [b for b in section.backends if b not in skipped]
    progress.step(f"bench: {', '.join(backends)} at batch {section.batch_sizes} x seq {section.grid_seq_lens()}, {threads} threads")
    for b, reason in skipped.items():
        progress.info(f"{b}: skipped ({reason})")

    runners: dict[str, Any] = {}
    cleanup: list[Path] = []
    for b in backends:
        kind, device, variant = parse_backend(b)
        if kind == "pytorch":
            model = get_task(bundle.manifest.task).auto_model_class().from_pretrained(str(reference)).eval().to(device)
            runners[b] = (model, load_tokenizer(reference, "reference model"), device)
        elif kind == "optimum":
            from .export import plain_optimum_int8

            progress.info("optimum-int8: exporting and quantizing the reference the plain Optimum way (ORTModel + ORTQuantizer preset)")
            work = Path(tempfile.mkdtemp(prefix="ftexport-optimum-"))
            cleanup.append(work)
            runners[b] = (plain_optimum_int8(reference, work, threads), load_tokenizer(reference, "reference model"), "cpu")
        else:
            runners[b] = Predictor(bundle, variant=variant, backend=device, threads=threads)
    texts_source = next((r for r in runners.values() if isinstance(r, Predictor)), None) or Predictor(bundle, threads=threads)

    results = []
    for seq_len in section.grid_seq_lens():
        for batch in section.batch_sizes:
            texts = texts_of_length(texts_source, seq_len, batch, texts_pool)
            for b in backends:
                runner = runners[b]
                if isinstance(runner, Predictor):
                    fn = lambda p=runner: p.predict(texts)  # noqa: E731
                else:
                    fn = _pytorch_runner(*runner[:2], texts, bundle.manifest.max_length, runner[2])
                stats = summarize(time_calls(fn, section.warmup, section.iterations, section.max_seconds), batch)
                results.append({"backend": b, "batch": batch, "seq_len": seq_len, **stats})
                progress.info(f"{b:14s} batch {batch:3d} seq {seq_len:4d}  p50 {stats['p50_ms']:8.2f} ms  p99 {stats['p99_ms']:8.2f} ms  {stats['throughput_per_s']:8.1f} seq/s")

    for work in cleanup:
        shutil.rmtree(work, ignore_errors=True)
    cells = {(r["backend"], r["batch"], r["seq_len"]): r for r in results}
    for r in results:
        base = cells.get(("pytorch", r["batch"], r["seq_len"]))
        r["speedup_vs_pytorch"] = base["p50_ms"] / r["p50_ms"] if base else None
        # int8 or GPU slower than fp32 on the CPU is a finding, not something to hide
        fp32 = cells.get(("ort-fp32", r["batch"], r["seq_len"]))
        kind, device, variant = parse_backend(r["backend"])
        if fp32 and r is not fp32 and (device != "cpu" or "int8" in (variant or "") or kind == "optimum") and r["p50_ms"] > fp32["p50_ms"]:
            r["flag"] = f"slower than ort-fp32 on the CPU ({r['p50_ms']:.2f} vs {fp32['p50_ms']:.2f} ms)"
    sizes = {b: bundle.path_of(bundle.variant(parse_backend(b)[2]).file).stat().st_size for b in backends if parse_backend(b)[0] == "ort"}
    report = {
        "schema_version": SCHEMA_VERSION,
        "machine": machine_info(),
        "threads": threads,
        "seq_len": section.seq_len if section.seq_len in section.grid_seq_lens() else section.grid_seq_lens()[0],
        "seq_lens": section.grid_seq_lens(),
        "batch_sizes": section.batch_sizes,
        "warmup": section.warmup,
        "iterations": section.iterations,
        "model_bytes": sizes,
        "skipped": skipped,
        "results": results,
    }
    with stage_dir(output) as tmp:
        (tmp / BENCH_JSON).write_text(json.dumps(report, indent=2) + "\n")
        (tmp / BENCH_MD).write_text(bench_table(report) + "\n")
        (tmp / REPORT_HTML).write_text(bench_html(report, parity))
        write_record(
            tmp, "bench", bench_key(bundle_dir, reference or bundle_dir, section),
            {"bundle": (read_record(bundle_dir) or {}).get("key")}, section.model_dump(), {},
        )
    return report


def load_report(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / BENCH_JSON
    if not path.is_file():
        raise RecipeError(f"{directory}: no {BENCH_JSON} (run `ftexport bench` first)")
    return json.loads(path.read_text())


def compare_reports(old: dict[str, Any], new: dict[str, Any], tolerance: float) -> list[dict[str, Any]]:
    """Per cell (backend, batch, seq) found in both reports: old and new p50 and the change.
    A cell whose p50 grew by more than `tolerance` (0.1 = 10%) is a regression."""
    before = {(r["backend"], r["batch"], r["seq_len"]): r for r in old.get("results", [])}
    rows = []
    for r in new["results"]:
        o = before.get((r["backend"], r["batch"], r["seq_len"]))
        if o is None:
            continue
        change = r["p50_ms"] / o["p50_ms"] - 1.0
        rows.append({"backend": r["backend"], "batch": r["batch"], "seq_len": r["seq_len"], "old_p50_ms": o["p50_ms"],
                     "new_p50_ms": r["p50_ms"], "change": change, "regression": change > tolerance})
    return rows


def read_report_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / BENCH_JSON
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecipeError(f"{path}: not a readable bench.json ({str(e)[:120]})") from None
    if not isinstance(report, dict) or report.get("schema_version") != SCHEMA_VERSION or "results" not in report:
        raise RecipeError(f"{path}: not a bench.json of schema version {SCHEMA_VERSION}; re-run `ftexport bench` to make one")
    return report

