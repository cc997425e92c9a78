"""Sentence embeddings from an encoder: the pooling and normalization the model's
sentence-transformers configuration asks for (modules.json, 1_Pooling/config.json), as one
torch module that ends in the embedding, so the exported graph does too."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import ModelError

# The sentence-transformers files a model folder carries beside the transformers ones.
ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
POOLINGS = ("mean", "cls", "max")


@dataclass(frozen=True)
class Pooling:
    mode: str = "mean"  # mean over the attention mask, the [CLS] vector, or the max over tokens
    normalize: bool = True  # L2 norm 1: cosine similarity is then a dot product

    def to_json(self) -> dict[str, Any]:
        return {"pooling": self.mode, "normalize": self.normalize}


def read_pooling(model_dir: Path) -> Pooling:
    """What the model's sentence-transformers config says (modules.json lists a Pooling module
    and maybe a Normalize one; 1_Pooling/config.json says which pooling); a plain transformers
    folder without one gets mean pooling and normalization, what all-MiniLM and all-mpnet use."""
    modules_file = Path(model_dir) / "modules.json"
    if not modules_file.is_file():
        return Pooling()
    try:
        modules = json.loads(modules_file.read_text())
        kinds = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"{modules_file}: not a sentence-transformers modules.json ({e}); fix or remove it") from None
    mode = "mean"
    if "Pooling" in kinds:
        cfg_file = Path(model_dir) / kinds["Pooling"] / "config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        chosen = [m for m in POOLINGS if cfg.get(f"pooling_mode_{m}_tokens" if m != "cls" else "pooling_mode_cls_token")]
        other = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and not any(m in k for m in POOLINGS)]
        if other or len(chosen) > 1:
            raise ModelError(f"{cfg_file}: pooling {other or chosen} is not supported; ftexport pools by one of {', '.join(POOLINGS)}")
        mode = chosen[0] if chosen else "mean"
    return Pooling(mode, "Normalize" in kinds)


def copy_st_files(src: Path, dst: Path) -> None:
    """Carry the sentence-transformers configuration into a stage's model folder (the weights
    are saved by transformers), so later stages and sentence-transformers itself read it."""
    for name in ST_FILES:
        if (Path(src) / name).is_file() and not (Path(dst) / name).exists():
            shutil.copy(Path(src) / name, Path(dst) / name)
    modules = Path(src) / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text()):
            sub = Path(src) / m.get("path", "")
            if m.get("path") and sub.is_dir() and not (Path(dst) / m["path"]).exists():
                shutil.copytree(sub, Path(dst) / m["path"])


def embedder(model: Any, pooling: Pooling) -> Any:
    """The encoder with its pooling (and normalization) on top: input ids in, embeddings out."""
    import torch

    class Embedder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if pooling.mode == "cls":
                emb = hidden[:, 0]
            elif pooling.mode == "max":
                emb = (hidden + (mask - 1.0) * 1e9).max(dim=1).values
            else:
                emb = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(emb, p=2, dim=-1) if pooling.normalize else emb

    return Embedder(model).eval()
