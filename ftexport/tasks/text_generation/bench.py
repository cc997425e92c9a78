"""What `ftexport bench` times for a text-generation bundle: prefill latency and time per
generated token (a `BenchProbe`).

Per backend (pytorch = transformers `generate` with its cache; ort-VARIANT = the runtime's
Generator with the exported KV cache), batch 1, a prompt of `seq_len` tokens cut from held-out
texts, `new_tokens` greedy tokens with eos ignored so every backend makes exactly as many:

    prefill     one call over the prompt (empty cache): time to the first token
    per token   (time of the whole generation - prefill) / (new_tokens - 1): one cached step

Every backend's greedy continuation of the prompt is compared with PyTorch's before timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import RecipeError
from ...core.tables import markdown_table
from ...core.timing import summarize
from ..base import BenchProbe, Calls, Cell

NEW_TOKENS = 32
DEFAULT_PROMPT = 32


class _Eosless:
    """A runtime Generator that never stops at eos, so every backend makes the same tokens."""

    def __init__(self, generator: Any):
        self.g = generator

    def generate(self, prompt: list[int], n: int) -> list[int]:
        eos, stops = self.g.eos_id, getattr(self.g, "stop_ids", ())
        self.g.eos_id, self.g.stop_ids = -1, ()
        try:
            return self.g.generate_ids([prompt], n)[0]
        finally:
            self.g.eos_id, self.g.stop_ids = eos, stops

    def prefill(self, prompt: list[int]) -> Any:
        ids = np.asarray([prompt], dtype=np.int64)
        return self.g.forward(ids, np.ones_like(ids))


def _torch_calls(model: Any, n: int) -> tuple[Any, Any]:
    import torch

    def prefill(prompt: list[int]) -> Any:
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).logits

    def generate(prompt: list[int]) -> list[int]:
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                use_cache=True,
                max_new_tokens=n,
                pad_token_id=model.config.pad_token_id,
                num_beams=1,
            )
        return out[0, len(prompt) :].tolist()

    return prefill, generate


class GenerationProbe(BenchProbe):
    cold_start = False  # a decoder's first answer is a whole generation: the latency rows say more

    def skip(self, kind: str, device: str) -> str | None:
        if kind not in ("pytorch", "ort") or device != "cpu":
            return "not measured for text-generation (CPU pytorch and ort-VARIANT only)"
        return None

    def cells(self, section: Any, predictor: Any, pool: list[str] | None, notes: list[str]) -> list[Cell]:
        limit = predictor.max_length
        prompt_len = min(section.seq_len or DEFAULT_PROMPT, limit - NEW_TOKENS)
        if prompt_len < 1:
            raise RecipeError(f"bench: the bundle's {limit} positions leave no room for a prompt plus {NEW_TOKENS} new tokens")
        text = " ".join(pool or ["the film is a quiet , moving portrait of a family and its long , hard winter ."] * 8)
        prompt = (predictor.generator.tokenizer.encode(text, add_special_tokens=False).ids * (prompt_len + 1))[:prompt_len]
        notes.append(f"eos ignored: every backend generates {NEW_TOKENS} tokens")
        return [Cell(1, prompt_len, [prompt], float(prompt_len))]

    def ort(self, predictor: Any) -> Calls:
        gen = _Eosless(predictor.generator)
        return Calls(
            lambda prompt: gen.generate(prompt, NEW_TOKENS),
            {"prefill": gen.prefill, "generate": lambda prompt: gen.generate(prompt, NEW_TOKENS)},
        )

    def torch(self, model: Any, tokenizer: Any, max_length: int, device: str, model_dir: Path | None = None) -> Calls:
        model.generation_config.eos_token_id = None  # never stop, and eos stays a candidate token, as in _Eosless
        prefill, generate = _torch_calls(model, NEW_TOKENS)
        return Calls(generate, {"prefill": prefill, "generate": generate})

    def iterations(self, phase: str, section: Any) -> tuple[int, int]:
        if phase == "generate":  # a whole generation per call: fewer calls
            return min(section.warmup, 2), max(3, section.iterations // 4)
        return section.warmup, section.iterations

    def agree(self, reference: Any, outputs: Any, tolerance: float) -> tuple[bool, dict[str, Any]]:
        return True, {"matches_baseline": outputs == reference}  # timed either way; the table says whether tokens match

    def finish(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """per token = (generation - prefill p50) / (new_tokens - 1), from each generation's time."""
        prefill = {r["backend"]: r["p50_ms"] / 1e3 for r in rows if r.get("phase") == "prefill"}
        out = []
        for r in rows:
            r["matches_baseline"] = bool(r["parity"]["matches_baseline"])
            if r.get("phase") != "generate":
                out.append(r)
                continue
            per_token = [max(t - prefill[r["backend"]], 0.0) / (NEW_TOKENS - 1) for t in r["_times"]]
            keep = {k: v for k, v in r.items() if k in ("backend", "batch", "seq_len", "tokens", "parity", "matches_baseline")}
            out.append({**keep, "phase": "per token", **summarize(per_token, 1), "_times": per_token})
        return out

    def headline(self, section: Any, max_length: int, cells: list[Cell]) -> tuple[int, list[int]]:
        return int(cells[0].seq_len), [1]

    def report_fields(self, section: Any, max_length: int) -> dict[str, Any]:
        return {"new_tokens": NEW_TOKENS}


def _matches(row: dict[str, Any]) -> bool:
    return bool(row.get("parity", {}).get("matches_baseline", row.get("matches_baseline")))


def bench_table(report: Any) -> str:
    rows = [
        [
            r["backend"],
            r["phase"],
            r["seq_len"],
            *(f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms")),
            f"{1e3 / r['p50_ms']:.1f}" if r["phase"] == "per token" and r["p50_ms"] > 0 else None,
            f"{r['speedup_vs_pytorch']:.2f}x" if r.get("speedup_vs_pytorch") else None,
            "yes" if _matches(r) else "NO",
        ]
        for r in report["results"]
    ]
    m = report["machine"]
    head = (
        f"Generation latency on {m['cpu']} ({m['cores']} cores, {report['threads']} threads), batch 1, prompt {report['seq_len']} tokens, "
        f"{report['new_tokens']} greedy tokens; per token = (generation - prefill) / {report['new_tokens'] - 1}\n\n"
    )
    notes = [f"- {b}: skipped ({why})" for b, why in report.get("skipped", {}).items()] + [f"- {n}" for n in report.get("notes", [])]
    return (
        head
        + markdown_table(
            ["backend", "phase", "prompt", "p50 ms", "p90 ms", "p99 ms", "tokens/s", "vs PyTorch", f"same tokens as {report['baseline']}"],
            rows,
        )
        + ("\n\n" + "\n".join(notes) if notes else "")
    )


def summary_table(parity: Any, bench: Any) -> str:
    """The closing table of `ftexport run` for a language model."""

    def per_token(backend: str) -> float | None:
        return next((r["p50_ms"] for r in (bench or {}).get("results", []) if r["backend"] == backend and r["phase"] == "per token"), None)

    base = per_token("pytorch")
    rows = [["PyTorch fp32", f"{parity['reference']['perplexity']:.3f}", None, f"{base:.2f}" if base else None, "1.00x" if base else None]]
    for name, v in parity["variants"].items():
        ms = per_token(f"ort-{name}")
        rows.append(
            [
                f"ONNX {name}",
                f"{v['perplexity']:.3f}" if "perplexity" in v else None,
                v.get("greedy_match"),
                f"{ms:.2f}" if ms else None,
                f"{base / ms:.2f}x" if ms and base else None,
            ]
        )
    return markdown_table(["model", f"{parity['split']} perplexity", "greedy match", "ms per token (batch 1)", "speed-up vs PyTorch"], rows)
