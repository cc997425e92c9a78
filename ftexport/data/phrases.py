"""data.dev_holdout: sentences — a dev split that does not leak through its phrases.

Treebank-derived sets such as GLUE's SST-2 list every phrase of a sentence as a row of its own,
and a random cut of such a set into training and dev rows puts most dev rows inside a training
row, or most of their words in one (SST-2 here: 88% and 72% of the 2,000 dev rows, against
0.2% and 1% of the test split's sentences; docs/results/length-slices-xeon.json). Dev then
scores what the model has read, and cannot rank what matters on unseen sentences.

The cut made here: the dev rows are the validation split's whole sentences (the rows that
neither a training row nor another validation row contains), and every training row that is
a phrase of a dev row used leaves the training split. Texts are compared word by word
(whitespace-insensitive)."""

from __future__ import annotations

from collections.abc import Iterable


def words(text: str) -> str:
    """A text with its whitespace made single spaces: the form phrases are compared in."""
    return " ".join(text.split())


def pieces(text: str) -> set[str]:
    """Every run of consecutive words of `text` (itself included)."""
    w = text.split()
    return {" ".join(w[i:j]) for i in range(len(w)) for j in range(i + 1, len(w) + 1)}


def all_pieces(texts: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for t in texts:
        out |= pieces(t)
    return out


def whole_sentences(dev: list[str], train: list[str]) -> list[int]:
    """Indices of the `dev` texts that no training text and no other dev text contains."""
    inner = all_pieces(train)
    for t in dict.fromkeys(words(t) for t in dev):
        inner |= pieces(t) - {t}
    return [i for i, t in enumerate(dev) if words(t) not in inner]


def outside(texts: list[str], wholes: Iterable[str]) -> list[int]:
    """Indices of the `texts` that are not a phrase of (nor equal to) any of `wholes`."""
    inside = all_pieces(wholes)
    return [i for i, t in enumerate(texts) if words(t) not in inside]
