"""Turn logits into answers, in numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def classify(logits: np.ndarray, labels: list[str]) -> list[Prediction]:
    probs = softmax(np.asarray(logits, dtype=np.float64))
    best = probs.argmax(axis=-1)
    return [
        Prediction(labels[k], float(p[k]), {name: float(x) for name, x in zip(labels, p)})
        for k, p in zip(best, probs)
    ]
