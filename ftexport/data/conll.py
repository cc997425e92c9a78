"""Token-classification data: CoNLL files (or list-valued JSONL / parquet / hub columns) with
one BIO tag per word, checked and turned into (words, tag ids) per sentence.

Checks, each a one-line DataError that names the place and the fix:
- a tag outside the BIO scheme, or an I-X that follows neither B-X nor I-X (file:line);
- a tag in validation/test that the train split (or data.label_names) does not have: the
  label sets differ between splits, and a model trained without the tag could never predict it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core import progress
from ..core.errors import DataError
from .base import Data, Split

LINES = "_lines"  # per-word source line numbers, kept by the CoNLL reader for error messages
OUTSIDE = "O"


def read_conll(path: Path, columns: tuple[str, str]) -> pd.DataFrame:
    """One `token ... TAG` per line (the tag is the last column, so 4-column CoNLL-2003 files
    read as well as 2-column ones), a blank line between sentences, -DOCSTART- lines skipped."""
    words_col, tags_col = columns
    sentences: list[tuple[list[str], list[str], list[int]]] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    sentences.append((words, tags, lines))
                    words, tags, lines = [], [], []
                continue
            if len(parts) < 2:
                raise DataError(f"{path}:{number}: expected 'token TAG' (the tag in the last column), got {line.strip()!r}")
            words.append(parts[0])
            tags.append(parts[-1])
            lines.append(number)
    if words:
        sentences.append((words, tags, lines))
    return pd.DataFrame({words_col: [s[0] for s in sentences], tags_col: [s[1] for s in sentences], LINES: [s[2] for s in sentences]})


def is_token_frame(df: pd.DataFrame, label_column: str) -> bool:
    if LINES in df.columns:
        return True
    if label_column not in df.columns or len(df) == 0:
        return False
    return isinstance(df[label_column].iloc[0], (list, tuple, np.ndarray))


def _where(source: str, lines: list[int] | None, row: int, word: int) -> str:
    return f"{source}:{lines[word]}" if lines is not None else f"{source} row {row + 1}, word {word + 1}"


def check_bio(tags: list[str], source: str, lines: list[int] | None, row: int, repair: bool = False) -> int:
    """Raise on a tag outside O / B-X / I-X, or on an I-X that does not continue an X entity;
    with `repair`, such an I-X becomes B-X in place (how conlleval and seqeval read it).
    Returns the number of repaired tags."""
    previous = OUTSIDE
    repaired = 0
    for j, tag in enumerate(tags):
        if tag != OUTSIDE and not (tag.startswith("B-") or tag.startswith("I-")) or tag in ("B-", "I-"):
            raise DataError(f"{_where(source, lines, row, j)}: tag {tag!r} is not in the BIO scheme (O, B-TYPE, I-TYPE); fix the tag")
        if tag.startswith("I-") and previous not in (f"B-{tag[2:]}", tag):
            if not repair:
                raise DataError(
                    f"{_where(source, lines, row, j)}: tag {tag!r} follows {previous!r}, which breaks the BIO scheme "
                    f"(an I-{tag[2:]} must follow B-{tag[2:]} or I-{tag[2:]}); start the entity with B-{tag[2:]}, "
                    "or set data.bio: repair to read such tags as B- (conlleval's rule)"
                )
            tag = tags[j] = f"B-{tag[2:]}"
            repaired += 1
        previous = tag
    return repaired


def discover_labels(tag_lists: Iterable[list[str]]) -> list[str]:
    """O first, then B-/I- pairs by entity type: a type seen only as B- still gets its I-
    label, so a model can tag a multi-word entity of it."""
    types = sorted({t[2:] for tags in tag_lists for t in tags if t != OUTSIDE})
    return [OUTSIDE] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def check_label_names(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise DataError("recipe.data.label_names: names must be unique")
    bad = [n for n in names if n != OUTSIDE and not (n[:2] in ("B-", "I-") and len(n) > 2)]
    if bad:
        raise DataError(f"recipe.data.label_names: {bad[0]!r} is not a BIO tag; token classification needs O, B-TYPE and I-TYPE names")
    return list(names)


def _rows(section: Any, df: pd.DataFrame, split: str, source: str, names: list[str] | None) -> tuple[list[list[str]], list[list[str]]]:
    """Words and tag strings of every row, after type and BIO checks."""
    words_out, tags_out = [], []
    repaired = 0
    lines_col = df[LINES].tolist() if LINES in df.columns else [None] * len(df)
    for row, (words, tags, lines) in enumerate(zip(df[section.text_column].tolist(), df[section.label_column].tolist(), lines_col)):
        if not isinstance(words, (list, tuple, np.ndarray)) or not isinstance(tags, (list, tuple, np.ndarray)):
            raise DataError(
                f"recipe.data.{split}: row {row + 1} of {source} is not a list of words and a list of tags "
                f"(columns {section.text_column!r}, {section.label_column!r}); every row of a token split needs both"
            )
        words, tags = [str(w) for w in words], list(tags)
        if not words or len(words) != len(tags):
            raise DataError(
                f"recipe.data.{split}: row {row + 1} of {source} has {len(words)} words and {len(tags)} tags; give one tag per word"
            )
        if any(not isinstance(t, str) for t in tags):  # hub data: integer class ids
            if names is None:
                raise DataError(
                    f"recipe.data.label_names: {source} holds integer tags; give the tag names in id order (O, B-PER, I-PER, ...)"
                )
            try:
                tags = [names[int(t)] for t in tags]
            except (IndexError, ValueError):
                raise DataError(f"recipe.data.{split}: row {row + 1} of {source} has a tag id outside 0..{len(names) - 1}") from None
        repaired += check_bio(tags, source, lines, row, section.bio == "repair")
        words_out.append(words)
        tags_out.append(tags)
    if repaired:
        progress.info(f"{source}: {repaired} I- tags that opened an entity read as B- (data.bio: repair)")
    return words_out, tags_out


def load_token_splits(section: Any, frames: dict[str, tuple[pd.DataFrame, str]], splits: tuple[str, ...]) -> Data:
    given = check_label_names(section.label_names) if section.label_names else None
    parsed = {split: _rows(section, df, split, where, given) for split, (df, where) in frames.items()}
    if given is not None:
        names = given
    elif "train" in parsed:
        names = discover_labels(parsed["train"][1])
    else:
        raise DataError("recipe.data.label_names: needed when there is no training split to read the tags from")
    if len(names) < 2:
        raise DataError(f"recipe.data.train: found only the tags {names}; token classification needs at least one entity type")

    index = {n: i for i, n in enumerate(names)}
    limits = {"train": section.max_train_samples, "validation": section.max_eval_samples, "test": section.max_test_samples}
    out: dict[str, Split] = {}
    for split, (words, tags) in parsed.items():
        where = frames[split][1]
        unknown = sorted({t for row in tags for t in row if t not in index})
        if unknown:
            origin = "data.label_names" if given is not None else "the train split"
            raise DataError(
                f"recipe.data.{split}: tags {unknown} in {where} are not in {origin} (the label sets differ between splits); "
                f"list every tag in data.label_names, in the order the model should use, or fix the file"
            )
        if split not in splits:
            continue
        rows = list(range(len(words)))
        limit = limits[split]
        if limit is not None and limit < len(rows):
            rows = sorted(pd.Series(rows).sample(n=limit, random_state=section.sample_seed).tolist())
        sel_words = [words[i] for i in rows]
        out[split] = Split(split, [" ".join(w) for w in sel_words], [[index[t] for t in tags[i]] for i in rows], sel_words)
    return Data(names, out)


def tags_of(ids: list[list[int]], names: list[str]) -> list[list[str]]:
    return [[names[i] for i in row] for row in ids]
