"""Labelled splits from local files or the Hugging Face Hub, checked and turned into (texts,
label ids); and the content fingerprint of a data section that stage keys build on.

A split whose label column holds one tag per word (CoNLL files, or list-valued columns in
JSONL/parquet/hub data) becomes a token split (`ftexport.data.conll`: BIO checks, label
discovery, label sets that differ between splits): a property of the file, not of the task.

Label names are fixed once (from the recipe, or from the training split) and every other
split must fit them: a label outside the set is an error, never a silent new class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..core import progress
from ..core.artifacts import hash_files
from ..core.errors import DataError
from .base import SPLITS, Data, Split
from .conll import is_token_frame, load_token_splits
from .files import read_hub, read_table
from .phrases import outside, whole_sentences

# Fields that say where the data lies, not what it is: the fingerprint hashes the files' bytes instead.
_WHERE = ("root", "train", "validation", "test")


def _label_names(section: Any, train_values: pd.Series | None) -> list[str]:
    if section.label_names:
        if len(set(section.label_names)) != len(section.label_names):
            raise DataError("recipe.data.label_names: names must be unique")
        return list(section.label_names)
    if train_values is None:
        raise DataError("recipe.data.label_names: needed when there is no training split to read the labels from")
    values = train_values.unique().tolist()
    if all(_is_int(v) for v in values):
        ints = sorted(int(v) for v in values)
        if ints[0] < 0:
            raise DataError(f"recipe.data.train: negative label {ints[0]} (unlabelled rows?); remove them or set data.label_names")
        return [str(i) for i in range(ints[-1] + 1)]
    return sorted(str(v) for v in values)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) or (hasattr(v, "is_integer") and not isinstance(v, str) and float(v).is_integer())


def _to_ids(values: pd.Series, names: list[str], split: str, path: str) -> list[int]:
    index = {n: i for i, n in enumerate(names)}
    ids = []
    for row, v in zip(values.index, values.tolist()):  # the file's own row numbers: sampling keeps them
        if isinstance(v, str) and v in index:
            ids.append(index[v])
        elif _is_int(v) and 0 <= int(v) < len(names) and not isinstance(v, str):
            ids.append(int(v))
        else:
            raise DataError(
                f"recipe.data.{split}: label {v!r} in row {row + 1} of {path} is not in the label set "
                f"[{', '.join(names)}]; fix the row or add the label to data.label_names"
            )
    return ids


def load_data(section: Any, splits: tuple[str, ...] = SPLITS, labelled: bool = True) -> Data:
    """Load the configured splits (those of `splits` that the recipe names) and map labels.

    labelled=False (language modelling): only the text column is read and required; the
    splits carry no labels and the label set is empty."""
    frames: dict[str, tuple[pd.DataFrame, str]] = {}
    holdout = section.dev_holdout == "sentences" and bool({"train", "validation"} & set(splits))  # each split then needs the other
    for split in SPLITS:
        wanted = split in splits or (labelled and split == "train" and not section.label_names) or (holdout and split != "test")
        if not wanted:
            continue  # the train split is read anyway when it alone defines the label set
        if section.hub is not None:
            df = read_hub(section, split)
            where = f"{section.hub.dataset}:{split}"
        else:
            path = split_path(section, split)
            df = read_table(path, section.format, split, (section.text_column, section.label_column)) if path is not None else None
            where = str(path)
        if df is not None:
            frames[split] = (df, where)

    for split, (df, where) in frames.items():
        if len(df) == 0:
            raise DataError(f"recipe.data.{split}: {where} has no rows; point at a file with labelled examples")
        columns = (("text_column", section.text_column), ("label_column", section.label_column))
        for field, col in columns if labelled else columns[:1]:
            if col not in df.columns:
                cols = ", ".join(map(str, df.columns[:10]))
                raise DataError(f"recipe.data.{split}: {where} has no column {col!r} (it has: {cols}); set data.{field}")

    if any(is_token_frame(df, section.label_column) for df, _ in frames.values()):
        if section.dev_holdout != "rows":
            raise DataError("recipe.data.dev_holdout: sentences is for one-label-per-text splits, not tagged words; set dev_holdout: rows")
        return load_token_splits(section, frames, splits)

    train = frames.get("train")
    names = _label_names(section, train[0][section.label_column] if train else None) if labelled else []
    if labelled and len(names) < 2:
        raise DataError(f"recipe.data.train: found only the label {names} ; a classifier needs at least two labels")

    limits = {"train": section.max_train_samples, "validation": section.max_eval_samples, "test": section.max_test_samples}
    if holdout:
        _hold_out_sentences(section, frames, limits["validation"])
    out: dict[str, Split] = {}
    for split, (df, where) in frames.items():
        if split not in splits:
            continue
        limit = None if holdout and split == "validation" else limits[split]  # the held-out sentences are sampled already
        if limit is not None and limit < len(df):
            df = df.sample(n=limit, random_state=section.sample_seed)
        texts = df[section.text_column].tolist()
        for row, t in zip(df.index, texts):  # the file's own row numbers: sampling keeps them
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"recipe.data.{split}: row {row + 1} of {where} has no text ({t!r}) in column {section.text_column!r}")
        out[split] = Split(split, texts, _to_ids(df[section.label_column], names, split, where) if labelled else [])
    if labelled and "train" in out and len(set(out["train"].labels)) < 2:
        only = names[out["train"].labels[0]]
        raise DataError(
            f"recipe.data.train: every training row has the label {only!r}; a classifier needs examples of at least two labels "
            "(check data.label_column, or max_train_samples if it cut the split)"
        )
    return Data(names, out)


def _hold_out_sentences(section: Any, frames: dict[str, tuple[pd.DataFrame, str]], limit: int | None) -> None:
    """data.dev_holdout: sentences. Dev becomes the validation split's whole sentences (a sample
    of `limit` of them), and the training rows that are phrases of those leave the training split."""
    missing = [s for s in ("train", "validation") if s not in frames]
    if missing:
        need = " and ".join(missing)
        raise DataError(f"recipe.data.dev_holdout: sentences needs the {need} split; configure data.{missing[0]} or set dev_holdout: rows")
    col = section.text_column
    (train, t_where), (dev, d_where) = frames["train"], frames["validation"]
    dev = dev.iloc[whole_sentences(dev[col].tolist(), train[col].tolist())]
    if dev.empty:
        raise DataError(
            f"recipe.data.dev_holdout: every row of {d_where} is a phrase of a training row or of another dev row, "
            "so there is no whole sentence to hold out; set dev_holdout: rows"
        )
    if limit is not None and limit < len(dev):
        dev = dev.sample(n=limit, random_state=section.sample_seed)
    kept = train.iloc[outside(train[col].tolist(), dev[col].tolist())]
    progress.info(
        f"data: dev_holdout sentences: {len(dev)} whole sentences of {d_where} for dev; "
        f"{len(train) - len(kept)} training rows that are phrases of them left out ({len(kept)} remain)"
    )
    frames["train"], frames["validation"] = (kept, t_where), (dev, d_where)


def split_path(section: Any, split: str) -> Path | None:
    value = getattr(section, split)
    if value is None:
        return None
    return Path(section.root) / value if section.root else Path(value)


def fingerprint(section: Any) -> str:
    """Hash of the data's content and settings, so `ftexport run` notices edited data. Paths
    are not part of it, only the bytes of the files they name: the same files reached through
    a relative or an absolute `data.root` give the same key."""
    settings = {k: v for k, v in section.model_dump(mode="json").items() if k not in _WHERE}
    if settings.get("dev_holdout") == "rows":  # added later: at its default it hashes like its absence, so keys stay
        del settings["dev_holdout"]
    files: list[tuple[str, Path]] = []
    if section.hub is None:
        for split in SPLITS:
            path = split_path(section, split)
            if path is None or not path.exists():
                continue
            found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            files += [(f"{split}/{f.relative_to(path).as_posix() if path.is_dir() else ''}", f) for f in found]
    return hash_files(files, json.dumps(settings, sort_keys=True))
