"""Sequence classification (sentiment, topic, intent...): one label per text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class EncodedTexts:
    """A torch-style map dataset of tokenized texts; the collator pads each batch to its
    longest member (dynamic padding), never to max_length."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: list[int] | None):
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


class TextClassification:
    name = "text-classification"
    optimum_task = "text-classification"  # Optimum's export task name
    peft_task_type = "SEQ_CLS"
    output_name = "logits"
    labelled = True

    def load_model(self, path: str | Path, label_names: list[str], trust_remote_code: bool = False) -> Any:
        return self.auto_model_class().from_pretrained(
            str(path),
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            ignore_mismatched_sizes=True,  # a classifier (or tagger) with another label set gets a fresh head
            trust_remote_code=trust_remote_code,
        )

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def dataset(self, tokenizer: Any, texts: list[str], labels: list[int] | None, max_length: int) -> EncodedTexts:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        return EncodedTexts({k: list(v) for k, v in enc.items()}, labels)

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        return tokenizer

    def collator(self, tokenizer: Any, padding: str, max_length: int) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, padding=padding, max_length=max_length if padding == "max_length" else None)

    def best_metric(self, metric: str) -> tuple[str, bool]:
        return metric, True  # accuracy or macro-F1: higher is better

    def compute_metrics(self, label_names: list[str]) -> Any:
        def compute(pred: Any) -> dict[str, float]:
            logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
            return self.metrics(logits, pred.label_ids, len(label_names), label_names=label_names)

        return compute

    def eval_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics

    def metrics(self, logits: np.ndarray, labels: np.ndarray | list[int], num_labels: int | None = None,
                label_names: list[str] | None = None) -> dict[str, float]:
        from sklearn.metrics import f1_score

        labels = np.asarray(labels)
        preds = np.asarray(logits).argmax(axis=-1)
        classes = list(range(num_labels)) if num_labels else None
        return {
            "accuracy": float((preds == labels).mean()),
            "macro_f1": float(f1_score(labels, preds, average="macro", labels=classes, zero_division=0)),
        }
