"""Labelled text from local files (CSV, TSV, JSONL, parquet, `datasets.save_to_disk`
folders, CoNLL) or the Hugging Face Hub, checked and turned into (texts, label ids).

Token classification (NER): a split whose label column holds one tag per word (CoNLL files,
or list-valued columns in JSONL/parquet/hub data) becomes a token split, handled in
`ftexport.tokens` (BIO checks, label discovery, label sets that differ between splits).

Label names are fixed once (from the recipe, or from the training split) and every other
split must fit them: a label outside the set is an error, never a silent new class.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import DataError, first_line
from .recipe import DataSection

SPLITS = ("train", "validation", "test")
_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
           ".conll": "conll", ".txt": "conll", ".iob": "conll"}


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


def detect_format(path: Path, fmt: str, section: str = "data") -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "disk"
    kind = _SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: cannot tell the file format from its suffix; set {section}.format (csv, tsv, jsonl, parquet, conll, disk)")
    return kind


def read_table(path: Path, fmt: str = "auto", split: str = "train", columns: tuple[str, str] = ("text", "label"),
               section: str | None = None) -> pd.DataFrame:
    """Read one split into a DataFrame; every failure names the file and what to do.
    `columns` names the word and tag columns a CoNLL file (which has no header) is read into;
    `section` is the recipe section that names the file (default: data.SPLIT)."""
    field = f"recipe.{section}" if section else f"recipe.data.{split}"
    if not path.exists():
        raise DataError(f"{field}: {path} does not exist")
    kind = detect_format(path, fmt, section or "data")
    try:
        if kind == "conll":
            from .tokens import read_conll

            return read_conll(path, columns)
        if kind == "csv":
            return pd.read_csv(path, keep_default_na=False)
        if kind == "tsv":
            # GLUE-style TSV: quotes are literal text, not field delimiters.
            return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
        if kind in ("jsonl", "json"):
            return pd.read_json(path, lines=(kind == "jsonl" or _looks_like_jsonl(path)))
        if kind == "parquet":
            return pd.read_parquet(path)
        if kind == "disk":
            return _read_saved_dataset(path, split)
    except DataError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{field}: cannot read {path} as {kind} ({first_line(e)})") from None
    raise DataError(f"recipe.data.format: unknown format {kind!r}")


def _looks_like_jsonl(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        head = f.read(1).lstrip()
    return head != "["


def _read_saved_dataset(path: Path, split: str) -> pd.DataFrame:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path}: reading a save_to_disk folder needs the 'datasets' package; pip install datasets") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"recipe.data.{split}: {path} is not a datasets.save_to_disk folder ({str(e)[:150]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"recipe.data.{split}: {path} holds splits {list(ds)}, not {split!r}; point at one split's folder")
        ds = ds[split]
    return ds.to_pandas()


def _read_hub(section: DataSection, split: str) -> pd.DataFrame | None:
    hub = section.hub
    assert hub is not None
    if split not in hub.splits:
        return None
    try:
        import datasets

        ds = datasets.load_dataset(hub.dataset, hub.config, split=hub.splits[split])
    except Exception as e:  # network, missing dataset, missing split: all user-fixable
        raise DataError(f"recipe.data.hub: cannot load {hub.dataset}/{hub.config} split {hub.splits[split]!r} ({str(e)[:200]})") from None
    return ds.to_pandas()


def _label_names(section: DataSection, train_values: pd.Series | None) -> list[str]:
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
    for row, v in enumerate(values.tolist()):
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


def load_data(section: DataSection, splits: tuple[str, ...] = SPLITS, labelled: bool = True) -> Data:
    """Load the configured splits (those of `splits` that the recipe names) and map labels.

    labelled=False (language modelling): only the text column is read and required; the
    splits carry no labels and the label set is empty."""
    frames: dict[str, tuple[pd.DataFrame, str]] = {}
    for split in SPLITS:
        if split not in splits and not (labelled and split == "train" and not section.label_names):
            continue  # the train split is read anyway when it alone defines the label set
        if section.hub is not None:
            df = _read_hub(section, split)
            where = f"{section.hub.dataset}:{split}"
        else:
            path = section.split_path(split)
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

    from .tokens import is_token_frame, load_token_splits

    if any(is_token_frame(df, section.label_column) for df, _ in frames.values()):
        return load_token_splits(section, frames, splits)

    train = frames.get("train")
    names = _label_names(section, train[0][section.label_column] if train else None) if labelled else []
    if labelled and len(names) < 2:
        raise DataError(f"recipe.data.train: found only the label {names} ; a classifier needs at least two labels")

    limits = {"train": section.max_train_samples, "validation": section.max_eval_samples, "test": section.max_test_samples}
    out: dict[str, Split] = {}
    for split, (df, where) in frames.items():
        if split not in splits:
            continue
        limit = limits[split]
        if limit is not None and limit < len(df):
            df = df.sample(n=limit, random_state=section.sample_seed)
        texts = df[section.text_column].tolist()
        for row, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"recipe.data.{split}: row {row + 1} of {where} has no text ({t!r}) in column {section.text_column!r}")
        out[split] = Split(split, texts, _to_ids(df[section.label_column], names, split, where) if labelled else [])
    return Data(names, out)


def fingerprint(section: DataSection) -> str:
    """Hash of the data files and settings, so `ftexport run` notices edited data."""
    h = hashlib.sha256(section.model_dump_json().encode())
    if section.hub is None:
        for split in SPLITS:
            path = section.split_path(split)
            if path is None or not path.exists():
                continue
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for f in files:
                h.update(f.name.encode())
                with open(f, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
    return h.hexdigest()[:16]
