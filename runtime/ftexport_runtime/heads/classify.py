"""text-classification: one label per text, with the softmax score of every label."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BundleError
from .predict import PREDICT, predict_route


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    scores: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "score": self.score, "scores": dict(self.scores)}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def check_width(logits: np.ndarray, labels: list[str], per: str) -> None:
    """The model gives one score per label the manifest names, in that order; a manifest of
    another model (or an edited one) would otherwise name answers wrongly, or fail on an index."""
    if logits.shape[-1] != len(labels):
        raise BundleError(
            f"the model gives {logits.shape[-1]} scores per {per} but manifest.json names {len(labels)} labels "
            f"({', '.join(labels)}): the manifest is not this model's; export or pack the bundle again"
        )


def classify(logits: np.ndarray, labels: list[str]) -> list[Prediction]:
    logits = np.asarray(logits, dtype=np.float64)
    check_width(logits, labels, "text")
    probs = softmax(logits)
    best = probs.argmax(axis=-1)
    return [Prediction(labels[k], float(p[k]), {name: float(x) for name, x in zip(labels, p)}) for k, p in zip(best, probs)]


def check_labels(data: dict[str, Any], where: str) -> None:
    """A classifier's manifest names its labels (the model's output order)."""
    labels = data.get("labels")
    if not labels or not all(isinstance(x, str) for x in labels):
        raise BundleError(f"{where}: field 'labels' must be a non-empty list of strings")


def prediction_schema(info: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema of one Prediction, with this bundle's labels."""
    labels = [str(x) for x in info.get("labels", [])]
    return {
        "type": "object",
        "required": ["label", "score", "scores"],
        "properties": {
            "label": {"type": "string", **({"enum": labels} if labels else {})},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    }


class ClassifyHead:
    """The head of text-classification bundles: logits per text -> Prediction."""

    name = "text-classification"
    encoder = True  # the model maps tokenizer encodings to logits: predict, logits, encode and run apply
    serves = True  # `ftexport-runtime serve` answers it (its routes)
    hint = "use predict()"  # what to call on such a bundle, for the one-line refusals
    command = "predict"  # the ftexport-runtime command for such a bundle
    commands = (PREDICT,)
    routes = (predict_route("Prediction", prediction_schema, "Label and scores for each text, in order"),)

    @staticmethod
    def check_manifest(data: dict[str, Any], where: str) -> dict[str, Any]:
        check_labels(data, where)
        return {}

    def __init__(self, predictor: Any):
        pass  # nothing to hold: the labels are the predictor's

    def predict(self, p: Any, texts: Sequence[str]) -> list[Prediction]:
        return classify(p.logits(texts), p.labels)

    def predict_batch(self, p: Any, texts: Sequence[str], batch_size: int) -> list[Prediction]:
        texts = p._check_texts(texts)
        parts = [p.run(p.encode(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)]
        return classify(np.concatenate(parts, axis=0), p.labels)

    @staticmethod
    def format_text(text: str, answer: Prediction) -> str:
        """One line of `ftexport-runtime predict`: label, score, text."""
        return f"{answer.label}\t{answer.score:.4f}\t{text}"
