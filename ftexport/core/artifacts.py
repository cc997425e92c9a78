"""Artifacts are directories: the atomic stage folder, its typed record (ftexport.json), keys.

A stage writes into a temporary sibling and renames it into place only when it succeeded, so
a crash never leaves a directory a later stage would trust. A temporary sibling whose process
is gone (kill -9) is removed the next time a stage writes beside it.

Each artifact carries ftexport.json, a `StageRecord`: which stage made it, from what (input
keys), with which settings, the package versions and its metrics, and what a later stage must
know about the model (task, labels, max length, method, base model). Its `key` hashes inputs
and settings: when `ftexport run` finds an artifact whose key matches, the stage is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

RECORD = "ftexport.json"
RECORD_VERSION = 1
_PACKAGES = (
    "ftexport",
    "torch",
    "transformers",
    "peft",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tokenizers",
    "tensorrt",
)
_TMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


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


def hash_files(files: Iterable[tuple[str, Path]], seed: str = "") -> str:
    """A content hash of (name, file) pairs: the same bytes under the same names give the same
    hash wherever the files lie and however their paths are spelled."""
    h = hashlib.sha256(seed.encode())
    for name, path in files:
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale(parent: Path, name: str) -> list[Path]:
    """Remove `.NAME.tmp-PID` / `.NAME.old-PID` siblings whose process no longer runs (a stage
    killed mid-write). Those of live processes are left alone: another run may be writing."""
    removed = []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = _TMP.match(p.name)
        if m and m["name"] == name and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def stage_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent, final.name)
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


class JsonView(Mapping[str, Any]):
    """Read access to a typed record as the JSON object it is written as (`record["metrics"]`)."""

    def to_json(self) -> dict[str, Any]:  # pragma: no cover - each record defines it
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=str) + "\n"


@dataclass
class StageRecord(JsonView):
    """ftexport.json: what made an artifact. `model` stages (train, distill, merge) also say
    what a later stage needs to load the model: task, labels, max_length, method, base_model."""

    stage: str
    key: str
    inputs: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    labels: list[str] | None = None
    max_length: int | None = None
    method: str | None = None
    base_model: str | None = None
    trust_remote_code: bool = False
    versions: dict[str, str] = field(default_factory=versions)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    version: int = RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in ("task", "labels", "max_length", "method", "base_model"):  # absent on non-model stages, as before
            if out[name] is None:
                del out[name]
        if not out["trust_remote_code"] and self.task is None:
            del out["trust_remote_code"]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs.setdefault("version", 0)  # written before records were versioned
        return cls(**kwargs)

    def write(self, directory: Path) -> StageRecord:
        unlinked(Path(directory) / RECORD).write_text(self.dumps())  # may be a link into an upstream artifact
        return self


def read_record(directory: str | os.PathLike[str]) -> StageRecord | None:
    """The record of an artifact directory, or None when it has none (or an unreadable one)."""
    path = Path(directory) / RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return StageRecord.from_json(data) if isinstance(data, dict) and "stage" in data else None
    except (json.JSONDecodeError, TypeError):
        return None


def key_of(directory: str | os.PathLike[str] | None) -> str | None:
    """The key of an artifact (None when it has no record): what a later stage's key builds on."""
    record = read_record(directory) if directory is not None else None
    return record.key if record else None


def is_fresh(directory: str | os.PathLike[str], key: str) -> bool:
    return key_of(directory) == key


def link_tree(src: Path, dst: Path, skip: tuple[str, ...] = (RECORD, "manifest.json")) -> None:
    """Copy a directory's files into `dst` as hard links (copies across filesystems).

    A linked file is the source's file: writing it in place writes the source too. Whatever a
    stage writes into `dst` goes through `unlinked` first."""
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


def unlinked(path: Path) -> Path:
    """`path` in a folder made by `link_tree`, ready to be written: its link to the source's file
    (and to an ONNX model's external-data file beside it) is dropped, so the write makes a new
    file and the bundle or model folder the stage read from keeps its bytes (and its sha256)."""
    path.unlink(missing_ok=True)
    path.with_name(f"{path.name}.data").unlink(missing_ok=True)
    return path
