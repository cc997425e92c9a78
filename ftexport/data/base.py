"""The loaded data every task works on: named splits of texts with their label ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclass
class Split:
    name: str
    texts: list[str]
    labels: list[Any]  # one label id per text; token splits: one list of label ids per text (one per word)
    # Token splits only: the words of each text. `texts` then holds the words joined by single
    # spaces, so code that only needs strings (calibration, benchmarks) works on any split.
    words: list[list[str]] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def inputs(self) -> list[Any]:
        """What the task tokenizes: words for a token split, else texts."""
        return self.words if self.words is not None else self.texts


@dataclass
class Data:
    label_names: list[str]
    splits: dict[str, Split]

    def __getitem__(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(f"recipe.data.{name}: this split is not configured; add data.{name} to the recipe")
        return self.splits[name]

    def get(self, name: str) -> Split | None:
        return self.splits.get(name)
