"""`ftexport pack --triton DIR`: a Triton Inference Server model repository from a bundle,
for users who outgrow one process.

    DIR/
      README.txt               how clients call it (they send token ids, not text)
      tokenizer.json           the bundle's tokenizer, set to truncate and pad as Predictor does
      <model_name>/
        config.pbtxt           onnxruntime backend, dynamic batching, inputs/outputs, labels
        labels.txt             one label per line, for Triton's classification extension
        1/model.onnx           the chosen variant (plus its external data files, if any)

The tokenizer is not part of the Triton model: Triton's onnxruntime backend runs the graph
only, so clients tokenize with tokenizer.json and send input_ids (and the other inputs).
Names, data types and dims come from the ONNX graph itself, checked against the manifest.

Which onnxruntime the model needs: the bundle's dynamic int8 variant is stored as ONNX
Runtime's own CPU rewrite of the quantizer's output (contrib operators of the onnxruntime that
wrote it, e.g. 1.31), which the older onnxruntime inside a Triton release may refuse. By default
the variant ships as it is and README.txt (and the console) say which onnxruntime, hence which
Triton releases, it needs; with `portable` (`pack --triton-portable`) the repository gets the
plain quantizer output instead, rebuilt from the bundle's fp32 graph and checked to answer as
the variant does.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from ftexport_runtime.bundle import Bundle, sha256_file

from ..core import progress
from ..core.artifacts import stage_dir
from ..core.errors import BundleError, FtexportError
from ..tasks import TASKS, get_task

LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
VERSION = "1"
DEFAULT_MAX_BATCH = 32
DEFAULT_QUEUE_DELAY_US = 1000

# ONNX TensorProto element type -> Triton model_config.proto DataType
_TRITON_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# texts a rebuilt graph must answer as the bundle's variant does (with the task's own example)
_CHECK_TEXTS = ["a", "the plot was dull and the acting awful , a waste of two hours", "fine " * 60, "Berlin, 3 May: 42% (ok?)"]
_TENSOR = re.compile(r'[^"\\\x00-\x1f]+')


class TritonError(FtexportError):
    """The Triton repository cannot be written as asked (bad option, output in the way)."""


def _tensors(model: Any, which: str) -> list[dict[str, Any]]:
    """Name, Triton type and per-item dims of the graph's inputs or outputs.

    The first axis must be the dynamic batch axis: Triton adds it itself from max_batch_size,
    so it is dropped here. Symbolic axes (the sequence) become -1.
    """
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    values = [v for v in (graph.input if which == "input" else graph.output) if v.name not in initializers]
    out = []
    for v in values:
        t = v.type.tensor_type
        kind = _TRITON_TYPES.get(t.elem_type)
        if kind is None:
            raise BundleError(f"{which} {v.name!r} has ONNX element type {t.elem_type}, which Triton's onnxruntime backend has no type for")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims or dims[0] not in (-1, 0):
            raise BundleError(
                f"{which} {v.name!r} has shape {dims} without a dynamic batch axis first; "
                "re-export the bundle with `ftexport export` (it exports a dynamic batch axis)"
            )
        item_dims = [d if d > 0 else -1 for d in dims[1:]]
        out.append({"name": v.name, "data_type": kind, "dims": item_dims or [1]})
    return out


def _pbtxt_list(items: list[dict[str, Any]], key: str, label_file: str | None = None) -> str:
    blocks = []
    for i, t in enumerate(items):
        lines = [f'    name: "{t["name"]}"', f"    data_type: {t['data_type']}", f"    dims: [ {', '.join(str(d) for d in t['dims'])} ]"]
        if label_file and i == 0:
            lines.append(f'    label_filename: "{label_file}"')
        blocks.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{key} [\n" + ",\n".join(blocks) + "\n]\n"


def config_pbtxt(
    name: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    max_batch: int,
    preferred: list[int],
    queue_delay_us: int,
    gpu: bool,
    instances: int = 1,
) -> str:
    """model_config.proto in protobuf text format, for the onnxruntime backend."""
    return (
        f'name: "{name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch}\n"
        + _pbtxt_list(inputs, "input")
        + _pbtxt_list(outputs, "output", LABELS_FILE)
        + "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(str(p) for p in preferred)} ]\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n"
        "}\n"
        "instance_group [\n"
        "  {\n"
        f"    count: {instances}\n"
        f"    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n"
        "  }\n"
        "]\n"
    )


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """A few sizes up to max_batch (a quarter, a half, all) for the dynamic batcher to aim at."""
    return sorted({max(1, max_batch // 4), max(1, max_batch // 2), max_batch})


def ort_requirement(variant: Any, portable: dict[str, Any] | None = None) -> str | None:
    """The onnxruntime a variant's graph needs beyond a standard ONNX reader, in words, or None:
    ONNX Runtime's own CPU rewrite needs the onnxruntime that wrote it, or a newer one."""
    wrote = (variant.details.get("ort_graph") or {}).get("onnxruntime")
    if portable is not None or not wrote:
        return None
    return (
        f"model.onnx is ONNX Runtime {wrote}'s own CPU rewrite of the int8 model (com.microsoft operators): Triton's onnxruntime "
        f"backend must run onnxruntime {wrote} or newer, so pick a Triton release whose framework support matrix lists ONNX Runtime "
        f">= {wrote}; for an older Triton, write the repository with `ftexport pack --triton-portable` (the plain quantizer output)"
    )


def _readme(
    name: str,
    manifest: Any,
    variant: Any,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    max_batch: int,
    gpu: bool,
    digest: str,
    portable: dict[str, Any] | None = None,
) -> str:
    ins = "\n".join(
        f"    {t['name']:<16} {t['data_type']:<10} [batch, {', '.join('seq' if d == -1 else str(d) for d in t['dims'])}]" for t in inputs
    )
    outs = "\n".join(f"    {t['name']:<16} {t['data_type']:<10} [batch, {', '.join(str(d) for d in t['dims'])}]" for t in outputs)
    first_out = outputs[0]["name"]
    need = ort_requirement(variant, portable)
    if portable is not None:
        needs = (
            f"model.onnx is the plain quantizer output of variant {variant.name!r} ({portable['made_by']}; standard int8\n"
            f"operators), rebuilt from the bundle's fp32 graph: it answered {portable['checked_texts']} texts as the variant does\n"
            f"(max |diff| {portable['max_diff']:.1g}). Older onnxruntime versions read it."
        )
    else:
        needs = (
            need if need else "model.onnx is a standard ONNX graph as the bundle holds it; any onnxruntime that reads its opset runs it."
        )
    return f"""Triton Inference Server model repository written by `ftexport pack --triton`.

Model {name!r}: variant {variant.name!r} ({variant.precision}) of bundle {manifest.name!r},
ONNX Runtime backend on {"GPU" if gpu else "CPU"}, dynamic batching up to {max_batch} items.
{name}/{VERSION}/{MODEL_FILE} sha256 {digest}

Needs: {needs}

Start the server:

    tritonserver --model-repository "$PWD"

Clients send token ids, not text: the tokenizer is not part of the Triton model. Tokenize
with ./tokenizer.json (the bundle's tokenizer, already set to truncate at {manifest.max_length}
tokens and pad to the longest text of a request, as the bundle's Predictor does) and send:

{ins}

and read:

{outs}

Triton's dynamic batcher only joins requests whose tensors have the same shape, so requests
padded to different lengths run in separate batches. To let it batch every request, pad all
of them to one length (tok.enable_padding(length={manifest.max_length}, ...)): more work per
item, fewer and fuller batches; measure which suits your traffic.

The labels, in output order, are in {name}/{LABELS_FILE}: {", ".join(manifest.labels)}.
Ask for them with Triton's classification extension, e.g. over HTTP:

    {{"inputs": [...], "outputs": [{{"name": "{first_out}", "parameters": {{"classification": 1}}}}]}}

In Python (pip install tokenizers tritonclient[http]):

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file("tokenizer.json")
    enc = tok.encode_batch(["a wonderful, moving film"])
    # input_ids = [e.ids for e in enc]; attention_mask = [e.attention_mask for e in enc];
    # token_type_ids = [e.type_ids for e in enc]; all int64, shape [batch, seq]
"""


def _client_tokenizer(bundle: Bundle, dest: Path) -> None:
    """Save the bundle's tokenizer configured as Predictor uses it (truncate, pad to longest)."""
    from tokenizers import Tokenizer

    info = bundle.manifest.tokenizer
    tok = Tokenizer.from_file(str(bundle.path_of(info["file"])))
    tok.no_padding()
    tok.enable_truncation(max_length=bundle.manifest.max_length)
    tok.enable_padding(pad_id=int(info.get("pad_id", 0)), pad_token=str(info.get("pad_token", "[PAD]")))
    tok.save(str(dest))


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def check_options(
    bundle_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    variant: str | None = None,
    model_name: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    gpu: bool = False,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    portable: bool = False,
    keep: list[str] | None = None,
) -> tuple[str, str]:
    """The cheap checks (no hashing), so `pack` can refuse before it writes anything.

    Returns (variant name, model name). The repository goes into a new or empty directory:
    never over someone's files. keep: the variants `pack --variants` will keep, when the
    repository is written from the packed bundle: the variant is chosen among them.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TritonError(f"{out}: exists and is not a directory; give --triton a new or empty directory")
    if out.is_dir() and any(out.iterdir()):
        raise TritonError(f"{out}: directory is not empty; give --triton a new or empty directory (or remove it)")
    if max_batch < 1:
        raise TritonError(f"--triton-max-batch must be at least 1, got {max_batch}")
    if queue_delay_us < 0:
        raise TritonError(f"max queue delay must be 0 or more microseconds, got {queue_delay_us}")
    if instances < 1:
        raise TritonError(f"instance count must be at least 1, got {instances}")
    bundle = Bundle.open(bundle_dir, verify="none")
    if not get_task(bundle.manifest.task).triton:  # the repository is a classifier's: logits + labels.txt
        able = ", ".join(t.name for t in TASKS.values() if t.triton)
        raise TritonError(
            f"{bundle_dir}: task {bundle.manifest.task} has no Triton export yet (it is written for {able}: logits and "
            "labels.txt); ship the bundle to ftexport-runtime"
        )
    if keep:
        from .pack import drop_variants

        if variant is not None and variant not in keep:
            raise TritonError(f"--triton-variant {variant}: the packed bundle keeps only {', '.join(keep)} (--variants)")
        drop_variants(bundle.manifest, keep)  # this Bundle object only: no file is touched
    chosen = bundle.variant(variant, "cuda" if gpu else "cpu")
    if gpu and chosen.details.get("ort_graph") and not portable:
        raise TritonError(
            f"--triton-gpu: variant {chosen.name} is ONNX Runtime's CPU rewrite of dynamic int8 (CPU-only operators); "
            "choose --triton-variant fp32 or fp16 (and keep it in --variants), or pass --triton-portable"
        )
    name = model_name or bundle.manifest.name
    if not _NAME.fullmatch(name):
        raise TritonError(f"model name {name!r} cannot be a Triton model directory; use letters, digits, '_', '-' and '.' (--triton-name)")
    return chosen.name, name


def write_triton_repo(
    bundle_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    variant: str | None = None,
    model_name: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    gpu: bool = False,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    portable: bool = False,
) -> Path:
    """Write a Triton model repository for one variant of a bundle into `out_dir`.

    variant: a variant of the bundle (e.g. "int8"); default: the bundle's choice for the
    target device (backend_defaults for cpu or cuda, else default_variant), as Predictor does.
    portable: when the variant is ONNX Runtime's CPU rewrite of dynamic int8, ship the plain
    quantizer output instead (rebuilt and checked against it), which older onnxruntime
    versions read; without it the rewrite ships and README.txt says which onnxruntime it needs.
    Returns `out_dir`. Nothing is written on error.
    """
    import onnx

    out = Path(out_dir)
    variant, name = check_options(bundle_dir, out, variant, model_name, max_batch, gpu, queue_delay_us, instances, portable)
    bundle = Bundle.open(bundle_dir)  # verifies the sha256 of every file
    manifest = bundle.manifest
    chosen = bundle.variant(variant)

    model_path = bundle.path_of(chosen.file)
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise BundleError(f"{model_path}: not a readable ONNX file ({str(e)[:150]}); re-export the bundle") from None
    try:
        inputs = _tensors(model, "input")
        outputs = _tensors(model, "output")
    except BundleError as e:
        raise BundleError(f"{model_path}: {e}") from None
    graph_in = [t["name"] for t in inputs]
    missing = [n for n in manifest.inputs if n not in graph_in]
    if missing:
        raise BundleError(
            f"{model_path}: the manifest lists inputs {missing} that the ONNX graph lacks (it has {graph_in}); re-export the bundle"
        )
    bad = [t["name"] for t in inputs + outputs if not _TENSOR.fullmatch(t["name"])]
    if bad:
        raise BundleError(f"{model_path}: tensor names {bad} cannot be written to config.pbtxt (quotes, backslashes or control characters)")
    if any("\n" in label or "\r" in label for label in manifest.labels):
        raise BundleError(f"{bundle.root}: a label holds a line break; labels.txt needs one label per line, fix the labels and re-export")
    # the manifest orders the outputs; the first one (the logits) carries the labels
    order = {n: i for i, n in enumerate(manifest.outputs)}
    outputs.sort(key=lambda t: order.get(t["name"], len(order)))
    if outputs[0]["dims"][-1] not in (-1, len(manifest.labels)):
        raise BundleError(
            f"{model_path}: output {outputs[0]['name']!r} has {outputs[0]['dims'][-1]} classes but the manifest has "
            f"{len(manifest.labels)} labels; re-export the bundle"
        )

    progress.step(f"pack: Triton model repository {out} (model {name!r}, variant {chosen.name}, {'GPU' if gpu else 'CPU'})")
    rebuild = portable and bool(chosen.details.get("ort_graph"))
    with stage_dir(out) as tmp:
        model_dir = tmp / name
        version_dir = model_dir / VERSION
        version_dir.mkdir(parents=True)
        made = None
        if rebuild:
            from ..export.quantize import portable_int8

            progress.info(f"{chosen.name}: rebuilding the plain quantizer output (portable) from the bundle's fp32 graph")
            made = portable_int8(bundle, chosen, version_dir / MODEL_FILE, [get_task(manifest.task).example, *_CHECK_TEXTS])
        else:
            _link_or_copy(model_path, version_dir / MODEL_FILE)
        for extra in chosen.extra_files:  # external data: the graph refers to it by this relative name
            _link_or_copy(bundle.path_of(extra), version_dir / extra)
        (model_dir / LABELS_FILE).write_text("".join(f"{label}\n" for label in manifest.labels))
        (model_dir / "config.pbtxt").write_text(
            config_pbtxt(name, inputs, outputs, max_batch, preferred_batch_sizes(max_batch), queue_delay_us, gpu, instances)
        )
        _client_tokenizer(bundle, tmp / "tokenizer.json")
        digest = sha256_file(version_dir / MODEL_FILE)
        (tmp / "README.txt").write_text(_readme(name, manifest, chosen, inputs, outputs, max_batch, gpu, digest, made))
    need = ort_requirement(chosen, made)
    if need:
        progress.info(f"needs: {need}")
    progress.info(f"wrote {out / name / 'config.pbtxt'}")
    return out
