"""`ftexport bench`: latency and throughput of PyTorch fp32 eager (the baseline, in every
run), torch.compile, the plain Optimum path and the bundle's ONNX variants through the
runtime's Predictor, on the same texts, in the same process, with the same thread count.

Every timed call goes from text to answer (tokenization included) because that is what an
application pays. Inputs are held-out sentences cut to exactly each `seq_len` tokens, and
("real traffic") held-out sentences as they come, so that dynamic padding counts. Each cell
is checked for parity before it is timed; cold start and peak memory come from a fresh
process per backend (ftexport/coldstart.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftexport_runtime import Predictor
from ftexport_runtime.backends import get_backend
from ftexport_runtime.bundle import Bundle
from ftexport_runtime.errors import BackendUnavailable
from ftexport_runtime.postprocess import softmax

from . import progress
from .artifacts import make_key, read_record, stage_dir, write_record
from .coldstart import torch_probs
from .errors import RecipeError, first_line
from .recipe import BenchSection, DataSection
from .report import bench_html, bench_table, machine_info
from .tasks import get_task
from .methods import check_reference, is_adapter_dir, load_reference
from .train import load_tokenizer

BENCH_JSON = "bench.json"
BENCH_MD = "bench.md"
REPORT_HTML = "report.html"
SCHEMA_VERSION = 2
REAL_BATCHES = 8  # distinct held-out batches per real-traffic cell, cycled through

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


def held_out_texts(data: DataSection, n: int = 512, labelled: bool = True) -> list[str]:
    """Texts for the benchmark's inputs: a seeded sample of the recipe's test split."""
    from .data import load_data

    return load_data(data.model_copy(update={"max_test_samples": n}), ("test",), labelled=labelled)["test"].texts


def read_texts(path: str | Path) -> list[str]:
    """One text per line (blank lines ignored), for `ftexport bench --texts`."""
    try:
        texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"--texts {path}: cannot read it ({first_line(e, 300)}); give a UTF-8 text file with one text per line") from None
    if not texts:
        raise RecipeError(f"--texts {path}: no texts in it; give a UTF-8 text file with one text per line")
    return texts


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


@dataclass
class Runner:
    """One backend, ready: `answer` is what an application calls (timed), `probs` gives class
    probabilities for the parity check that comes before any timing."""

    name: str
    answer: Callable[[list[str]], Any]
    probs: Callable[[list[str]], np.ndarray]
    spec: dict[str, Any]  # how a fresh process rebuilds it, for the cold-start measurement
    predictor: Predictor | None = None


@dataclass
class Cell:
    batch: int
    seq_len: int | str  # "real": held-out texts as they come, padded per batch
    batches: list[list[str]]  # every backend gets these same batches, in this order
    tokens: float  # mean padded length of a batch


def parse_backend(name: str) -> tuple[str, str, str | None]:
    """'pytorch' -> (pytorch, cpu, None); 'pytorch-compile' -> (pytorch-compile, cpu, None);
    'ort-cuda-fp16' -> (ort, cuda, fp16); 'ort-int8' -> (ort, cpu, int8);
    'optimum-int8' -> (optimum, cpu, None): the plain Optimum path, exported and quantized here."""
    if name == "optimum-int8":
        return "optimum", "cpu", None
    if name == "pytorch-compile":
        return "pytorch-compile", "cpu", None
    if name.startswith("trt-"):  # a TensorRT engine of the bundle: 'trt-fp16' -> (trt, tensorrt, fp16)
        return "trt", "tensorrt", name[4:]
    if name.startswith("pytorch"):
        return "pytorch", "cuda" if name == "pytorch-cuda" else "cpu", None
    rest = name.removeprefix("ort-")
    for device in ("cuda", "tensorrt", "cpu"):
        if rest.startswith(device + "-"):
            return "ort", device, rest[len(device) + 1 :]
    return "ort", "cpu", rest


def _cxx_compiler() -> str | None:
    return next((p for p in (shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")) if p), None)


def skip_reason(name: str, bundle: Bundle, reference_dir: Path | None) -> str | None:
    """Why this machine or this bundle cannot run a backend, or None when it can."""
    import onnxruntime as ort
    import torch

    kind, device, variant = parse_backend(name)
    if kind == "trt":
        return engine_skip_reason(bundle, variant)  # type: ignore[arg-type]
    if kind == "optimum" and bundle.manifest.task != "text-classification":
        return f"the plain-Optimum baseline is built for text-classification (ORTModelForSequenceClassification), not {bundle.manifest.task}"
    if kind != "ort":
        if reference_dir is None:
            return "no --reference model given"
        if device == "cuda" and not torch.cuda.is_available():
            return "torch sees no CUDA device"
        if kind == "optimum" and is_adapter_dir(reference_dir):
            return "the reference is an unmerged prefix/prompt adapter, which Optimum's ORTModel cannot export"
        if kind == "pytorch-compile" and _cxx_compiler() is None:
            return "torch.compile's inductor needs a C++ compiler and none was found (install g++)"
        return None
    if variant not in bundle.manifest.variants:
        return f"the bundle has no {variant} variant (it has: {', '.join(bundle.manifest.variants)})"
    provider = get_backend(device).provider
    if provider not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no {provider}"
    return None


def engine_skip_reason(bundle: Bundle, name: str) -> str | None:
    from ftexport_runtime.trt_engine import current_fingerprint, fingerprint_mismatch

    engine = bundle.manifest.engines.get(name)
    if engine is None:
        return f"the bundle has no TensorRT engine {name!r} (it has: {', '.join(bundle.manifest.engines) or 'none'}; build them with ftexport export --trt --bundle B)"
    try:
        problems = fingerprint_mismatch(engine.fingerprint, current_fingerprint(driver=False))
    except BackendUnavailable as e:
        return str(e)
    return f"engine built for another machine: {'; '.join(problems)}" if problems else None


def _build_runner(name: str, bundle: Bundle, bundle_dir: Path, reference: Path | None, threads: int, workdir: Path) -> Runner:
    kind, device, variant = parse_backend(name)
    spec: dict[str, Any] = {"kind": kind, "device": device, "variant": variant, "bundle": str(bundle_dir.resolve()), "threads": threads,
                            "reference": str(reference.resolve()) if reference else None, "max_length": bundle.manifest.max_length,
                            "task": bundle.manifest.task}
    if kind in ("ort", "trt"):
        p = Predictor(bundle, variant=variant, backend=device, threads=threads)
        return Runner(name, p.predict, _per_row(lambda texts: softmax(p.logits(texts))), spec, p)
    import torch

    tokenizer = load_tokenizer(reference, "reference model")  # type: ignore[arg-type]
    if kind == "optimum":
        from .export import plain_optimum_int8

        progress.info("optimum-int8: exporting and quantizing the reference the plain Optimum way (ORTModel + ORTQuantizer preset)")
        model = plain_optimum_int8(reference, workdir / "optimum", threads)  # type: ignore[arg-type]
        spec["optimum_dir"] = str(workdir / "optimum" / "int8")
    else:
        model = load_reference(reference, get_task(bundle.manifest.task)).to(device)  # type: ignore[arg-type]
        if kind == "pytorch-compile":
            progress.info("pytorch-compile: torch.compile(dynamic=True); the first call compiles (can take a minute)")
            model = torch.compile(model, dynamic=True)
    fn = torch_probs(model, tokenizer, bundle.manifest.max_length, device)
    return Runner(name, fn, _per_row(fn), spec)


def _per_row(probs: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    """Class probabilities as rows: token classification gives [texts, tokens, labels], which
    becomes one row per token (padding included: every backend pads a batch the same way), so
    batches of different padded lengths concatenate and the parity check reads per token."""

    def rows(texts: list[str]) -> np.ndarray:
        p = probs(texts)
        return p.reshape(-1, p.shape[-1])

    return rows


def make_cells(section: BenchSection, predictor: Predictor, pool: list[str] | None, notes: list[str]) -> list[Cell]:
    """The grid's cells: texts cut to each exact length, then (traffic real/both) batches of
    held-out texts as they come, so that padding to the longest text in a batch counts."""
    max_length = predictor.max_length
    cells: list[Cell] = []
    if section.traffic in ("fixed", "both"):
        for seq_len in section.grid_seq_lens(max_length):
            for batch in section.batch_sizes:
                cells.append(Cell(batch, seq_len, [texts_of_length(predictor, seq_len, batch, pool)], float(seq_len)))
    if section.traffic in ("real", "both"):
        if not pool:
            notes.append("real traffic: skipped (no held-out texts; give --recipe or --texts)")
        else:
            rng = random.Random(0)
            for batch in section.batch_sizes:
                batches = [rng.choices(pool, k=batch) for _ in range(REAL_BATCHES)]
                lengths = [max(len(e.ids) for e in predictor.tokenizer.encode_batch(b)) for b in batches]
                cells.append(Cell(batch, "real", batches, float(np.mean(lengths))))
    return cells


def _cycle(answer: Callable[[list[str]], Any], batches: list[list[str]]) -> Callable[[], Any]:
    state = {"i": 0}

    def call() -> Any:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        return answer(batch)

    return call


def run_cell(cell: Cell, runners: dict[str, Runner], baseline: str, section: BenchSection,
             failed: dict[str, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parity first (a backend whose answers differ from the baseline's gets no speed figure),
    then timing in `repeats` rounds with the backends interleaved, so drift on a shared machine
    lands on every backend alike and shows up as spread between rounds."""
    where = {"batch": cell.batch, "seq_len": cell.seq_len}
    reference: np.ndarray | None = None
    timed, refused = [], []
    parity: dict[str, dict[str, Any]] = {}
    for name in [baseline] + [n for n in runners if n != baseline]:
        if name in failed:
            continue
        try:
            probs = np.concatenate([runners[name].probs(b) for b in cell.batches])
        except Exception as e:  # a backend that cannot run this cell (compile failure, OOM) is reported, not fatal
            failed[name] = f"failed at batch {cell.batch} seq {cell.seq_len}: {first_line(e, 300)}"
            progress.info(f"{name}: {failed[name]}")
            continue
        if reference is None:
            reference = probs
        # The mean over texts, not the max: int8 moves a borderline text's probability by 0.2
        # now and then (that is the parity gate's business); a broken backend moves them all.
        gap = np.abs(probs - reference).max(-1)
        check = {"against": baseline, "mean_prob_diff": float(gap.mean()), "max_prob_diff": float(gap.max()),
                 "agreement": float((probs.argmax(-1) == reference.argmax(-1)).mean())}
        if check["mean_prob_diff"] > section.parity_tolerance:
            refused.append({"backend": name, **where, **check, "tolerance": section.parity_tolerance})
            progress.info(f"{name:16s} batch {cell.batch:3d} seq {cell.seq_len!s:>4}  REFUSED: answers differ from {baseline} "
                          f"(mean |dp| {check['mean_prob_diff']:.3f})")
        else:
            parity[name] = check
    names = list(parity)
    per_round = max(1, -(-section.iterations // section.repeats))
    budget = section.max_seconds / section.repeats if section.max_seconds else None
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(section.repeats):
        shift = rep % max(1, len(names))
        for name in names[shift:] + names[:shift]:  # no backend always runs first
            t = time_calls(_cycle(runners[name].answer, cell.batches), section.warmup if rep == 0 else 1, per_round, budget)
            times[name] += t
            rounds[name].append(float(np.median(t)) * 1e3)
    for name in names:
        stats = summarize(times[name], cell.batch)
        r = rounds[name]
        stats.update({"round_p50_ms": r, "noise": (max(r) - min(r)) / float(np.median(r)) if len(r) > 1 else 0.0,
                      "tokens": cell.tokens, "parity": parity[name]})
        timed.append({"backend": name, **where, **stats})
        progress.info(f"{name:16s} batch {cell.batch:3d} seq {cell.seq_len!s:>4}  p50 {stats['p50_ms']:8.2f} ms  p99 {stats['p99_ms']:8.2f} ms  "
                      f"{stats['throughput_per_s']:8.1f} seq/s  noise {stats['noise']:.1%}")
    return timed, refused


def cold_start(runner: Runner, cells: list[Cell], workdir: Path) -> dict[str, Any]:
    """Start a fresh Python process that loads only this backend and answers one text, then
    runs each cell once: time from process start to the first answer, and peak RSS per cell."""
    cells_file = workdir / "cells.json"
    if not cells_file.exists():
        cells_file.write_text(json.dumps([{"batch": c.batch, "seq_len": c.seq_len, "batches": c.batches, "tokens": c.tokens} for c in cells]))
    spec_file = workdir / f"{runner.name}.json"
    spec_file.write_text(json.dumps({**runner.spec, "cells_file": str(cells_file)}))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "ftexport.coldstart", str(spec_file)], capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the cold-start process failed: {tail[:300]}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["cold_start_s"] = out.pop("first_answer_at") - start
    return out


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
    if bundle.manifest.task == "text-generation":  # prefill and per-token latency, not a batch x length grid
        from .bench_lm import bench_generation

        return bench_generation(bundle_dir, reference_dir, section, output, texts_pool)
    max_length = bundle.manifest.max_length
    too_long = [n for n in section.grid_seq_lens(max_length) if n > max_length]
    if too_long:
        raise RecipeError(f"bench sequence length {too_long[0]} exceeds the bundle's max_length {max_length}; use at most {max_length}")
    if reference is not None:
        check_reference(reference, "reference model")
    threads = section.threads or default_threads()
    torch.set_num_threads(threads)
    skipped = {b: r for b in section.backends if (r := skip_reason(b, bundle, reference))}
    backends = [b for b in section.backends if b not in skipped]
    if not backends:
        raise RecipeError(f"bench: none of the backends can run here ({'; '.join(f'{b}: {r}' for b, r in skipped.items())})")
    grid = section.grid_seq_lens(max_length)
    progress.step(f"bench: {', '.join(backends)} at batch {section.batch_sizes} x seq {grid}"
                  f"{' + real traffic' if section.traffic != 'fixed' else ''}, {threads} threads, {section.repeats} rounds")
    for b, reason in skipped.items():
        progress.info(f"{b}: skipped ({reason})")

    workdir = Path(tempfile.mkdtemp(prefix="ftexport-bench-"))
    try:
        runners = {b: _build_runner(b, bundle, bundle_dir, reference, threads, workdir) for b in backends}
        notes: list[str] = []
        source = next((r.predictor for r in runners.values() if r.predictor), None) or Predictor(bundle, threads=threads)
        cells = make_cells(section, source, texts_pool, notes)
        baseline = next((b for b in ("pytorch", "pytorch-cuda") if b in runners), backends[0])
        failed: dict[str, str] = {}
        results, refused = [], []
        for cell in cells:
            timed, bad = run_cell(cell, runners, baseline, section, failed)
            results += timed
            refused += bad
        cold: dict[str, Any] = {}
        if section.cold_start:
            for b in backends:
                if b not in failed:
                    progress.info(f"{b}: cold start and peak memory in a fresh process")
                    cold[b] = cold_start(runners[b], cells, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    skipped.update(failed)
    cells_by_key = {(r["backend"], r["batch"], r["seq_len"]): r for r in results}
    for b, c in cold.items():
        for row in c.pop("cells", []):
            r = cells_by_key.get((b, row["batch"], row["seq_len"]))
            if r is not None:
                r.update({k: v for k, v in row.items() if k in ("peak_rss_mb", "gpu_mb")})
    for r in results:
        base = cells_by_key.get(("pytorch", r["batch"], r["seq_len"]))
        r["speedup_vs_pytorch"] = base["p50_ms"] / r["p50_ms"] if base else None
        # int8 or GPU slower than fp32 on the CPU is a finding, not something to hide
        fp32 = cells_by_key.get(("ort-fp32", r["batch"], r["seq_len"]))
        kind, device, variant = parse_backend(r["backend"])
        if fp32 and r is not fp32 and (device != "cpu" or "int8" in (variant or "") or kind == "optimum") and r["p50_ms"] > fp32["p50_ms"]:
            r["flag"] = f"slower than ort-fp32 on the CPU ({r['p50_ms']:.2f} vs {fp32['p50_ms']:.2f} ms)"
    sizes = {b: bundle.path_of(bundle.variant(parse_backend(b)[2]).file).stat().st_size for b in backends if parse_backend(b)[0] == "ort"}
    report = {
        "schema_version": SCHEMA_VERSION,
        "machine": machine_info(),
        "threads": threads,
        "seq_len": section.headline_seq_len(max_length),
        "seq_lens": grid,
        "batch_sizes": section.batch_sizes,
        "traffic": section.traffic,
        "warmup": section.warmup,
        "iterations": section.iterations,
        "repeats": section.repeats,
        "baseline": baseline,
        "parity_tolerance": section.parity_tolerance,
        "model_bytes": sizes,
        "skipped": skipped,
        "notes": notes,
        "cold_start": cold,
        "refused": refused,
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
    # text-generation reports have two rows per cell (phase: prefill, per token)
    before = {(r["backend"], r["batch"], r["seq_len"], r.get("phase")): r for r in old.get("results", [])}
    rows = []
    for r in new["results"]:
        o = before.get((r["backend"], r["batch"], r["seq_len"], r.get("phase")))
        if o is None:
            continue
        change = r["p50_ms"] / o["p50_ms"] - 1.0
        rows.append({"backend": r["backend"] + (f" ({r['phase']})" if r.get("phase") else ""), "batch": r["batch"], "seq_len": r["seq_len"], "old_p50_ms": o["p50_ms"],
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
    # version 2 only added fields (and real-traffic cells): a version-1 file still compares
    if not isinstance(report, dict) or report.get("schema_version") not in (1, SCHEMA_VERSION) or "results" not in report:
        raise RecipeError(f"{path}: not a bench.json of schema version {SCHEMA_VERSION}; re-run `ftexport bench` to make one")
    return report

