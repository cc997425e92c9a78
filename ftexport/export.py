"""Everything that calls Hugging Face Optimum lives here: ONNX export (optimum.exporters.onnx),
graph optimization (ORTOptimizer) and the plain Optimum int8 baseline that bench compares
against. Optimum pins transformers
(<4.58 for optimum-onnx 0.1.0), so a move to transformers 5 touches only this module.

`ftexport export` turns a save_pretrained directory into a bundle: model.onnx with dynamic
batch and sequence axes, tokenizer.json, and a manifest with labels and max length.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import shutil
import warnings
from pathlib import Path
from typing import Any

from ftexport_runtime.bundle import Manifest, Variant, write_manifest

from . import progress
from .artifacts import make_key, read_record, stage_dir, versions, write_record
from .errors import BundleError, ModelError, first_line
from .report import cpu_flags
from .tasks import get_task
from .methods import base_config_dir, check_reference, is_adapter_dir, load_reference
from .train import load_tokenizer

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"


@contextlib.contextmanager
def _quiet_optimum():
    """Optimum and torch.onnx print pages of warnings; keep them unless something fails."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def onnx_io(path: Path) -> tuple[list[str], list[str]]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise BundleError(f"{path}: not a readable ONNX file ({str(e)[:150]}); it may be truncated, re-export it") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return inputs, [o.name for o in model.graph.output]


def export_key(model_dir: Path, opset: int, max_length: int | None) -> str:
    rec = read_record(model_dir) or {}
    return make_key("export", rec.get("key") or str(model_dir.resolve()), opset, max_length)


def export(model_dir: str | Path, output: str | Path, opset: int = 17, max_length: int | None = None, name: str | None = None, task_name: str | None = None) -> Manifest:
    """Export a model directory (dense, or an unmerged prefix/prompt adapter) to an ONNX bundle at `output`."""
    model_dir, output = Path(model_dir), Path(output)
    check_reference(model_dir, "model dir")
    record = read_record(model_dir) or {}
    task = get_task(task_name or record.get("task", "text-classification"))
    adapter = is_adapter_dir(model_dir)
    config = json.loads((base_config_dir(model_dir) / "config.json").read_text())
    id2label = config.get("id2label") or {}
    labels = record.get("labels") or ([id2label[str(i)] for i in range(len(id2label))] if task.labelled else [])
    if not labels and task.labelled:
        raise ModelError(f"{model_dir}: config.json has no id2label; the bundle needs label names (train with ftexport, or add id2label)")
    tokenizer = task.prepare_tokenizer(load_tokenizer(model_dir, "model dir"))
    limit = int(config.get("max_position_embeddings") or config.get("n_positions") or 512)
    if adapter:  # prefix/prompt tuning: the virtual tokens take the first position slots
        limit -= int(json.loads((model_dir / "adapter_config.json").read_text()).get("num_virtual_tokens") or 0)
    max_len = max_length or record.get("max_length") or min(int(getattr(tokenizer, "model_max_length", limit)), limit)
    if max_len > limit:
        raise ModelError(f"max_length {max_len} exceeds the model's {limit} positions; use at most {limit}")

    how = f"tracing the unmerged {record.get('method', 'adapter')} model with torch.onnx" if adapter else "through Optimum"
    progress.step(f"export: ONNX (opset {opset}) {how}, dynamic batch and sequence axes"
                  + (" with the key/value cache" if task.optimum_task.endswith("-with-past") else ""))
    with stage_dir(output) as tmp:
        if adapter:
            _trace_adapter(model_dir, task, tokenizer, tmp / MODEL_FILE, opset)
        else:
            _optimum_export(model_dir, task, tmp, opset, record.get("trust_remote_code", False))
        tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))
        if not adapter:
            # config.json rides along (hashed like the rest): Optimum's optimizer reads the
            # architecture (heads, hidden size) from it to fuse attention for fp16 and O2+.
            # A traced adapter graph is not the base architecture's, so it gets none.
            shutil.copy(model_dir / "config.json", tmp / CONFIG_FILE)
        inputs, outputs = onnx_io(tmp / MODEL_FILE)
        manifest = Manifest(
            name=name or record.get("name") or model_dir.name,
            task=task.name,
            labels=list(labels),
            max_length=int(max_len),
            inputs=inputs,
            outputs=outputs,
            variants={"fp32": Variant("fp32", MODEL_FILE, "fp32", extra_files=[p.name for p in tmp.glob(f"{MODEL_FILE}_data")])},
            default_variant="fp32",
            tokenizer={"file": TOKENIZER_FILE, "pad_token": tokenizer.pad_token, "pad_id": tokenizer.pad_token_id},
            versions=versions(),
            source={"model_dir": str(model_dir.resolve()), "opset": opset, **({"method": record["method"]} if adapter else {})},
            files={} if adapter else {CONFIG_FILE: ""},
            generation=generation_spec(tmp / MODEL_FILE, config, tokenizer) if task.name == "text-generation" else None,
        )
        write_manifest(tmp, manifest)
        write_record(tmp, "export", export_key(model_dir, opset, max_length), {"model": record.get("key")}, {"opset": opset, "max_length": max_len}, {})
    progress.info(f"wrote {output / MODEL_FILE} ({(output / MODEL_FILE).stat().st_size / 2**20:.1f} MiB)")
    return manifest


def _optimum_export(model_dir: Path, task: Any, tmp: Path, opset: int, trust_remote_code: bool) -> None:
    from optimum.exporters.onnx import main_export

    raw = tmp / "optimum"
    try:
        with _quiet_optimum():
            main_export(
                str(model_dir), output=str(raw), task=task.optimum_task, opset=opset, device="cpu",
                do_validation=False, library_name="transformers", trust_remote_code=trust_remote_code,
            )
    except (ValueError, KeyError, OSError) as e:
        raise ModelError(f"{model_dir}: Optimum cannot export this model to ONNX ({first_line(e)})") from None
    shutil.move(str(raw / MODEL_FILE), tmp / MODEL_FILE)
    for extra in raw.glob(f"{MODEL_FILE}_data"):  # external data for >2 GB models
        shutil.move(str(extra), tmp / extra.name)
    shutil.rmtree(raw)


def _trace_adapter(model_dir: Path, task: Any, tokenizer: Any, path: Path, opset: int) -> None:
    """Prefix and prompt tuning have no dense form and Optimum exports only transformers
    models, so trace the peft model itself (TorchScript exporter: the dynamo one cannot
    follow peft's prompt assembly). The learned virtual tokens become constants; the graph
    takes the same inputs as the base model's. Traced on a padded batch, so the attention
    mask path is the general one; `validate` then checks the graph against PyTorch."""
    import torch

    model = load_reference(model_dir, task)
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            return self.inner(**dict(zip(names, args))).logits

    sample = tokenizer(["a short text", "a somewhat longer text to pad the other one"], padding=True, return_tensors="pt")
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    try:
        with _quiet_optimum():
            torch.onnx.export(
                Logits(model).eval(), tuple(sample[n] for n in names), str(path), input_names=names, output_names=[task.output_name],
                dynamic_axes={**axes, task.output_name: {0: "batch_size"}}, opset_version=opset, dynamo=False,
            )
    except (RuntimeError, ValueError, TypeError) as e:
        raise ModelError(f"{model_dir}: this {type(model).__name__} adapter cannot be traced to ONNX faithfully ({first_line(e)}); train with lora, adalora or ia3 to export") from None


def generation_spec(model_file: Path, config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """What the runtime's KV-cache loop needs, read from the exported graph (names, heads,
    head size) and the model config (layers, eos/pad/bos ids)."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    past = [i for i in graph.input if i.name.startswith("past_key_values.")]
    if not past:
        raise ModelError(f"{model_file}: Optimum exported no past_key_values inputs; the runtime needs the key/value cache")
    dims = past[0].type.tensor_type.shape.dim  # [batch, heads, past_sequence_length, head_dim]
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.get("eos_token_id")
    return {
        "past_inputs": [i.name for i in past],
        "present_outputs": [o.name for o in graph.output if o.name.startswith("present.")],
        "num_layers": len(past) // 2,
        "num_heads": int(dims[1].dim_value),
        "head_dim": int(dims[3].dim_value),
        "eos_id": int(eos),
        "pad_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos),
        "bos_id": config.get("bos_token_id"),
        "uses_position_ids": any(i.name == "position_ids" for i in graph.input),
    }


# ---- graph optimization through Optimum's ORTOptimizer ----------------------------------


def optimize_onnx(bundle_dir: Path, model_file: str, save_dir: Path, level: str) -> tuple[Path, dict[str, Any]]:
    """Optimum's optimization levels: O1 basic (constant folding, redundant nodes), O2 + the
    transformer fusions (attention, SkipLayerNorm, BiasGelu), O3 + fast GELU, O4 = O3 + fp16
    for the GPU (inputs stay int64 and logits float32, so callers see no difference)."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    if not (bundle_dir / CONFIG_FILE).is_file():
        raise BundleError(f"{bundle_dir}: graph optimization needs the model's config.json in the bundle; re-export it with this ftexport")
    for_gpu = level == "O4"
    cfg = AutoOptimizationConfig.with_optimization_level(level, for_gpu=for_gpu)
    save_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_optimum():
        optimizer = ORTOptimizer.from_pretrained(bundle_dir, file_names=[model_file])
        optimizer.optimize(save_dir=save_dir, optimization_config=cfg)
    produced = sorted(save_dir.glob("*.onnx"))
    if not produced:
        raise BundleError(f"{bundle_dir}: Optimum's optimizer produced no model at level {level}")
    return produced[0], {"optimization_level": level, "optimized_for": "gpu" if for_gpu else "cpu", "fp16": for_gpu}


# ---- the plain Optimum path, as a user would write it: the baseline ftexport must beat ----


def plain_optimum_int8(model_dir: Path, workdir: Path, threads: int | None = None) -> Any:
    """ORTModelForSequenceClassification export + ORTQuantizer dynamic int8 with the
    AutoQuantizationConfig preset for this CPU, defaults untouched. Returns the loaded
    ORTModel (called like a transformers model) for `ftexport bench`'s optimum-int8 row."""
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    flags = cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        cfg = AutoQuantizationConfig.arm64(is_static=False)
    elif "avx512_vnni" in flags:
        cfg = AutoQuantizationConfig.avx512_vnni(is_static=False)
    else:
        cfg = AutoQuantizationConfig.avx2(is_static=False)
    with _quiet_optimum():
        model = ORTModelForSequenceClassification.from_pretrained(str(model_dir), export=True)
        model.save_pretrained(workdir / "fp32")
        ORTQuantizer.from_pretrained(model).quantize(save_dir=workdir / "int8", quantization_config=cfg)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads  # the same thread count as every other backend
        return ORTModelForSequenceClassification.from_pretrained(str(workdir / "int8"), file_name="model_quantized.onnx", session_options=opts)
