"""Sequence classification (sentiment, topic, intent...): one label per text.

Parity: PyTorch logits against each variant's over the held-out split (tensor level: |Δlogit|,
cosine, top-1 agreement; task level: accuracy and macro-F1 with the drop against PyTorch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core import progress
from ...core.gates import compare
from ...core.hf import load_reference, load_tokenizer, predict_logits, reference_device
from ...core.tables import markdown_table
from ...data import load_data
from ..base import BenchProbe, ParityCase, Task
from ..encoder import EncodedTexts, EncoderProbe, bench_table, summary_table


class ClassifyCase(ParityCase):
    """PyTorch logits on the held-out texts; a variant is compared logit by logit."""

    def __init__(self, task: TextClassification, bundle: Any, reference_dir: Path, data: Any, split: str, batch_size: int):
        manifest = bundle.manifest
        self.task, self.labels, self.split = task, list(manifest.labels), split
        # The bundle's labels are the label set: data labels must map onto them.
        held_out = load_data(data.model_copy(update={"label_names": manifest.labels}), (split,))[split]
        self.texts, self.gold = held_out.texts, np.asarray(held_out.labels)
        self.examples = len(self.texts)
        self.details = {}
        model = reference_device(load_reference(reference_dir, task))
        self.reference_logits = predict_logits(
            model, load_tokenizer(reference_dir, "reference model"), self.texts, manifest.max_length, batch_size
        )
        self.reference = {
            "backend": "pytorch",
            "device": str(next(model.parameters()).device),
            **task.metrics(self.reference_logits, self.gold, len(self.labels)),
        }
        progress.info(f"pytorch   accuracy {self.reference['accuracy']:.4f} on {self.examples} examples")

    def score(self, predictor: Any) -> dict[str, Any]:
        logits = predictor.logits(self.texts)
        return {**self.task.metrics(logits, self.gold, len(self.labels)), **compare(self.reference_logits, logits)}

    def summary(self, r: dict[str, Any]) -> str:
        return f"accuracy {r['accuracy']:.4f}  agreement {r['agreement']:.4f}  max |dlogit| {r['max_logit_diff']:.2e}"


class ClassifyProbe(EncoderProbe):
    """The encoder probe, and accuracy: the class with the highest probability against the label."""

    scores_accuracy = True

    def accuracy(self, outputs: list[Any], labels: list[int]) -> float:
        return float((np.concatenate(outputs).argmax(-1) == np.asarray(labels)).mean())


class TextClassification(Task):
    name = "text-classification"
    head = "classify"
    optimum_task = "text-classification"  # Optimum's export task name
    peft_task_type = "SEQ_CLS"
    accuracy_aware = True
    triton = True
    distill = True
    traced_adapters = True
    plain_optimum = True
    summary_keys = ("accuracy", "macro_f1", "accuracy_drop", "agreement", "max_logit_diff", "mean_logit_diff")
    reference_keys = ("accuracy", "macro_f1")

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def dataset(self, tokenizer: Any, texts: list[str], labels: list[int] | None, max_length: int, **context: Any) -> EncodedTexts:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        return EncodedTexts({k: list(v) for k, v in enc.items()}, labels)

    def collator(self, tokenizer: Any, padding: str, max_length: int) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, padding=padding, max_length=max_length if padding == "max_length" else None)

    def compute_metrics(self, label_names: list[str]) -> Any:
        def compute(pred: Any) -> dict[str, float]:
            logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
            return self.metrics(logits, pred.label_ids, len(label_names), label_names=label_names)

        return compute

    def metrics(
        self, logits: np.ndarray, labels: np.ndarray | list[int], num_labels: int | None = None, label_names: list[str] | None = None
    ) -> dict[str, float]:
        from sklearn.metrics import f1_score

        labels = np.asarray(labels)
        preds = np.asarray(logits).argmax(axis=-1)
        classes = list(range(num_labels)) if num_labels else None
        return {
            "accuracy": float((preds == labels).mean()),
            "macro_f1": float(f1_score(labels, preds, average="macro", labels=classes, zero_division=0)),
        }

    # ---- judging --------------------------------------------------------------------------

    def parity_case(self, bundle: Any, reference_dir: Path, data: Any, split: str, batch_size: int, settings: Any) -> ParityCase:
        return ClassifyCase(self, bundle, reference_dir, data, split, batch_size)

    def bench_probe(self) -> BenchProbe:
        return ClassifyProbe()

    def parity_table(self, report: Any) -> str:
        ref = report["reference"]
        rows: list[list[Any]] = [["pytorch (reference)", "fp32", ref["accuracy"], ref["macro_f1"], None, None, None, "—"]]
        for name, v in report["variants"].items():
            if "error" in v:
                rows.append([f"onnx {name}", v["precision"], None, None, None, None, None, f"FAIL: {v['error']}"])
                continue
            failed = [c["name"] for c in v["checks"] if not c["passed"]]
            verdict = "PASS" if v["passed"] else "FAIL: " + ", ".join(failed)
            rows.append(
                [
                    f"onnx {name}",
                    v["precision"],
                    v["accuracy"],
                    v["macro_f1"],
                    v["accuracy_drop"],
                    v["agreement"],
                    f"{v['max_logit_diff']:.2e}",
                    verdict,
                ]
            )
        head = f"Parity on the {report['split']} split ({report['examples']} examples)\n\n"
        return head + markdown_table(
            ["model", "precision", "accuracy", "macro-F1", "acc. drop", "top-1 agreement", "max |Δlogit|", "gate"], rows
        )

    def bench_table(self, report: Any) -> str:
        return bench_table(report)

    def summary_table(self, parity: Any, bench: Any) -> str:
        return summary_table(parity, bench, f"{parity['split']} accuracy")
