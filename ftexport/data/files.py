"""Reading one split from a file (CSV, TSV, JSONL, parquet, a `datasets.save_to_disk` folder,
CoNLL) or the Hugging Face Hub into a DataFrame; every failure names the file and the fix."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.errors import DataError, first_line

_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".conll": "conll",
    ".txt": "conll",
    ".iob": "conll",
}


def detect_format(path: Path, fmt: str, section: str = "data") -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "disk"
    kind = _SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: cannot tell the file format from its suffix; set {section}.format (csv, tsv, jsonl, parquet, conll, disk)"
        )
    return kind


def read_table(
    path: Path, fmt: str = "auto", split: str = "train", columns: tuple[str, str] = ("text", "label"), section: str | None = None
) -> pd.DataFrame:
    """Read one split into a DataFrame; every failure names the file and what to do.
    `columns` names the word and tag columns a CoNLL file (which has no header) is read into;
    `section` is the recipe section that names the file (default: data.SPLIT)."""
    field = f"recipe.{section}" if section else f"recipe.data.{split}"
    if not path.exists():
        raise DataError(f"{field}: {path} does not exist")
    kind = detect_format(path, fmt, section or "data")
    try:
        if kind == "conll":
            from .conll import read_conll

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


def read_hub(section: Any, split: str) -> pd.DataFrame | None:
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
