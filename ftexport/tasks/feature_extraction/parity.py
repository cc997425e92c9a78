"""Judging sentence embeddings: the parity case (cosine to PyTorch per text, retrieval
agreement of top-10 neighbours), the benchmark probe (texts in, vectors out, against
sentence-transformers' `encode` on PyTorch) and the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core import progress
from ...core.hf import load_tokenizer, reference_device
from ...core.tables import markdown_table, ms
from ...data import load_data
from ..base import Calls, ParityCase
from ..encoder import EncoderProbe
from .pooling import embedder, read_pooling

QUERIES = 1000  # held-out texts used as queries
TOP_K = 10


def torch_embeddings(module: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    import torch

    device = next(module.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            out.append(module(**{k: v.to(device) for k, v in enc.items()}).float().cpu().numpy())
    return np.concatenate(out)


def neighbours(emb: np.ndarray, queries: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """The k nearest texts (cosine) of each query among all texts, the query itself left out."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = unit[queries] @ unit.T
    sims[np.arange(len(queries)), queries] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


class EmbedCase(ParityCase):
    """PyTorch's embeddings of the held-out texts (the test split and, when there is one, the
    validation split); a variant is compared text by text and neighbour by neighbour."""

    metric = "retrieval_overlap"

    def __init__(self, task: Any, bundle: Any, reference_dir: Path, data: Any, split: str, batch_size: int):
        self.labels, self.split = [], split
        splits = (split, "validation") if split != "validation" and data.split_path("validation") is not None else (split,)
        loaded = load_data(data, splits, labelled=False)
        self.texts = [t for s in splits for t in loaded[s].texts]
        self.examples = len(self.texts)
        rng = np.random.default_rng(0)
        self.queries = np.sort(rng.choice(len(self.texts), min(QUERIES, len(self.texts) - 1), replace=False))
        model = reference_device(task.auto_model_class().from_pretrained(str(reference_dir)))
        module = embedder(model, read_pooling(reference_dir))
        progress.info(
            f"{len(self.texts)} texts of the {' and '.join(splits)} split(s), {len(self.queries)} as queries for top-{TOP_K} neighbours"
        )
        self.reference_emb = torch_embeddings(
            module, load_tokenizer(reference_dir, "reference model"), self.texts, bundle.manifest.max_length, batch_size
        )
        self.reference_nn = neighbours(self.reference_emb, self.queries)
        self.reference = {
            "backend": "pytorch",
            "device": str(next(model.parameters()).device),
            "dimension": int(self.reference_emb.shape[1]),
            "retrieval_overlap": 1.0,
            "norm": float(np.linalg.norm(self.reference_emb, axis=1).mean()),
        }
        self.details = {"metric": self.metric, "splits": list(splits), "queries": int(len(self.queries)), "top_k": TOP_K}
        del model, module

    def score(self, predictor: Any) -> dict[str, Any]:
        emb = predictor.embed(self.texts)
        cos = cosines(self.reference_emb, emb)
        nn = neighbours(emb, self.queries)
        overlap = np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(nn, self.reference_nn)])
        return {
            "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
            "retrieval_overlap": float(overlap),
            "max_logit_diff": float(np.abs(emb - self.reference_emb).max()),
            "dimension": int(emb.shape[1]),
        }

    def summary(self, r: dict[str, Any]) -> str:
        return f"min cosine {r['min_cosine']:.6f}  mean cosine {r['mean_cosine']:.6f}  top-{TOP_K} overlap {r['retrieval_overlap']:.4f}"


class EmbedProbe(EncoderProbe):
    """Texts in, vectors out. PyTorch's row is sentence-transformers' `encode` (what a user
    would otherwise run), or the same pooling on transformers where it is not installed."""

    cold_start = False  # the cold-start child answers with predict(); embeddings are timed by the grid only

    def skip(self, kind: str, device: str) -> str | None:
        if kind == "pytorch-compile":
            return "the PyTorch baseline for embeddings is sentence-transformers' encode, not a compiled model"
        return None

    def ort(self, predictor: Any) -> Calls:
        return Calls(predictor.embed, {"": predictor.embed})

    def torch(self, model: Any, tokenizer: Any, max_length: int, device: str, model_dir: Path | None = None) -> Calls:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            SentenceTransformer = None  # noqa: N806
        if SentenceTransformer is not None and model_dir is not None:
            st = SentenceTransformer(str(model_dir), device=device)
            st.max_seq_length = max_length

            def encode(texts: list[str]) -> np.ndarray:
                return st.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)

            return Calls(encode, {"": encode})
        module = embedder(model, read_pooling(model_dir) if model_dir else read_pooling(Path(model.name_or_path)))

        def run(texts: list[str]) -> np.ndarray:
            return torch_embeddings(module, tokenizer, texts, max_length, batch_size=len(texts))

        return Calls(run, {"": run})

    def agree(self, reference: Any, outputs: Any, tolerance: float) -> tuple[bool, dict[str, Any]]:
        ref, out = np.concatenate(reference), np.concatenate(outputs)
        gap = 1.0 - cosines(ref, out)  # 0 for the same direction
        check = {
            "measure": "1 - cosine",
            "mean_prob_diff": float(gap.mean()),
            "max_prob_diff": float(gap.max()),
            "agreement": float((gap <= 0.01).mean()),
        }
        return check["mean_prob_diff"] <= tolerance, check


def parity_table(report: Any) -> str:
    ref = report["reference"]
    rows: list[list[Any]] = [["pytorch (reference)", "fp32", None, None, 1.0, None, "—"]]
    for name, v in report["variants"].items():
        if "error" in v:
            rows.append([f"onnx {name}", v["precision"], None, None, None, None, f"FAIL: {v['error']}"])
            continue
        failed = [c["name"] for c in v["checks"] if not c["passed"]]
        rows.append(
            [
                f"onnx {name}",
                v["precision"],
                f"{v['min_cosine']:.6f}",
                f"{v['mean_cosine']:.6f}",
                v["retrieval_overlap"],
                f"{v['max_logit_diff']:.2e}",
                "PASS" if v["passed"] else "FAIL: " + ", ".join(failed),
            ]
        )
    head = (
        f"Embedding parity on {report['examples']} held-out texts ({', '.join(report.get('splits', [report['split']]))}), "
        f"dimension {ref.get('dimension')}; top-{report.get('top_k', TOP_K)} overlap over {report.get('queries')} queries\n\n"
    )
    return head + markdown_table(
        ["model", "precision", "min cosine", "mean cosine", f"top-{report.get('top_k', TOP_K)} overlap", "max |Δ|", "gate"], rows
    )


def summary_table(parity: Any, bench: Any) -> str:
    """The closing table of `ftexport run`: agreement with PyTorch and throughput at batch 1."""

    def row_of(backend: str, batch: int) -> dict[str, Any] | None:
        if not bench:
            return None
        return next(
            (r for r in bench["results"] if r["backend"] == backend and r["batch"] == batch and r["seq_len"] == "real"),
            next((r for r in bench["results"] if r["backend"] == backend and r["batch"] == batch), None),
        )

    base = row_of("pytorch", 1)
    rows = [
        [
            "PyTorch (sentence-transformers)",
            1.0,
            ms(base["p50_ms"]) if base else None,
            f"{base['throughput_per_s']:.1f}" if base else None,
            "1.00x" if base else None,
        ]
    ]
    for name, v in parity["variants"].items():
        r = row_of(f"ort-{name}", 1)
        rows.append(
            [
                f"ONNX {name}",
                v.get("retrieval_overlap"),
                ms(r["p50_ms"]) if r else None,
                f"{r['throughput_per_s']:.1f}" if r else None,
                f"{r['throughput_per_s'] / base['throughput_per_s']:.2f}x" if r and base else None,
            ]
        )
    return markdown_table(["model", "top-10 overlap", "p50 ms (batch 1)", "texts/s (batch 1)", "vs PyTorch"], rows)
