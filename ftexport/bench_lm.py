"""`ftexport bench` for text-generation bundles: prefill latency and time per generated token.

Per backend (pytorch = transformers `generate` with its cache; ort-VARIANT = the runtime's
Generator with the exported KV cache), batch 1, a prompt of `seq_len` tokens cut from held-out
texts, `new_tokens` greedy tokens with eos ignored so every backend makes exactly as many:

    prefill     one call over the prompt (empty cache): time to the first token
    per token   (time of the whole generation - prefill) / (new_tokens - 1): one cached step

Every backend's greedy continuation of the prompt is compared with PyTorch's before timing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ftexport_runtime import Predictor
from ftexport_runtime.bundle import Bundle

from . import progress
from .artifacts import read_record, stage_dir, write_record
from .bench import BENCH_JSON, BENCH_MD, REPORT_HTML, SCHEMA_VERSION, bench_key, default_threads, parse_backend, summarize, time_calls
from .errors import RecipeError
from .recipe import BenchSection
from .report import bench_html, machine_info, markdown_table

NEW_TOKENS = 32
DEFAULT_PROMPT = 32


class _Eosless:
    """A runtime Generator that never stops at eos, so every backend makes the same tokens."""

    def __init__(self, generator: Any):
        self.g = generator

    def generate(self, prompt: list[int], n: int) -> list[int]:
        eos, self.g.eos_id = self.g.eos_id, -1
        try:
            return self.g.generate_ids([prompt], n)[0]
        finally:
            self.g.eos_id = eos

    def prefill(self, prompt: list[int]) -> Any:
        ids = np.asarray([prompt], dtype=np.int64)
        return self.g.forward(ids, np.ones_like(ids))


def _torch_calls(model: Any, prompt: list[int], n: int) -> tuple[Any, Any]:
    import torch

    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)

    def prefill() -> Any:
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask, use_cache=True).logits

    def generate() -> list[int]:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, do_sample=False, use_cache=True, max_new_tokens=n,
                                 pad_token_id=model.config.pad_token_id, num_beams=1)
        return out[0, len(prompt):].tolist()

    return prefill, generate


def bench_generation(bundle_dir: str | Path, reference_dir: str | Path | None, section: BenchSection, output: str | Path,
                     texts: list[str] | None) -> dict[str, Any]:
    import torch

    bundle_dir, output = Path(bundle_dir), Path(output)
    bundle = Bundle.open(bundle_dir)
    threads = section.threads or default_threads()
    torch.set_num_threads(threads)
    skipped: dict[str, str] = {}
    runners: dict[str, tuple[Any, Any]] = {}
    fp32 = Predictor(bundle, variant="fp32", threads=threads).generator
    assert fp32 is not None
    limit = bundle.manifest.max_length
    prompt_len = min(section.seq_len or DEFAULT_PROMPT, limit - NEW_TOKENS)
    if prompt_len < 1:
        raise RecipeError(f"bench: the bundle's {limit} positions leave no room for a prompt plus {NEW_TOKENS} new tokens")
    pool = " ".join(texts or ["the film is a quiet , moving portrait of a family and its long , hard winter ."] * 8)
    prompt = (fp32.tokenizer.encode(pool, add_special_tokens=False).ids * (prompt_len + 1))[:prompt_len]

    for name in section.backends:
        kind, device, variant = parse_backend(name)
        if kind == "pytorch" and name == "pytorch":
            if reference_dir is None:
                skipped[name] = "needs --reference (the PyTorch model)"
                continue
            from .validate_lm import model_for

            model = model_for(Path(reference_dir)).eval()
            model.generation_config.eos_token_id = None  # never stop, and eos stays a candidate token, as in _Eosless
            runners[name] = _torch_calls(model, prompt, NEW_TOKENS)
        elif kind == "ort" and device == "cpu" and variant in bundle.manifest.variants:
            gen = _Eosless(Predictor(bundle, variant=variant, threads=threads).generator)
            runners[name] = (lambda g=gen: g.prefill(prompt), lambda g=gen: g.generate(prompt, NEW_TOKENS))
        elif kind == "ort" and device == "cpu":
            skipped[name] = f"the bundle has no variant {variant!r}"
        else:
            skipped[name] = "not measured for text-generation (CPU pytorch and ort-VARIANT only)"
    if not runners:
        raise RecipeError(f"bench: none of the backends can run for text-generation ({'; '.join(f'{b}: {r}' for b, r in skipped.items())})")
    progress.step(f"bench: {', '.join(runners)}: prefill of {prompt_len} tokens and {NEW_TOKENS} greedy tokens, batch 1, {threads} threads")

    baseline = "pytorch" if "pytorch" in runners else next(iter(runners))
    reference_tokens = runners[baseline][1]()
    results = []
    for name, (prefill, generate) in runners.items():
        same = generate() == reference_tokens
        pre = time_calls(prefill, section.warmup, section.iterations, section.max_seconds)
        gen = time_calls(generate, min(section.warmup, 2), max(3, section.iterations // 4), section.max_seconds)
        p50_prefill = float(np.median(pre))
        per_token = [max(t - p50_prefill, 0.0) / (NEW_TOKENS - 1) for t in gen]
        for phase, times, seq in (("prefill", pre, prompt_len), ("per token", per_token, prompt_len)):
            row = {"backend": name, "phase": phase, "batch": 1, "seq_len": seq, **summarize(times, 1), "matches_baseline": same}
            results.append(row)
        progress.info(f"{name:10s} prefill {p50_prefill * 1e3:.2f} ms  per token {np.median(per_token) * 1e3:.2f} ms  "
                      f"{'same tokens as ' + baseline if same else 'DIFFERENT tokens from ' + baseline}")
    for r in results:
        base = next((b for b in results if b["backend"] == "pytorch" and b["phase"] == r["phase"]), None)
        r["speedup_vs_pytorch"] = base["p50_ms"] / r["p50_ms"] if base and r["p50_ms"] > 0 else None
    report = {
        "schema_version": SCHEMA_VERSION,
        "task": "text-generation",
        "machine": machine_info(),
        "threads": threads,
        "seq_len": prompt_len,
        "new_tokens": NEW_TOKENS,
        "batch_sizes": [1],
        "warmup": section.warmup,
        "iterations": section.iterations,
        "repeats": 1,
        "baseline": baseline,
        "skipped": skipped,
        "notes": [f"eos ignored: every backend generates {NEW_TOKENS} tokens"],
        "cold_start": {},
        "refused": [],
        "results": results,
    }
    with stage_dir(output) as tmp:
        (tmp / BENCH_JSON).write_text(json.dumps(report, indent=2) + "\n")
        (tmp / BENCH_MD).write_text(bench_table(report) + "\n")
        (tmp / REPORT_HTML).write_text(bench_html(report))
        write_record(tmp, "bench", bench_key(bundle_dir, Path(reference_dir) if reference_dir else bundle_dir, section),
                     {"bundle": (read_record(bundle_dir) or {}).get("key")}, section.model_dump(), {})
    return report


def bench_table(report: dict[str, Any]) -> str:
    rows = [[r["backend"], r["phase"], r["seq_len"], *(f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms")),
             f"{1e3 / r['p50_ms']:.1f}" if r["phase"] == "per token" and r["p50_ms"] > 0 else None,
             f"{r['speedup_vs_pytorch']:.2f}x" if r.get("speedup_vs_pytorch") else None, "yes" if r["matches_baseline"] else "NO"]
            for r in report["results"]]
    m = report["machine"]
    head = (f"Generation latency on {m['cpu']} ({m['cores']} cores, {report['threads']} threads), batch 1, prompt {report['seq_len']} tokens, "
            f"{report['new_tokens']} greedy tokens; per token = (generation - prefill) / {report['new_tokens'] - 1}\n\n")
    notes = [f"- {b}: skipped ({why})" for b, why in report.get("skipped", {}).items()] + [f"- {n}" for n in report.get("notes", [])]
    return head + markdown_table(["backend", "phase", "prompt", "p50 ms", "p90 ms", "p99 ms", "tokens/s", "vs PyTorch", f"same tokens as {report['baseline']}"], rows) + (
        "\n\n" + "\n".join(notes) if notes else "")


def summary_table(parity: dict[str, Any], bench: dict[str, Any] | None) -> str:
    """The closing table of `ftexport run` for a language model."""

    def per_token(backend: str) -> float | None:
        return next((r["p50_ms"] for r in (bench or {}).get("results", []) if r["backend"] == backend and r["phase"] == "per token"), None)

    base = per_token("pytorch")
    rows = [["PyTorch fp32", f"{parity['reference']['perplexity']:.3f}", None, f"{base:.2f}" if base else None, "1.00x" if base else None]]
    for name, v in parity["variants"].items():
        ms = per_token(f"ort-{name}")
        rows.append([f"ONNX {name}", f"{v['perplexity']:.3f}" if "perplexity" in v else None, v.get("greedy_match"),
                     f"{ms:.2f}" if ms else None, f"{base / ms:.2f}x" if ms and base else None])
    return markdown_table(["model", f"{parity['split']} perplexity", "greedy match", "ms per token (batch 1)", "speed-up vs PyTorch"], rows)
