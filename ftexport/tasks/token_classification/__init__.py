"""Token classification (NER with BIO tags): one label per word.

Words are tokenized with `is_split_into_words=True`; a word's label goes on its first
sub-token and every other sub-token (and every special token) gets -100, which the loss
and the metrics ignore — the convention of the transformers token-classification examples.
Scores are entity-level, from seqeval (micro precision/recall/F1 plus a per-type report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core.gates import GateField
from ..base import ParityCase
from ..encoder import EncodedTexts
from ..text_classification import TextClassification
from .metrics import IGNORE, align_labels, entity_scores


class TokenClassification(TextClassification):
    """Shares the text classifier's hooks (tokenizer, best metric...) and replaces the model
    class, word-level tokenization with label alignment, the collator and the metrics."""

    name = "token-classification"
    head = "entities"
    optimum_task = "token-classification"  # Optimum's export task name
    peft_task_type = "TOKEN_CLS"  # peft then also trains the classifier head (modules_to_save)
    example = "Peter Blackburn flew to Brussels"
    output_axes = {0: "batch_size", 1: "sequence_length"}  # one row of logits per token
    metrics_computed = ("accuracy", "f1", "loss")
    accuracy_aware = False
    triton = False
    distill = False
    traced_adapters = False
    plain_optimum = False
    # peft's "all-linear" leaves the classifier head out for SEQ_CLS only; for TOKEN_CLS it
    # would wrap the head in LoRA and then fail to also train it fully (modules_to_save).
    lora_exclude = ["classifier", "score"]
    gate_fields = (
        GateField(
            "min_entity_agreement",
            "entity_agreement",
            "min",
            "token-classification: entity-level F1 of this variant's entities against PyTorch's",
            ge=0,
            le=1,
        ),
    )
    summary_keys = (
        "accuracy",
        "f1",
        "entity_precision",
        "recall",
        "f1_drop",
        "entity_agreement",
        "sentence_agreement",
        "agreement",
        "max_logit_diff",
        "mean_logit_diff",
    )
    reference_keys = ("accuracy", "entity_precision", "recall", "f1")

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def dataset(
        self, tokenizer: Any, words: list[list[str]], labels: list[list[int]] | None, max_length: int, **context: Any
    ) -> EncodedTexts:
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        aligned = [align_labels(enc.word_ids(i), labels[i]) for i in range(len(words))] if labels is not None else None
        return EncodedTexts({k: list(v) for k, v in enc.items()}, aligned)

    def collator(self, tokenizer: Any, padding: str, max_length: int) -> Any:
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(
            tokenizer, padding=padding, max_length=max_length if padding == "max_length" else None, label_pad_token_id=IGNORE
        )

    def metrics(
        self, logits: np.ndarray, labels: np.ndarray | list[Any], num_labels: int | None = None, label_names: list[str] | None = None
    ) -> dict[str, float]:
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

    # ---- judging --------------------------------------------------------------------------

    def parity_case(self, bundle: Any, reference_dir: Path, data: Any, split: str, batch_size: int, settings: Any) -> ParityCase:
        from .parity import TokensCase

        return TokensCase(self, bundle, reference_dir, data, split, batch_size)

    def parity_table(self, report: Any) -> str:
        from .parity import parity_table

        return parity_table(report)

    def summary_table(self, parity: Any, bench: Any) -> str:
        from ..encoder import summary_table

        return summary_table(parity, bench, f"{parity['split']} entity F1")
