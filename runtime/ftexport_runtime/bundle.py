"""The bundle format: the contract between the ftexport toolchain and applications.

A bundle is a directory (or a .tar.gz of one) holding ONNX model variants, tokenizer.json
and manifest.json. This module owns the manifest schema, reads and verifies bundles, and
gives the toolchain the one function it uses to write a manifest, so the writer and the
reader cannot drift apart.

Only JSON, ONNX and tokenizer.json are ever read from a bundle: nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .engines.tensorrt import EngineSpec
from .errors import BundleError
from .heads import get_head

FORMAT = "ftexport-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8", "int4")


@dataclass
class Variant:
    """One ONNX model of the bundle (fp32, a quantized copy, an fp16 copy...)."""

    name: str
    file: str
    precision: str
    extra_files: list[str] = field(default_factory=list)  # ONNX external data, if any
    details: dict[str, Any] = field(default_factory=dict)  # how it was made (quantization...)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "precision": self.precision}
        if self.extra_files:
            out["extra_files"] = list(self.extra_files)
        if self.details:
            out["details"] = self.details
        return out


@dataclass
class Manifest:
    """What a bundle holds and what it passed. Serialized as manifest.json."""

    task: str
    labels: list[str]
    max_length: int
    inputs: list[str]
    outputs: list[str]
    variants: dict[str, Variant]
    default_variant: str
    tokenizer: dict[str, Any]  # {"file": "tokenizer.json", "pad_token": ..., "pad_id": ...}
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    name: str = "model"
    versions: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)  # model and recipe it came from
    backend_defaults: dict[str, str] = field(default_factory=dict)  # e.g. {"cuda": "fp16"}
    # text-generation: what the KV-cache loop needs (past/present names, layers, heads, eos/pad ids),
    # and a chat model's chat_template, bos_token/eos_token, stop_ids, num_key_value_heads
    generation: dict[str, Any] | None = None
    # feature-extraction: {"dimension": int, "pooling": "mean" | "cls" | "max", "normalize": bool}
    embedding: dict[str, Any] | None = None
    # TensorRT engines built for one GPU and TensorRT version (`ftexport export --trt`)
    engines: dict[str, EngineSpec] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "task": self.task,
            "labels": list(self.labels),
            "max_length": self.max_length,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "tokenizer": dict(self.tokenizer),
            "variants": {k: v.to_json() for k, v in self.variants.items()},
            "default_variant": self.default_variant,
            "backend_defaults": dict(self.backend_defaults),
            "files": dict(sorted(self.files.items())),
            "versions": dict(self.versions),
            "source": dict(self.source),
            "parity": self.parity,
            "latency": self.latency,
        }
        if self.generation is not None:  # absent for classifiers: their manifests stay as they were
            out["generation"] = dict(self.generation)
        if self.embedding is not None:
            out["embedding"] = dict(self.embedding)
        if self.engines:
            out["engines"] = {k: e.to_json() for k, e in self.engines.items()}
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """Parse and check a manifest; every problem names the field that holds it."""
        if not isinstance(data, dict):
            raise BundleError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise BundleError(f"{where}: not an ftexport bundle manifest (format={data.get('format')!r})")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format_version {version!r} is not supported by this runtime "
                f"(supports {FORMAT_VERSION}); upgrade ftexport-runtime or re-export the bundle"
            )

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in data:
                raise BundleError(f"{where}: missing field '{key}'")
            value = data[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
                raise BundleError(f"{where}: field '{key}' has the wrong type ({type(value).__name__})")
            return value

        def optional(node: dict[str, Any], key: str, kind: type, name: str) -> Any:
            """An optional field: absent or null is empty; present, it has its type."""
            value = node.get(key)
            if value is None:
                return kind()
            if not isinstance(value, kind):
                what = "an object" if kind is dict else "a list"
                raise BundleError(f"{where}: field '{name}' must be {what}, not {type(value).__name__}")
            return value

        task = need("task", str)
        try:
            head = get_head(task)  # the task's head checks its own part of the manifest (labels, generation...)
        except BundleError as e:
            raise BundleError(f"{where}: {e}") from None
        labels = need("labels", list)
        owned = head.check_manifest(data, where)
        max_length = need("max_length", int)
        if max_length <= 0:
            raise BundleError(f"{where}: field 'max_length' must be positive, got {max_length}")
        variants: dict[str, Variant] = {}
        for vname, v in need("variants", dict).items():
            if not isinstance(v, dict) or not isinstance(v.get("file"), str):
                raise BundleError(f"{where}: variants.{vname} must be an object with a 'file'")
            if v.get("precision") not in PRECISIONS:
                raise BundleError(f"{where}: variants.{vname}.precision must be one of {', '.join(PRECISIONS)}")
            variants[vname] = Variant(
                name=vname,
                file=v["file"],
                precision=v["precision"],
                extra_files=[str(x) for x in optional(v, "extra_files", list, f"variants.{vname}.extra_files")],
                details=dict(optional(v, "details", dict, f"variants.{vname}.details")),
            )
        if not variants:
            raise BundleError(f"{where}: the bundle lists no model variants")
        default = need("default_variant", str)
        if default not in variants:
            raise BundleError(f"{where}: default_variant {default!r} is not one of the variants ({', '.join(variants)})")
        backend_defaults = data.get("backend_defaults") or {}
        if not isinstance(backend_defaults, dict) or any(v not in variants for v in backend_defaults.values()):
            raise BundleError(f"{where}: backend_defaults must map backend names to variants of this bundle")
        tokenizer = need("tokenizer", dict)
        if not isinstance(tokenizer.get("file"), str):
            raise BundleError(f"{where}: tokenizer.file is missing")
        if tokenizer.get("pad_id") is not None and (not isinstance(tokenizer["pad_id"], int) or isinstance(tokenizer["pad_id"], bool)):
            raise BundleError(f"{where}: tokenizer.pad_id must be an integer token id, not {tokenizer['pad_id']!r}")
        files = need("files", dict)
        for rel, digest in files.items():
            _check_relative(rel, where)
            if not (isinstance(digest, str) and len(digest) == 64):
                raise BundleError(f"{where}: files[{rel!r}] is not a sha256 hex digest")
        inputs = need("inputs", list)
        outputs = need("outputs", list)
        engines = data.get("engines") or {}
        if not isinstance(engines, dict):
            raise BundleError(f"{where}: field 'engines' must be an object")
        engines = {str(k): EngineSpec.from_json(str(k), v, where, PRECISIONS) for k, v in engines.items()}
        for e in engines.values():
            _check_relative(e.file, where)
            if e.source not in variants:
                raise BundleError(f"{where}: engines.{e.name}.source {e.source!r} is not one of the variants ({', '.join(variants)})")
        return cls(
            task=task,
            labels=list(labels),
            max_length=max_length,
            inputs=[str(x) for x in inputs],
            outputs=[str(x) for x in outputs],
            variants=variants,
            default_variant=default,
            tokenizer=dict(tokenizer),
            files=dict(files),
            name=str(data.get("name", "model")),
            versions=dict(optional(data, "versions", dict, "versions")),
            parity=data.get("parity"),
            latency=data.get("latency"),
            source=dict(optional(data, "source", dict, "source")),
            backend_defaults=dict(backend_defaults),
            engines=engines,
            **owned,  # the head's sections, e.g. generation (what the KV-cache loop needs) or embedding
        )

    def referenced_files(self) -> list[str]:
        """Every file the manifest points at: each must be listed, with its hash, in `files`."""
        refs = [self.tokenizer["file"]]
        for v in self.variants.values():
            refs.append(v.file)
            refs.extend(v.extra_files)
        refs.extend(e.file for e in self.engines.values())
        return refs


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_relative(rel: str, where: str) -> None:
    """Refuse a manifest path that is absolute or climbs out of the bundle directory."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel or rel in ("", "."):
        raise BundleError(f"{where}: file path {rel!r} escapes the bundle directory; bundles hold relative paths only")


def _resolve_inside(root: Path, rel: str) -> Path:
    _check_relative(rel, MANIFEST)
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BundleError(f"{root}: {rel!r} resolves outside the bundle (a symlink?); refusing to load it")
    return path


def write_manifest(directory: str | os.PathLike[str], manifest: Manifest) -> Manifest:
    """Hash every file the manifest references and write manifest.json into `directory`.

    The toolchain calls this as the last step of any stage that produces a bundle. It
    hashes referenced files plus any other regular file already listed in `files`, so a
    bundle can carry extra documents (e.g. reports) under the same tamper check.
    """
    root = Path(directory)
    names = set(manifest.referenced_files()) | set(manifest.files)
    files = {}
    for rel in sorted(names):
        path = _resolve_inside(root, rel)
        if not path.is_file():
            raise BundleError(f"{root}: manifest references {rel!r}, which is not in the bundle directory")
        files[rel] = sha256_file(path)
    manifest.files = files
    target = root / MANIFEST
    if target.exists():  # may be a hard link shared with an upstream bundle: never write through it
        target.unlink()
    target.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
    return manifest


class Bundle:
    """A bundle on disk, opened and verified.

    `Bundle.open(path)` checks the manifest schema and the sha256 of the files it will use
    (all files with verify="all", the default); a mismatch raises BundleError naming the file.
    """

    def __init__(self, root: Path, manifest: Manifest, tmpdir: tempfile.TemporaryDirectory[str] | None = None):
        self.root = root
        self.manifest = manifest
        self._tmpdir = tmpdir  # keeps an extracted .tar.gz alive as long as the bundle
        self._checked: set[str] = set()  # files whose sha256 matched (set.add is atomic: threads may add)

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: str = "all") -> Bundle:
        if verify not in ("all", "none"):
            raise ValueError("verify must be 'all' or 'none'")
        p = Path(path)
        tmp = None
        if p.is_file() and (p.name.endswith(".tar.gz") or p.name.endswith(".tgz")):
            tmp = tempfile.TemporaryDirectory(prefix="ftexport-bundle-")
            p = extract_tarball(p, Path(tmp.name))
        if not p.exists():
            raise BundleError(f"{path}: no such bundle (expected a directory with manifest.json, or a .tar.gz of one)")
        if not (p / MANIFEST).is_file():
            raise BundleError(f"{path}: not a bundle: it has no {MANIFEST} (export one with `ftexport export`)")
        try:
            data = json.loads((p / MANIFEST).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{p / MANIFEST}: not valid JSON ({e}); the bundle is corrupt, re-pack it") from None
        manifest = Manifest.from_json(data, str(p / MANIFEST))
        for rel in manifest.referenced_files():
            if rel not in manifest.files:
                raise BundleError(f"{p / MANIFEST}: {rel!r} is used but has no sha256 in 'files'; re-pack the bundle")
        bundle = cls(p, manifest, tmp)
        if verify == "all":
            bundle.verify()
        return bundle

    def path_of(self, rel: str) -> Path:
        return _resolve_inside(self.root, rel)

    def verify(self, names: list[str] | None = None) -> None:
        """Recompute sha256 of the listed files (all by default) and refuse on any mismatch."""
        for rel in names if names is not None else list(self.manifest.files):
            self._check(rel, sha256_file(self._existing(rel)))

    def unchecked(self) -> list[str]:
        """The manifest's files whose sha256 this Bundle has not matched yet."""
        return [rel for rel in self.manifest.files if rel not in self._checked]

    def read(self, rel: str, verify: bool = True) -> bytes:
        """The bytes of one bundle file, checked against its sha256 when `verify`. Loading
        these bytes, not the path, leaves no window between checking a file and reading it
        again, in which it could be swapped."""
        data = self._existing(rel).read_bytes()
        if verify:
            self._check(rel, hashlib.sha256(data).hexdigest())
        return data

    def verify_in_background(self, names: list[str]) -> Callable[[], None]:
        """Start verifying `names` on a thread (hashlib releases the GIL, so this overlaps
        with building the ONNX Runtime session); the returned function waits for it and
        raises the first mismatch."""
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self.verify(names)
            except BaseException as e:  # noqa: BLE001  # handed to the caller by finish()
                errors.append(e)

        thread = threading.Thread(target=work, name="ftexport-verify", daemon=True)
        thread.start()

        def finish() -> None:
            thread.join()
            if errors:
                raise errors[0]

        return finish

    def _existing(self, rel: str) -> Path:
        if rel not in self.manifest.files:
            raise BundleError(f"{self.root}: {rel!r} is not listed in the manifest")
        path = self.path_of(rel)
        if not path.is_file():
            raise BundleError(f"{self.root}: {rel!r} is listed in the manifest but missing from the bundle")
        return path

    def _check(self, rel: str, digest: str) -> None:
        if digest != self.manifest.files[rel]:
            raise BundleError(
                f"{self.root}: {rel!r} was modified after the bundle was packed (sha256 mismatch); "
                "refusing to load it. Re-export or re-pack the bundle"
            )
        self._checked.add(rel)

    def variant(self, name: str | None = None, backend: str = "cpu") -> Variant:
        """The named variant, or the bundle's default for `backend` (e.g. int8 on CPU, fp16 on CUDA)."""
        name = name or self.manifest.backend_defaults.get(backend) or self.manifest.default_variant
        if name not in self.manifest.variants:
            raise BundleError(f"{self.root}: no variant {name!r} in this bundle (it has: {', '.join(self.manifest.variants)})")
        return self.manifest.variants[name]


def extract_tarball(archive: Path, dest: Path) -> Path:
    """Extract a bundle .tar.gz into `dest`, refusing links and paths that escape it."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                name = PurePosixPath(m.name)
                if name.is_absolute() or ".." in name.parts:
                    raise BundleError(f"{archive}: member {m.name!r} escapes the bundle directory; refusing to extract")
                if not (m.isfile() or m.isdir()):
                    raise BundleError(f"{archive}: member {m.name!r} is a link or device; bundles hold plain files only")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BundleError(f"{archive}: not a readable .tar.gz bundle ({e})") from None
    entries = [e for e in dest.iterdir()]
    if len(entries) == 1 and entries[0].is_dir() and not (dest / MANIFEST).exists():
        return entries[0]
    return dest


def make_tarball(directory: str | os.PathLike[str], archive: str | os.PathLike[str]) -> Path:
    """Write `directory` as a .tar.gz holding one top-level folder; atomic via a temp file."""
    src, out = Path(directory), Path(archive)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for f in sorted(src.rglob("*")):
                if f.is_file() and not f.is_symlink():
                    tar.add(f, arcname=str(PurePosixPath(src.name) / f.relative_to(src).as_posix()), recursive=False)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
