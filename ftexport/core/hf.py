"""The one place that loads Hugging Face models and tokenizers: model folders (and `package:`
paths), fast tokenizers, the PyTorch reference an artifact stands for, and its logits."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import read_record
from .errors import ModelError, RecipeError, first_line

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def resolve_model_path(spec: str, where: str = "recipe.model.path") -> Path:
    """A directory or a GGUF file, or `package:NAME/sub/path` inside an installed Python
    package (found without importing it: weight packages may import things they never need)."""
    if spec.startswith("package:"):
        pkg, _, sub = spec[len("package:") :].partition("/")
        found = importlib.util.find_spec(pkg)
        if found is None or not found.submodule_search_locations:
            pip_name = pkg.replace("_", "-")
            raise RecipeError(f"{where}: Python package {pkg!r} is not installed; pip install {pip_name}")
        path = Path(list(found.submodule_search_locations)[0])
        return path / sub if sub else path
    return Path(spec)


def model_folder(spec: str, where: str = "recipe.model.path") -> Path:
    """The transformers folder a model path names: the folder itself, or for a GGUF file the
    folder it was de-quantized into once and cached (keyed by the file's bytes)."""
    path = resolve_model_path(spec, where)
    return gguf_folder(path, where) if path.suffix == ".gguf" else path


def cache_root() -> Path:
    return Path(os.environ.get("FTEXPORT_CACHE") or Path.home() / ".cache" / "ftexport")


def gguf_architecture(path: Path) -> str:
    import gguf

    field = gguf.GGUFReader(str(path)).fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


def gguf_folder(path: Path, where: str) -> Path:
    """De-quantize a GGUF file to an fp32 transformers folder (model and tokenizer, chat
    template included) the first time it is used; later stages and runs read the cached folder."""
    from .artifacts import stage_dir

    if not path.is_file():
        raise RecipeError(f"{where}: {path} does not exist")
    cached = cache_root() / "gguf" / f"{path.stem}-{model_hash(path)}"
    if (cached / "config.json").is_file():
        return cached
    if importlib.util.find_spec("gguf") is None:
        raise RecipeError(f"{where}: reading {path.name} needs the gguf package; pip install gguf")
    try:
        arch = gguf_architecture(path)
    except Exception as e:  # the gguf reader raises ValueError/KeyError/struct errors on a bad file
        raise ModelError(f"{where}: {path} is not a readable GGUF file ({first_line(e)})") from None
    import transformers
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    if arch not in GGUF_CONFIG_MAPPING:
        known = ", ".join(sorted(a for a in GGUF_CONFIG_MAPPING if a not in ("general", "tokenizer")))
        raise ModelError(
            f"{where}: {path.name} holds a {arch!r} model, which transformers {transformers.__version__} cannot load from GGUF "
            f"(it loads: {known})"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import progress

    progress.step(f"model: de-quantizing {path.name} ({arch}) to fp32 once; cached in {cached}")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise ModelError(f"{where}: transformers cannot load {path.name} ({arch}: {first_line(e)})") from None
    for role in ("eos", "pad", "bos"):  # GGUF's tokenizer metadata can name other special tokens than the model config does
        wanted = getattr(model.config, f"{role}_token_id", None)
        if isinstance(wanted, int) and getattr(tokenizer, f"{role}_token_id") != wanted:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(wanted))
    with stage_dir(cached) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return cached


def check_model_dir(path: Path, where: str = "recipe.model.path") -> None:
    """A model directory must hold a config.json that transformers can read."""
    from transformers import AutoConfig

    if not path.is_dir():
        from .fetch import hint

        raise ModelError(f"{where}: {path} is not a directory holding a Hugging Face model{hint(path)}")
    if not (path / "config.json").is_file():
        raise ModelError(f"{where}: {path} is not a model: it has no config.json (expected a save_pretrained folder)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        from .fetch import hint

        raise ModelError(
            f"{where}: {path} has a config.json but no weights ({' or '.join(WEIGHT_FILES[::2])}); the folder is incomplete: "
            f"save or fetch the model again{hint(path)}"
        )
    try:
        AutoConfig.from_pretrained(str(path))
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{where}: {path}/config.json cannot be read by transformers ({first_line(e)})") from None
    for weights in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise ModelError(f"{where}: {weights} cannot be read ({problem}); the file is damaged or incomplete: save or fetch it again")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file's framing, or None: its header (8 bytes of length,
    then JSON) must parse and every tensor's bytes lie inside the file. Reads the header only, so a
    truncated or damaged download is named in one line before from_pretrained meets it."""
    size = path.stat().st_size
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if size < 8 or not 2 <= length <= size - 8:
            return f"its header claims {length} bytes, the file has {size}"
        try:
            header = json.loads(f.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            return f"its header is not safetensors JSON: {first_line(e)}"
    if 8 + length + end > size:
        return f"its tensors end at byte {8 + length + end}, the file has {size}: it was cut short"
    return None


def load_tokenizer(path: Path, where: str = "recipe.model.path") -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except (OSError, ValueError, TypeError) as e:
        raise ModelError(f"{where}: no usable tokenizer in {path} ({first_line(e)})") from None
    if not getattr(tok, "is_fast", False):
        raise ModelError(f"{where}: {path} has no fast tokenizer (tokenizer.json); the runtime needs one")
    return tok


def model_hash(path: Path) -> str:
    """Hash of a model folder's config, weights and tokenizer (or of a single weights file):
    its identity in stage keys, whatever the path that names it."""
    h = hashlib.sha256()
    path = Path(path)
    files = (
        [path]
        if path.is_file()
        else [
            f
            for f in sorted(path.iterdir())
            if f.is_file()
            and f.suffix in (".json", ".safetensors", ".bin", ".txt", ".model")
            and f.name not in ("ftexport.json", "ftexport-source.json")  # records of what made it
        ]
    )
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]


# ---- the reference: a dense model folder, or an unmerged (prefix/prompt) adapter ----------


def is_adapter_dir(model_dir: Path) -> bool:
    return (Path(model_dir) / "adapter_config.json").is_file()


def adapter_base(model_dir: Path, where: str) -> Path:
    record = read_record(model_dir)
    if record is None or not record.base_model:
        raise ModelError(f"{where}: {model_dir} is an adapter with no ftexport record naming its base model; re-run `ftexport train`")
    return Path(record.base_model)


def base_config_dir(model_dir: Path) -> Path:
    """Where the architecture's config.json lives: the model itself, or an adapter's base."""
    return adapter_base(model_dir, "model dir") if is_adapter_dir(model_dir) else Path(model_dir)


def check_reference(model_dir: Path, where: str) -> None:
    """A dense model directory, or an unmerged adapter whose base model is still there."""
    model_dir = Path(model_dir)
    if is_adapter_dir(model_dir):
        check_model_dir(adapter_base(model_dir, where), f"{where} (the adapter's base model)")
    else:
        check_model_dir(model_dir, where)


def reference_labels(model_dir: Path) -> list[str]:
    """The label names a reference model predicts, from its config (or an adapter's record)."""
    if is_adapter_dir(model_dir):
        record = read_record(model_dir)
        return list(record.labels or []) if record else []
    config = json.loads((Path(model_dir) / "config.json").read_text())
    id2label = config.get("id2label") or {}
    return [id2label[str(i)] for i in range(len(id2label))]


def load_reference(model_dir: str | Path, task: Any) -> Any:
    """The PyTorch model an artifact directory stands for, in eval mode: a dense
    save_pretrained folder, or (prefix/prompt tuning) the base model with its adapter."""
    model_dir = Path(model_dir)
    if not is_adapter_dir(model_dir):
        return task.auto_model_class().from_pretrained(str(model_dir)).eval()
    from peft import PeftModel

    record = read_record(model_dir)
    base, labels = (record.base_model, record.labels) if record else (None, None)
    if not base or not labels or not Path(base).is_dir():
        raise ModelError(f"{model_dir}: an adapter whose base model is unknown or gone ({base}); re-run `ftexport train`")
    model = task.load_model(base, labels, record.trust_remote_code if record else False)
    return PeftModel.from_pretrained(model, str(model_dir)).eval()


def predict_logits(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """PyTorch reference logits, batch by batch, on whatever device the model is on."""
    import torch

    device = next(model.parameters()).device
    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            out.append(model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu().numpy())
    return np.concatenate(out, axis=0)


@contextmanager
def cuda_matmul_precision(mode: str) -> Iterator[None]:
    """CUDA fp32 matmuls and cuDNN convolutions in `mode` ("tf32" or "ieee") inside the block, and
    as they were after it. Training turns TF32 on for itself alone; the parity reference runs in
    ieee whatever the process set before. (transformers' `tf32=True` sets it process-wide and
    leaves it on: on an H200 the fp32 reference computed after training, in the same process,
    then missed the 1e-3 fp32 gate, max |dlogit| 2.1e-3 against 1.4e-7 in a fresh process.)"""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9; the allow_tf32 flags are the legacy API

        def put(m: Any, c: Any) -> None:
            matmul.fp32_precision, cudnn.conv.fp32_precision = m, c

        saved = (matmul.fp32_precision, cudnn.conv.fp32_precision)
        put(mode, mode)
    else:

        def put(m: Any, c: Any) -> None:
            matmul.allow_tf32, cudnn.allow_tf32 = m, c

        saved = (matmul.allow_tf32, cudnn.allow_tf32)
        put(mode == "tf32", mode == "tf32")
    try:
        yield
    finally:
        put(*saved)


def reference_device(model: Any) -> Any:
    """Put a reference model on the GPU when there is one (fp32 either way; only faster)."""
    import torch

    return model.to("cuda") if torch.cuda.is_available() else model
