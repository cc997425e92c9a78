"""A teacher's outputs as a file: its logits on every text a distillation recipe uses, keyed by
each text's hash. `ftexport distill RECIPE --save-teacher-outputs F` writes one from the
teacher model; a recipe whose `distill.teacher_outputs` names F then distils without the
teacher model at all.

Why a file: the teacher is the expensive half of distillation (on 2 CPU cores, 40-70 min to
fine-tune all-mpnet-base-v2 and 9-30 min to read 65,000 texts), and a 110M-parameter model
trained again on another CPU gives other floats, so its students differ too. Its logits are
small (8 bytes of hash + 4 per label per text, about 1 MB for SST-2): committed beside the
recipe, they make every student reproducible from them on any machine, and let a teacher
trained on a GPU box teach students trained elsewhere.

Layout (numpy .npz, no pickles): `ids` (uint64, the first 8 bytes of each text's sha256, in
the order written), `logits` (float32, one row per id), `meta` (JSON: format, label names,
max_length, the teacher's name, hash, size and test accuracy, the machine, and a sha256 of
`ids` and `logits` that catches a damaged or edited file)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ModelError, RecipeError

FORMAT = "ftexport-teacher-outputs/1"
WHERE = "recipe.distill.teacher_outputs"


def text_ids(texts: list[str]) -> np.ndarray:
    """Each text's id: the first 8 bytes of its UTF-8 sha256, as uint64."""
    return np.array([int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little") for t in texts], dtype=np.uint64)


def _digest(ids: np.ndarray, logits: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(ids).tobytes())
    h.update(np.ascontiguousarray(logits, dtype=np.float32).tobytes())
    return h.hexdigest()


def save_npz(path: Path, compressed: bool = False, **arrays: np.ndarray) -> None:
    """Write `arrays` to `path` atomically: a temporary file beside it, renamed when whole (a
    crash leaves no half-written file that a later run would read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    try:
        (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_teacher_outputs(
    path: Path, texts: list[str], logits: np.ndarray, meta: dict[str, Any], before: TeacherOutputs | None = None
) -> dict[str, Any]:
    """Write `texts`' logits (repeats kept once) to `path`, atomically, after the rows of
    `before` (a file of the same teacher being added to: its rows come first and win where a
    text is in both). Returns the meta written."""
    ids = text_ids(texts)
    logits = np.asarray(logits, dtype=np.float32)
    if before is not None:
        ids, logits = np.concatenate([before.ids, ids]), np.concatenate([before.rows, logits])
    _, first = np.unique(ids, return_index=True)
    keep = np.sort(first)
    ids, logits = ids[keep], logits[keep]
    meta = {"format": FORMAT, **meta, "texts": len(ids), "sha256": _digest(ids, logits)}
    save_npz(Path(path), compressed=True, ids=ids, logits=logits, meta=np.array(json.dumps(meta, sort_keys=True)))
    return meta


class TeacherOutputs:
    """A teacher-outputs file, read and checked once; `logits(texts)` looks texts up by hash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RecipeError(
                f"{WHERE}: {self.path} does not exist; write it from the teacher model with "
                "`ftexport distill RECIPE --save-teacher-outputs FILE` (RECIPE naming distill.teacher)"
            )
        try:
            with np.load(self.path, allow_pickle=False) as z:
                self.ids, self._logits, meta = z["ids"], z["logits"], str(z["meta"])
            self.meta: dict[str, Any] = json.loads(meta)
        except Exception as e:  # a truncated zip, a foreign .npz, bad JSON: all one answer
            raise ModelError(
                f"{WHERE}: {self.path} is not a readable teacher-outputs file ({type(e).__name__}: {str(e)[:80]}); write it again with "
                "`ftexport distill RECIPE --save-teacher-outputs FILE`"
            ) from None
        if not isinstance(self.meta, dict):
            raise ModelError(f"{WHERE}: {self.path} is not a readable teacher-outputs file (its meta is not a JSON object); write it again")
        if self.meta.get("format") != FORMAT:
            raise ModelError(f"{WHERE}: {self.path} has format {self.meta.get('format')!r}, this ftexport reads {FORMAT!r}; write it again")
        if self.ids.shape != (len(self._logits),) or self._logits.ndim != 2 or _digest(self.ids, self._logits) != self.meta.get("sha256"):
            raise ModelError(
                f"{WHERE}: {self.path} is damaged or was edited (its logits do not match the checksum it was written with); "
                "write it again from the teacher model"
            )
        self._row = {int(i): n for n, i in enumerate(self.ids)}

    @property
    def rows(self) -> np.ndarray:
        """Every logit row, in the order of `ids`."""
        return self._logits

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.get("label_names") or [])

    def logits(self, texts: list[str], what: str) -> np.ndarray:
        """The teacher's logits on `texts`, in order; every one must be in the file."""
        rows = [self._row.get(int(i), -1) for i in text_ids(texts)]
        missing = [t for t, r in zip(texts, rows) if r < 0]
        if missing:
            raise RecipeError(
                f"{WHERE}: {self.path} has no teacher outputs for {len(missing)} of the {len(texts)} {what} texts "
                f"(first: {missing[0][:60]!r}); write the file again from the teacher with this recipe's data "
                "(`ftexport distill RECIPE --save-teacher-outputs FILE`)"
            )
        return self._logits[rows]

    def check(self, labels: list[str] | None, max_length: int) -> None:
        """Refuse outputs made for another label set or another truncation length."""
        if labels and self.label_names and self.label_names != list(labels):
            raise RecipeError(
                f"{WHERE}: the teacher predicts {self.label_names}, the recipe's labels are {list(labels)}; the label lists must match "
                "in order"
            )
        if labels and self._logits.shape[1] != len(labels):
            raise RecipeError(f"{WHERE}: the file holds {self._logits.shape[1]} logits per text, the recipe has {len(labels)} labels")
        if self.meta.get("max_length") != max_length:
            raise RecipeError(
                f"{WHERE}: the teacher read texts cut at {self.meta.get('max_length')} tokens, the recipe's model.max_length is "
                f"{max_length}; use the same length or write the file again"
            )
