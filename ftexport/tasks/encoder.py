"""Pieces shared by the encoder tasks (one answer per text or per token): the tokenized
dataset, the benchmark probe (texts cut to exact lengths, real-traffic batches, class
probabilities compared before timing) and the latency table."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import RecipeError
from ..core.tables import markdown_table, ms
from .base import BenchProbe, Calls, Cell, softmax

REAL_BATCHES = 8  # distinct held-out batches per real-traffic cell, cycled through
PARITY_TEXTS = 16  # texts a fixed-length cell's parity check reads at least (one batch-1 text is too few to judge)

# Used when no held-out texts are given: plain English, so WordPiece lengths are realistic.
_FILLER = (
    "the film is a quiet , patient portrait of a family that slowly comes apart , and its "
    "best scenes are the ones in which nothing much seems to happen at all . the acting is "
    "uneven but the direction is confident , the score is lovely and the ending lands with "
    "real force . it is too long by half an hour and some of the jokes fall flat , yet it "
    "stays with you for days afterwards ."
)


class EncodedTexts:
    """A torch-style map dataset of tokenized texts; the collator pads each batch to its
    longest member (dynamic padding), never to max_length."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: list[Any] | None):
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def texts_of_length(predictor: Any, seq_len: int, batch: int, pool: list[str] | None = None) -> list[str]:
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
        if want < 1:
            raise RecipeError(
                f"bench: a sequence of {seq_len} tokens holds no text (the tokenizer adds {n_special} special tokens); "
                f"time lengths of at least {n_special + 1} (bench.seq_lens, --seq-len, --seq-lens)"
            )
        for cut in (c for c in (want, want - 1, want + 1, want - 2, want + 2) if 1 <= c <= len(real)):
            candidate = text[: enc.offsets[real[cut - 1]][1]]
            if len(predictor.tokenizer.encode(candidate).ids) == seq_len:
                out.append(candidate)
                break
        else:
            raise RecipeError(
                f"bench: could not build a text of exactly {seq_len} tokens from whole words; time another length "
                "(bench.seq_lens, --seq-len, --seq-lens)"
            )
    return out


def torch_probs(model: Any, tokenizer: Any, max_length: int, device: str) -> Callable[[list[str]], Any]:
    """Texts to class probabilities the way a PyTorch (or Optimum ORTModel) user gets them:
    tokenize, run, softmax, back on the host. `ftexport bench` times this same function."""
    import torch

    def probs(texts: list[str]) -> Any:
        with torch.inference_mode():
            enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
            return torch.softmax(logits.float(), -1).cpu().numpy()  # .cpu() waits for the GPU: the answer is on the host

    return probs


def per_row(probs: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    """Class probabilities as rows: token classification gives [texts, tokens, labels], which
    becomes one row per token (padding included: every backend pads a batch the same way), so
    batches of different padded lengths concatenate and the parity check reads per token."""

    def rows(texts: list[str]) -> np.ndarray:
        p = probs(texts)
        return p.reshape(-1, p.shape[-1])

    return rows


class EncoderProbe(BenchProbe):
    """Texts in, answers out: the grid of exact lengths x batch sizes, plus real traffic."""

    def check(self, section: Any, max_length: int) -> None:
        too_long = [n for n in section.grid_seq_lens(max_length) if n > max_length]
        if too_long:
            raise RecipeError(f"bench sequence length {too_long[0]} exceeds the bundle's max_length {max_length}; use at most {max_length}")

    def cells(self, section: Any, predictor: Any, pool: list[str] | None, notes: list[str]) -> list[Cell]:
        """The grid's cells: texts cut to each exact length, then (traffic real/both) batches of
        held-out texts as they come, so that padding to the longest text in a batch counts."""
        max_length = predictor.max_length
        cells: list[Cell] = []
        if section.traffic in ("fixed", "both"):
            for seq_len in section.grid_seq_lens(max_length):
                for batch in section.batch_sizes:
                    # the timed batch is the first `batch` of these texts; parity reads all of them,
                    # so a small batch is judged on PARITY_TEXTS texts, not on one borderline text
                    texts = texts_of_length(predictor, seq_len, batch * -(-PARITY_TEXTS // batch), pool)
                    check = [texts[i : i + batch] for i in range(0, len(texts), batch)]  # whole batches
                    cells.append(Cell(batch, seq_len, check[:1], float(seq_len), check if len(check) > 1 else None))
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

    def ort(self, predictor: Any) -> Calls:
        return Calls(per_row(lambda texts: softmax(predictor.logits(texts))), {"": predictor.predict})

    def torch(self, model: Any, tokenizer: Any, max_length: int, device: str, model_dir: Path | None = None) -> Calls:
        fn = torch_probs(model, tokenizer, max_length, device)
        return Calls(per_row(fn), {"": fn})

    def agree(self, reference: Any, outputs: Any, tolerance: float) -> tuple[bool, dict[str, Any]]:
        # The mean over texts, not the max: int8 moves a borderline text's probability by 0.2
        # now and then (that is the parity gate's business); a broken backend moves them all.
        reference, outputs = np.concatenate(reference), np.concatenate(outputs)  # one array per batch of the cell
        gap = np.abs(outputs - reference).max(-1)
        check = {
            "mean_prob_diff": float(gap.mean()),
            "max_prob_diff": float(gap.max()),
            "agreement": float((outputs.argmax(-1) == reference.argmax(-1)).mean()),
        }
        return check["mean_prob_diff"] <= tolerance, check

    def report_fields(self, section: Any, max_length: int) -> dict[str, Any]:
        return {"seq_lens": section.grid_seq_lens(max_length), "traffic": section.traffic, "parity_tolerance": section.parity_tolerance}


def bench_table(report: Any) -> str:
    """The latency table of an encoder's bench.json, with cold start and notes."""
    rows = [
        [
            r["backend"],
            r["batch"],
            r["seq_len"],
            *(ms(r.get(k)) for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "std_ms")),
            f"{r['noise']:.1%}" if r.get("noise") is not None else None,
            f"{r['throughput_per_s']:.1f}",
            f"{r['speedup_vs_pytorch']:.2f}x" if r.get("speedup_vs_pytorch") else None,
            f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else None,
        ]
        for r in report["results"]
    ]
    m = report["machine"]
    flags = ", ".join(m.get("cpu_flags") or []) or "no AVX2"
    where = f"{m['cpu']} [{flags}]" + (f" + {m['gpu']}" if m.get("gpu") else "")
    rounds = f" in {report['repeats']} interleaved rounds" if report.get("repeats", 1) > 1 else ""
    head = (
        f"Latency on {where} ({m['cores']} cores, {report['threads']} threads), {report['iterations']} timed calls per cell{rounds} "
        f"after {report['warmup']} warm-up; seq 'real' = held-out texts as they come (padded per batch)\n\n"
    )
    table = markdown_table(
        ["backend", "batch", "seq", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "stdev ms", "noise", "seq/s", "vs PyTorch", "peak RSS MB"], rows
    )
    parts = [head + table]
    if report.get("cold_start"):
        cold = [
            [b, None, None, None, None, None, c["error"]]
            if "error" in c
            else [
                b,
                f"{c['cold_start_s']:.2f}",
                f"{c['import_s']:.2f}",
                f"{c['load_s']:.2f}",
                f"{c['first_prediction_s'] * 1e3:.1f}",
                f"{c['rss_mb']:.0f}",
                "",
            ]
            for b, c in report["cold_start"].items()
        ]
        parts.append(
            "Cold start, one fresh process per backend (process start to the first answer)\n\n"
            + markdown_table(
                ["backend", "cold start s", "import s", "load s", "first answer ms", "RSS after first answer MB", "note"], cold
            )
        )
    notes = [f"- {b}: skipped ({why})" for b, why in report.get("skipped", {}).items()]
    notes += [
        f"- REFUSED {r['backend']} batch {r['batch']} seq {r['seq_len']}: answers differ from {r['against']} "
        f"(mean |Δp| {r['mean_prob_diff']:.3f} > {r['tolerance']}, top-1 agreement {r['agreement']:.0%}): no speed figure"
        for r in report.get("refused", [])
    ]
    notes += [f"- FLAG {r['backend']} batch {r['batch']} seq {r['seq_len']}: {r['flag']}" for r in report["results"] if r.get("flag")]
    notes += [f"- {n}" for n in report.get("notes", [])]
    if notes:
        parts.append("\n".join(notes))
    return "\n\n".join(parts)


def summary_table(parity: Any, bench: Any, title: str) -> str:
    """The closing table of `ftexport run`: the task score and batch-1 p50 of each model."""

    def latency(backend: str) -> float | None:
        if not bench:
            return None
        return next(
            (r["p50_ms"] for r in bench["results"] if r["backend"] == backend and r["batch"] == 1 and r["seq_len"] == bench["seq_len"]),
            None,
        )

    metric = parity["metric"] if "metric" in parity else "accuracy"
    if not bench:
        rows = [["PyTorch fp32", parity["reference"][metric]]] + [[f"ONNX {n}", v.get(metric)] for n, v in parity["variants"].items()]
        return markdown_table(["model", title], rows)
    base = latency("pytorch")
    rows = [["PyTorch fp32", parity["reference"][metric], ms(base), "1.00x" if base else None]]
    for name, v in parity["variants"].items():
        variant, _, backend = name.partition("@")
        lat = latency(f"ort-{backend}-{variant}" if backend else f"ort-{variant}")
        rows.append([f"ONNX {name}", v.get(metric), ms(lat), f"{base / lat:.2f}x" if lat and base else None])
    return markdown_table(["model", title, f"p50 ms (batch 1, seq {bench['seq_len']})", "speed-up vs PyTorch"], rows)
