"""Builders for tests: a tiny random-init BERT with its own WordPiece vocabulary, and a
small sentiment data set that such a model can learn in a few steps."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml

POSITIVE = ["good", "great", "wonderful", "moving", "brilliant", "charming", "superb", "delightful", "fine", "lovely"]
NEGATIVE = ["bad", "awful", "boring", "dull", "terrible", "weak", "clumsy", "tedious", "poor", "bland"]
NEUTRAL = [
    "the",
    "film",
    "movie",
    "story",
    "acting",
    "is",
    "was",
    "a",
    "and",
    "very",
    "plot",
    "ending",
    "really",
    "quite",
    "cast",
    "music",
    ",",
    ".",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tokenizer(directory: Path, reverse_words: bool = False) -> Any:
    """A lower-casing WordPiece tokenizer over the words below, built with `tokenizers` so it
    is the same under transformers 4 and 5. reverse_words: the same words with other ids (a
    tokenizer a model of the first kind cannot read)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    words = sorted(set(POSITIVE + NEGATIVE + NEUTRAL) | set("abcdefghijklmnopqrstuvwxyz"), reverse=reverse_words)
    vocab = SPECIALS + words + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )
    fast.save_pretrained(str(directory))
    return fast


def make_tiny_model(directory: Path, labels: list[str] | None = None, seed: int = 0, reverse_words: bool = False) -> Path:
    """A 2-layer, 32-wide BERT (random init) with a WordPiece tokenizer, saved like a hub model."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tok = make_tokenizer(directory, reverse_words)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    BertModel(config).save_pretrained(str(directory))
    return directory


def sentence(rng: random.Random, positive: bool) -> str:
    words = rng.sample(NEUTRAL, 4) + rng.sample(POSITIVE if positive else NEGATIVE, 2)
    rng.shuffle(words)
    return " ".join(words)


def make_rows(n: int, seed: int, label_names: tuple[str, str] = ("negative", "positive")) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pos = i % 2 == 1
        rows.append({"sentence": sentence(rng, pos), "label": label_names[int(pos)]})
    return rows


def write_split(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as CSV, TSV, JSONL or parquet, by the file's suffix."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        df.to_parquet(path)
    else:
        raise ValueError(path)
    return path


def tiny_recipe(tmp: Path, model_dir: Path, **overrides: Any) -> dict[str, Any]:
    data = tmp / "data"
    write_split(data / "train.csv", make_rows(192, seed=1))
    write_split(data / "dev.csv", make_rows(32, seed=2))
    write_split(data / "test.csv", make_rows(64, seed=3))
    recipe: dict[str, Any] = {
        "name": "tiny",
        "task": "text-classification",
        "model": {"path": str(model_dir), "max_length": 32},
        "data": {
            "root": str(data),
            "train": "train.csv",
            "validation": "dev.csv",
            "test": "test.csv",
            "text_column": "sentence",
            "label_column": "label",
            "label_names": ["negative", "positive"],
        },
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"epochs": 8, "lr": 1e-2, "batch_size": 16, "eval_steps": 24, "seed": 0},
        "validate": {"int8": {"min_agreement": 0.8}},
        "bench": {"batch_sizes": [1, 4], "seq_len": 16, "iterations": 6, "warmup": 1, "backends": ["pytorch", "ort-fp32", "ort-int8"]},
        "output": str(tmp / "runs" / "tiny"),
    }
    for dotted, value in overrides.items():
        node = recipe
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
