"""Sentence embeddings (feature extraction): one vector per text, for semantic search.

The bundle's graph ends in the sentence embedding itself: the encoder, then the pooling and
normalization the model's sentence-transformers configuration asks for (masked mean pooling
and L2 normalization for all-MiniLM-L6-v2), so any ONNX Runtime client gets the right vector
and no application re-implements pooling. Training is optional: `method: none` exports the
pretrained model as it is; a pairs file (data.text_column: the anchor, data.label_column: its
positive) fine-tunes it with a contrastive loss over in-batch negatives.

Parity: the cosine similarity of each text's embedding to PyTorch's (gate `min_cosine`) and
retrieval agreement: 1,000 held-out texts as queries against the rest, the share of each
query's top-10 neighbours that the variant finds as PyTorch does (`min_retrieval_overlap`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import DataError
from ...core.gates import GateField
from ..base import BenchProbe, OnnxSpec, ParityCase, Task
from ..encoder import EncodedTexts
from .pooling import copy_st_files, embedder, read_pooling


class FeatureExtraction(Task):
    name = "feature-extraction"
    head = "embed"
    optimum_task = None  # Optimum exports last_hidden_state; the bundle's graph must end in the embedding
    peft_task_type = "FEATURE_EXTRACTION"
    output_name = "sentence_embedding"
    labelled = False  # held-out data: texts only; a training pairs file is read by `training_data`
    example = "a wonderful, moving film"
    metrics_computed = ("loss",)
    forced_metric = "loss"  # the contrastive loss on the dev pairs: lower is better
    accuracy_aware = False
    tensorrt = False  # the engine path reads logits; not built for embeddings yet
    gate_fields = (
        GateField(
            "min_retrieval_overlap",
            "retrieval_overlap",
            "min",
            "feature-extraction: mean share of each query's top-10 neighbours found as with PyTorch",
            ge=0,
            le=1,
        ),
    )
    measured_gates = ("max_logit_diff", "min_cosine", "min_retrieval_overlap")
    default_gates = {
        "fp32": {"max_logit_diff": 1e-3, "min_cosine": 0.99999},
        "fp16": {"min_cosine": 0.999, "min_retrieval_overlap": 0.95},
        "int8": {"min_cosine": 0.99, "min_retrieval_overlap": 0.9},
    }
    summary_keys = ("min_cosine", "mean_cosine", "retrieval_overlap", "max_logit_diff")
    reference_keys = ("dimension",)

    # ---- training: pairs, contrastive loss ------------------------------------------------

    def auto_model_class(self) -> Any:
        from transformers import AutoModel

        return AutoModel

    def load_model(self, path: str | Path, label_names: list[str], trust_remote_code: bool = False) -> Any:
        return self.auto_model_class().from_pretrained(str(path), trust_remote_code=trust_remote_code)

    def training_data(self, recipe: Any) -> Any:
        """Pairs: data.text_column holds the anchor, data.label_column its positive text."""
        from ...data import Data, Split, read_table

        section = recipe.data
        splits = {}
        for split in ("train", "validation"):
            path = section.split_path(split)
            if path is None:
                continue
            df = read_table(path, section.format, split)
            missing = [c for c in (section.text_column, section.label_column) if c not in df.columns]
            if missing:
                raise DataError(
                    f"recipe.data.{split}: {path} has no column {missing[0]!r} (it has: {', '.join(map(str, df.columns[:10]))}); "
                    "a pairs file needs the anchor in data.text_column and its positive in data.label_column"
                )
            rows = [(a, b) for a, b in zip(df[section.text_column].tolist(), df[section.label_column].tolist())]
            bad = next(
                (i for i, (a, b) in enumerate(rows) if not (isinstance(a, str) and a.strip() and isinstance(b, str) and b.strip())), None
            )
            if bad is not None:
                raise DataError(f"recipe.data.{split}: row {bad + 1} of {path} lacks an anchor or a positive text")
            limit = section.max_train_samples if split == "train" else section.max_eval_samples
            if limit is not None and limit < len(rows):
                rng = np.random.default_rng(section.sample_seed)
                rows = [rows[i] for i in sorted(rng.choice(len(rows), limit, replace=False))]
            if len(rows) < 2:
                raise DataError(f"recipe.data.{split}: {path} has {len(rows)} pair(s); in-batch negatives need at least two")
            splits[split] = Split(split, [a for a, _ in rows], [b for _, b in rows])
        if "train" not in splits:
            raise DataError(
                "recipe.data.train: a pairs file is needed to fine-tune embeddings; or set method: {name: none} to export "
                "the pretrained model"
            )
        return Data([], splits)

    def dataset(self, tokenizer: Any, texts: list[str], labels: list[Any] | None, max_length: int, **context: Any) -> EncodedTexts:
        a = tokenizer(texts, truncation=True, max_length=max_length)
        b = tokenizer(list(labels or []), truncation=True, max_length=max_length)
        return EncodedTexts({**{k: list(v) for k, v in a.items()}, **{f"pair_{k}": list(v) for k, v in b.items()}}, None)

    def collator(self, tokenizer: Any, padding: str, max_length: int) -> Any:
        return PairCollator(tokenizer, padding, max_length)

    def best_metric(self, metric: str) -> tuple[str, bool]:
        return "loss", False

    def compute_metrics(self, label_names: list[str]) -> None:
        return None

    def trainer_class(self, model_dir: Path) -> Any:
        return contrastive_trainer(read_pooling(model_dir))

    def save_extras(self, model_dir: Path, out: Path) -> None:
        copy_st_files(model_dir, out)

    # ---- export -----------------------------------------------------------------------------

    def onnx_module(self, model: Any, tokenizer: Any) -> OnnxSpec:
        import inspect

        pooling = read_pooling(Path(model.name_or_path))
        module = embedder(model, pooling)
        order = list(inspect.signature(module.forward).parameters)
        names = sorted((n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")), key=order.index)
        sample = tokenizer(["a short text here", "a somewhat longer text to pad the other one"], padding=True, return_tensors="pt")
        axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
        return OnnxSpec(module, ({n: sample[n] for n in names},), names, [self.output_name], {**axes, self.output_name: {0: "batch_size"}})

    def manifest_extras(self, model_dir: Path, model_file: Path, config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
        """The `embedding` object the runtime's embed head reads."""
        return {"embedding": {"dimension": int(config["hidden_size"]), **read_pooling(model_dir).to_json()}}

    # ---- judging ----------------------------------------------------------------------------

    def parity_case(self, bundle: Any, reference_dir: Path, data: Any, split: str, batch_size: int, settings: Any) -> ParityCase:
        from .parity import EmbedCase

        return EmbedCase(self, bundle, reference_dir, data, split, batch_size)

    def bench_probe(self) -> BenchProbe:
        from .parity import EmbedProbe

        return EmbedProbe()

    def parity_table(self, report: Any) -> str:
        from .parity import parity_table

        return parity_table(report)

    def bench_table(self, report: Any) -> str:
        from ..encoder import bench_table

        return bench_table(report)

    def summary_table(self, parity: Any, bench: Any) -> str:
        from .parity import summary_table

        return summary_table(parity, bench)

    def try_hint(self, bundle: Path) -> str:
        return f'ftexport-runtime embed {bundle} "{self.example}"'


class PairCollator:
    """Pads anchors and positives each to their own longest text (dynamic padding)."""

    def __init__(self, tokenizer: Any, padding: str, max_length: int):
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer, padding=padding, max_length=max_length if padding == "max_length" else None)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        anchors = [{k: v for k, v in f.items() if not k.startswith("pair_")} for f in features]
        positives = [{k.removeprefix("pair_"): v for k, v in f.items() if k.startswith("pair_")} for f in features]
        a, b = self.pad(anchors), self.pad(positives)
        return {**a, **{f"pair_{k}": v for k, v in b.items()}}


def contrastive_trainer(pooling: Any, scale: float = 20.0) -> Any:
    """A Trainer whose loss is the multiple-negatives ranking loss (sentence-transformers'
    default for pairs): each anchor's positive against every other positive of the batch."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    def embed(model: Any, ids: Any, mask: Any, types: Any) -> Any:
        kwargs = {"token_type_ids": types} if types is not None else {}
        hidden = model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if pooling.mode == "cls":
            emb = hidden[:, 0]
        elif pooling.mode == "max":
            emb = (hidden + (m - 1.0) * 1e9).max(dim=1).values
        else:
            emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(emb, p=2, dim=-1)

    class ContrastiveTrainer(Trainer):
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["args"].remove_unused_columns = False  # the pair_* columns are the positives
            super().__init__(*args, **kwargs)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any) -> Any:
            a = embed(model, inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
            b = embed(model, inputs["pair_input_ids"], inputs["pair_attention_mask"], inputs.get("pair_token_type_ids"))
            scores = a @ b.T * scale
            loss = F.cross_entropy(scores, torch.arange(len(a), device=scores.device))
            return (loss, {"scores": scores}) if return_outputs else loss

        def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None) -> Any:
            with torch.no_grad():
                loss = self.compute_loss(model, self._prepare_inputs(inputs))
            return loss.detach(), None, None

    return ContrastiveTrainer
