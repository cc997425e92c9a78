"""Token classification (NER with BIO tags): one label per word.

Words are tokenized with `is_split_into_words=True`; a word's label goes on its first
sub-token and every other sub-token (and every special token) gets -100, which the loss
and the metrics ignore — the convention of the transformers token-classification examples.
Scores are entity-level, from seqeval (micro precision/recall/F1 plus a per-type report).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .text_classification import EncodedTexts, TextClassification

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


class TokenClassification(TextClassification):
    """Shares the text classifier's hooks (tokenizer, best metric...) and replaces the model
    class, word-level tokenization with label alignment, the collator and the metrics."""

    name = "token-classification"
    optimum_task = "token-classification"  # Optimum's export task name
    peft_task_type = "TOKEN_CLS"  # peft then also trains the classifier head (modules_to_save)
    output_name = "logits"

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def dataset(self, tokenizer: Any, words: list[list[str]], labels: list[list[int]] | None, max_length: int) -> EncodedTexts:
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        aligned = [align_labels(enc.word_ids(i), labels[i]) for i in range(len(words))] if labels is not None else None
        return EncodedTexts({k: list(v) for k, v in enc.items()}, aligned)

    def collator(self, tokenizer: Any, padding: str, max_length: int) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(
            tokenizer, padding=padding, max_length=max_length if padding == "max_length" else None, label_pad_token_id=IGNORE)

    def metrics(self, logits: np.ndarray, labels: np.ndarray | list[Any], num_labels: int | None = None,
                label_names: list[str] | None = None) -> dict[str, float]:
        """Trainer's eval output: [n, seq, labels] logits and [n, seq] sub-token labels (-100 skipped)."""
        names = label_names or [str(i) for i in range(num_labels or np.asarray(logits).shape[-1])]
        preds = np.asarray(logits).argmax(-1)
        labels = np.asarray(labels)
        gold, pred = [], []
        for p_row, l_row in zip(preds, labels):
            keep = l_row != IGNORE
            gold.append([names[i] for i in l_row[keep]])
            pred.append([names[i] for i in p_row[keep]])
        return entity_scores(gold, pred)


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
