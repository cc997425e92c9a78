"""`ftexport export`: a model folder becomes a bundle: model.onnx with dynamic batch and sequence
axes (through an exporter of the registry; an unmerged prefix/prompt adapter is traced),
tokenizer.json, config.json, and a manifest with labels, max length and what the task's
runtime head needs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ftexport_runtime.bundle import Manifest, Variant, write_manifest

from ..core import progress
from ..core.artifacts import StageRecord, key_of, make_key, read_record, stage_dir, versions
from ..core.errors import ModelError
from ..core.hf import base_config_dir, check_reference, is_adapter_dir, load_tokenizer, model_hash
from ..tasks import DEFAULT_TASK, get_task
from . import resolve_exporter
from .graph import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, onnx_io
from .trace import trace_adapter


def model_source(model_dir: Path, output: Path, record: StageRecord) -> dict[str, Any]:
    """Where the model came from, without the builder's filesystem: its path relative to the
    run folder when it lies inside it (runs/NAME/merged -> "merged"), else its folder name;
    and its stage key, or a hash of its files when it has no ftexport record."""
    try:
        rel = Path(os.path.relpath(model_dir.resolve(), output.resolve().parent))
        shown = rel.as_posix() if ".." not in rel.parts else model_dir.resolve().name
    except ValueError:  # another drive
        shown = model_dir.resolve().name
    return {"model_dir": shown, **({"model_key": record.key} if record.key else {"model_hash": model_hash(model_dir)})}


def export_key(model_dir: Path, opset: int, max_length: int | None, exporter: str = "optimum") -> str:
    return make_key("export", key_of(model_dir) or str(Path(model_dir).resolve()), opset, max_length, exporter)


def export(
    model_dir: str | Path,
    output: str | Path,
    opset: int = 17,
    max_length: int | None = None,
    name: str | None = None,
    task_name: str | None = None,
    exporter: str = "auto",
) -> Manifest:
    """Export a model directory (dense, or an unmerged prefix/prompt adapter) to an ONNX bundle
    at `output` through `exporter` (auto, optimum, torch: see ftexport.export)."""
    model_dir, output = Path(model_dir), Path(output)
    check_reference(model_dir, "model dir")
    record = read_record(model_dir) or StageRecord("model", "")
    task = get_task(task_name or record.task or DEFAULT_TASK)
    chosen = resolve_exporter(exporter, task)  # refused in one line before any work
    adapter = is_adapter_dir(model_dir)
    config = json.loads((base_config_dir(model_dir) / "config.json").read_text())
    id2label = config.get("id2label") or {}
    labels = record.labels or ([id2label[str(i)] for i in range(len(id2label))] if task.labelled else [])
    if not labels and task.labelled:
        raise ModelError(f"{model_dir}: config.json has no id2label; the bundle needs label names (train with ftexport, or add id2label)")
    tokenizer = task.prepare_tokenizer(load_tokenizer(model_dir, "model dir"))
    limit = int(config.get("max_position_embeddings") or config.get("n_positions") or 512)
    if adapter:  # prefix/prompt tuning: the virtual tokens take the first position slots
        limit -= int(json.loads((model_dir / "adapter_config.json").read_text()).get("num_virtual_tokens") or 0)
    max_len = max_length or record.max_length or min(int(getattr(tokenizer, "model_max_length", limit)), limit)
    if max_len > limit:
        raise ModelError(f"max_length {max_len} exceeds the model's {limit} positions; use at most {limit}")

    how = f"tracing the unmerged {record.method or 'adapter'} model with torch.onnx" if adapter else f"through the {chosen.name} exporter"
    progress.step(
        f"export: ONNX {how}, dynamic batch and sequence axes"
        + (" with the key/value cache" if (task.optimum_task or "").endswith("-with-past") else "")
    )
    with stage_dir(output) as tmp:
        if adapter:
            trace_adapter(model_dir, task, tokenizer, tmp / MODEL_FILE, opset)
            made = {"exporter": "torch", "mode": "torchscript", "peft": record.method, "opset": opset}
        else:
            made = chosen.export(model_dir, task, tmp, opset, record.trust_remote_code)
        tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))
        if not adapter:
            # config.json rides along (hashed like the rest): Optimum's optimizer reads the
            # architecture (heads, hidden size) from it to fuse attention for fp16 and O2+.
            # A traced adapter graph is not the base architecture's, so it gets none.
            shutil.copy(model_dir / "config.json", tmp / CONFIG_FILE)
        inputs, outputs = onnx_io(tmp / MODEL_FILE)
        manifest = Manifest(
            name=name or model_dir.name,
            task=task.name,
            labels=list(labels),
            max_length=int(max_len),
            inputs=inputs,
            outputs=outputs,
            variants={
                "fp32": Variant("fp32", MODEL_FILE, "fp32", extra_files=[p.name for p in tmp.glob(f"{MODEL_FILE}_data")], details=made)
            },
            default_variant="fp32",
            tokenizer={"file": TOKENIZER_FILE, "pad_token": tokenizer.pad_token, "pad_id": tokenizer.pad_token_id},
            versions=versions(),
            source={
                **model_source(model_dir, output, record),
                "opset": made["opset"],
                "exporter": made["exporter"],
                **({"method": record.method} if adapter else {}),
            },
            files={} if adapter else {CONFIG_FILE: ""},
            **task.manifest_extras(base_config_dir(model_dir), tmp / MODEL_FILE, config, tokenizer),
        )
        write_manifest(tmp, manifest)
        StageRecord(
            "export",
            export_key(model_dir, opset, max_length, chosen.name),
            {"model": record.key or None},
            {"opset": made["opset"], "max_length": max_len, "exporter": made["exporter"]},
        ).write(tmp)
    progress.info(f"wrote {output / MODEL_FILE} ({(output / MODEL_FILE).stat().st_size / 2**20:.1f} MiB)")
    return manifest
