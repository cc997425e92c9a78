"""Token-classification building blocks: label alignment to sub-tokens, word tags from
first-sub-token logits, entity-level scores (seqeval) and PyTorch's word-level logits."""

from __future__ import annotations

from typing import Any

import numpy as np

IGNORE = -100  # label id that the loss and the metrics skip


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Per sub-token labels: the word's label on its first sub-token, IGNORE elsewhere."""
    out, previous = [], None
    for w in word_ids:
        out.append(word_labels[w] if w is not None and w != previous else IGNORE)
        previous = w
    return out


def first_token_positions(word_ids: list[int | None]) -> dict[int, int]:
    """word index -> position of its first sub-token (words cut off by truncation are absent)."""
    out: dict[int, int] = {}
    for pos, w in enumerate(word_ids):
        if w is not None and w not in out:
            out[w] = pos
    return out


def word_tags(logits: np.ndarray, positions: dict[int, int], n_words: int, names: list[str]) -> list[str]:
    """A word's tag is the argmax at its first sub-token; a word lost to truncation is O."""
    return [names[int(logits[positions[w]].argmax())] if w in positions else "O" for w in range(n_words)]


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (seqeval, conlleval rules) and token accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    flat_g = [t for row in gold for t in row]
    flat_p = [t for row in pred for t in row]
    return {
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "accuracy": float(np.mean([a == b for a, b in zip(flat_g, flat_p)])) if flat_g else 0.0,
    }


def class_report(gold: list[list[str]], pred: list[list[str]]) -> dict[str, dict[str, float]]:
    """seqeval's per-type precision/recall/F1/support (and micro/macro/weighted averages)."""
    from seqeval.metrics import classification_report

    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    return {k: {m: float(v) for m, v in row.items()} for k, row in report.items()}


def reference_word_logits(model: Any, tokenizer: Any, words: list[list[str]], max_length: int, batch_size: int = 64) -> list[np.ndarray]:
    """PyTorch logits at each word's first sub-token, per sentence ([kept words, labels]),
    on whatever device the model is on: the reference that the ONNX variants are held to."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(words), batch_size):
            chunk = words[i : i + batch_size]
            enc = tokenizer(chunk, is_split_into_words=True, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu().numpy()
            for row in range(len(chunk)):
                pos = first_token_positions(enc.word_ids(row))
                out.append(logits[row, [pos[w] for w in sorted(pos)]])
    return out
