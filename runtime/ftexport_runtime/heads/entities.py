"""token-classification (NER): per-token logits -> entity spans with character offsets, as
the transformers token-classification pipeline gives them with an aggregation strategy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PredictError
from .classify import check_labels, check_width, softmax
from .predict import PREDICT, predict_route

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
    if label.startswith(("B-", "I-")):
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
    logits = np.asarray(logits, dtype=np.float64)
    check_width(logits, labels, "token")
    probs = softmax(logits)
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


def check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise PredictError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


def check_words(words: Sequence[Sequence[str]]) -> list[list[str]]:
    if isinstance(words, str) or not words:
        raise PredictError("expected a non-empty list of sentences, each a list of words")
    out = []
    for i, sentence in enumerate(words):
        if isinstance(sentence, str) or not sentence or not all(isinstance(w, str) and w.strip() for w in sentence):
            raise PredictError(f"sentence #{i} must be a non-empty list of non-empty word strings")
        out.append(list(sentence))
    return out


def entities_schema(info: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI schema of one text's Entities."""
    types = sorted({_bio(str(x))[1] for x in info.get("labels", [])} - {"O"})
    entity = {
        "type": "object",
        "required": ["entity_group", "score", "word", "start", "end"],
        "properties": {
            "entity_group": {"type": "string", **({"enum": types} if types else {})},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "word": {"type": "string"},
            "start": {"type": "integer", "minimum": 0},
            "end": {"type": "integer", "minimum": 0},
        },
    }
    return {"type": "object", "required": ["entities"], "properties": {"entities": {"type": "array", "items": entity}}}


class EntitiesHead:
    """The head of token-classification bundles: predict() answers each text's Entities."""

    name = "token-classification"
    encoder = True  # the model maps tokenizer encodings to logits (one row per token)
    serves = True  # POST /v1/predict answers {"entities": [...]} per text
    hint = "use predict()"
    command = "predict"
    commands = (PREDICT,)
    routes = (predict_route("Entities", entities_schema, "The entities of each text (type, score, surface, character offsets), in order"),)

    @staticmethod
    def check_manifest(data: dict[str, Any], where: str) -> dict[str, Any]:
        check_labels(data, where)
        return {}

    @classmethod
    def refuse(cls, method: str, head: Any) -> str:
        """The error for calling one of this head's methods on a bundle of another task."""
        return f"{method}() needs a {cls.name} bundle; this one is {head.name}"

    def __init__(self, predictor: Any):
        pass  # nothing to hold: the labels and the tokenizer are the predictor's

    def predict(self, p: Any, texts: Sequence[str]) -> list[Entities]:
        return self.entities(p, texts)

    def predict_batch(self, p: Any, texts: Sequence[str], batch_size: int) -> list[Entities]:
        return self.entities(p, texts, batch_size=batch_size)

    def entities(self, p: Any, texts: Sequence[str], aggregation: str = "simple", batch_size: int | None = None) -> list[Entities]:
        check_aggregation(aggregation)
        texts = p._check_texts(texts)
        size = batch_size or p.max_batch
        out: list[Entities] = []
        for i in range(0, len(texts), size):
            chunk = texts[i : i + size]
            encs = p.tokenizer.encode_batch(chunk)
            logits = p.run(p._feeds(encs))
            for row, (text, enc) in enumerate(zip(chunk, encs)):
                out.append(Entities(tuple(token_entities(logits[row], p.labels, enc.offsets, enc.special_tokens_mask, text, aggregation))))
        return out

    @staticmethod
    def _encode_words(p: Any, words: list[list[str]]) -> tuple[list[Any], np.ndarray]:
        encs = p.tokenizer.encode_batch(words, is_pretokenized=True)
        return encs, p.run(p._feeds(encs))

    def entities_from_words(self, p: Any, words: Sequence[Sequence[str]], aggregation: str = "simple") -> list[Entities]:
        check_aggregation(aggregation)
        words = check_words(words)
        out: list[Entities] = []
        for i in range(0, len(words), p.max_batch):
            chunk = words[i : i + p.max_batch]
            encs, logits = self._encode_words(p, chunk)
            for row, (sentence, enc) in enumerate(zip(chunk, encs)):
                starts = np.cumsum([0] + [len(w) + 1 for w in sentence])  # where each word begins in the joined text
                offsets = [
                    (0, 0) if w is None else (int(starts[w]) + s, int(starts[w]) + e) for w, (s, e) in zip(enc.word_ids, enc.offsets)
                ]
                out.append(
                    Entities(
                        tuple(token_entities(logits[row], p.labels, offsets, enc.special_tokens_mask, " ".join(sentence), aggregation))
                    )
                )
        return out

    def word_logits(self, p: Any, words: Sequence[Sequence[str]]) -> list[np.ndarray]:
        words = check_words(words)
        out: list[np.ndarray] = []
        for i in range(0, len(words), p.max_batch):
            encs, logits = self._encode_words(p, words[i : i + p.max_batch])
            for row, enc in enumerate(encs):
                first: dict[int, int] = {}
                for pos, w in enumerate(enc.word_ids):
                    if w is not None and w not in first:
                        first[w] = pos
                out.append(logits[row, [first[w] for w in sorted(first)]])
        return out

    @staticmethod
    def format_text(text: str, answer: Entities) -> str:
        """`ftexport-runtime predict`: the text, then one line per entity: type, score, [start:end], surface."""
        return "\n".join([text] + [f"  {e.entity_group}\t{e.score:.4f}\t{e.start}:{e.end}\t{e.word}" for e in answer])
