"""Artifacts are directories. A stage writes into a temporary sibling and renames it into
place only when it succeeded, so a crash never leaves a directory a later stage would trust.

Each artifact carries ftexport.json: which stage made it, from what (input keys), with
which settings, the package versions and its metrics. Its `key` hashes all of that: when
`ftexport run` finds an artifact whose key matches, the stage is skipped (resume).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

RECORD = "ftexport.json"
_PACKAGES = ("ftexport", "torch", "transformers", "peft", "optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-gpu", "tokenizers", "tensorrt")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def make_key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def stage_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def write_record(directory: Path, stage: str, key: str, inputs: dict[str, Any], settings: dict[str, Any], metrics: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    record = {
        "stage": stage,
        "key": key,
        "inputs": inputs,
        "settings": settings,
        "metrics": metrics or {},
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    path = directory / RECORD
    if path.exists():  # may be a hard link into an upstream artifact: never write through it
        path.unlink()
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def read_record(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    path = Path(directory) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_fresh(directory: str | os.PathLike[str], key: str) -> bool:
    record = read_record(directory)
    return record is not None and record.get("key") == key


def link_tree(src: Path, dst: Path, skip: tuple[str, ...] = (RECORD, "manifest.json")) -> None:
    """Copy a directory's files into `dst` as hard links (copies across filesystems)."""
    for f in src.rglob("*"):
        rel = f.relative_to(src)
        if f.is_dir() or rel.as_posix() in skip:
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
