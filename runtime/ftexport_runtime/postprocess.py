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


# ---- token classification: per-token logits -> entity spans -------------------------------

AGGREGATIONS = ("simple", "first")


@dataclass(frozen=True)
class Entity:
    """One entity of a text, as the transformers NER pipeline gives it with an aggregation
    strategy: its type, mean score, surface string and [start, end) character offsets."""

    entity_group: str
    score: float
    word: str
    start: int
    end: int

    def as_dict(self) -> dict[str, object]:
        return {"entity_group": self.entity_group, "score": self.score, "word": self.word, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Entities:
    """The answer for one text of a token-classification bundle."""

    entities: tuple[Entity, ...]

    def as_dict(self) -> dict[str, object]:
        return {"entities": [e.as_dict() for e in self.entities]}

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.entities)

    def __len__(self) -> int:
        return len(self.entities)


def _bio(label: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'), 'I-PER' -> ('I', 'PER'); anything else (O) -> ('I', label),
    as transformers' pipeline reads tags."""
    if label.startswith("B-") or label.startswith("I-"):
        return label[0], label[2:]
    return "I", label


def group_entities(units: list[tuple[str, float, int, int]], text: str) -> list[Entity]:
    """Consecutive units (tokens or words: label, score, start, end) of one type form an
    entity; a B- always opens a new one. The score is the mean of the units' scores. O is
    grouped like a type, then dropped, so 'B-PER O I-PER' gives two PER entities."""
    entities: list[Entity] = []
    group: list[tuple[str, float, int, int]] = []

    def close() -> None:
        if group and _bio(group[0][0])[1] != "O":
            start, end = group[0][2], group[-1][3]
            entities.append(Entity(_bio(group[0][0])[1], float(np.mean([u[1] for u in group])), text[start:end], start, end))

    for unit in units:
        bi, tag = _bio(unit[0])
        if group and tag == _bio(group[-1][0])[1] and bi != "B":
            group.append(unit)
        else:
            close()
            group = [unit]
    close()
    return entities


def token_entities(
    logits: np.ndarray,
    labels: list[str],
    offsets: list[tuple[int, int]],
    special: list[int],
    text: str,
    aggregation: str = "simple",
) -> list[Entity]:
    """Entities of one text from its [tokens, labels] logits and the tokenizer's character
    offsets (special and padding tokens, special=1, are skipped).

    simple: each sub-token is labelled by its own argmax, then grouped.
    first:  word level: a word takes the label (and score) of its first sub-token and spans
            all of its sub-tokens. A word is a run of sub-tokens with no whitespace between
            them, so 'U.S.' is one word though the tokenizer splits it into four pieces.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
    probs = softmax(np.asarray(logits, dtype=np.float64))
    tokens = [i for i in range(min(len(offsets), len(probs))) if not special[i] and offsets[i][1] > offsets[i][0]]
    if aggregation == "simple":
        units = [(labels[int(probs[i].argmax())], float(probs[i].max()), offsets[i][0], offsets[i][1]) for i in tokens]
        return group_entities(units, text)
    units = []
    prev_end = None
    for i in tokens:
        start, end = offsets[i]
        if prev_end is not None and start == prev_end and units:  # glued to the previous sub-token: same word
            label, score, w_start, _ = units[-1]
            units[-1] = (label, score, w_start, end)
        else:
            k = int(probs[i].argmax())
            units.append((labels[k], float(probs[i][k]), start, end))
        prev_end = end
    return group_entities(units, text)
