"""Causal language modelling (a GPT-2-style decoder): next-token prediction on plain text.

A text is trained as its tokens followed by eos (no other special tokens), so the model
learns where a sentence ends and generation stops there; prompts are encoded the same way
(without eos). The dev metric is perplexity = exp(mean token loss), lower is better.

No GPT-2 weights can be downloaded here, so `model.scratch` builds a randomly initialized
GPT-2 from a config plus a byte-level BPE trained on the train split (`build_scratch`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import ModelError, RecipeError
from .text_classification import EncodedTexts

EOS, PAD = "<|endoftext|>", "<|pad|>"


class CausalLM:
    name = "text-generation"
    optimum_task = "text-generation-with-past"  # one ONNX decoder with past_key_values in and present.* out
    peft_task_type = "CAUSAL_LM"
    output_name = "logits"
    labelled = False  # data: a text column only

    def load_model(self, path: str | Path, label_names: list[str], trust_remote_code: bool = False) -> Any:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except ValueError as e:  # e.g. a BERT directory: no causal-LM head for that architecture
            raise ModelError(f"recipe.model.path: {path} is not a causal language model ({str(e).splitlines()[0][:150]})") from None
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        return model

    def auto_model_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        if tokenizer.eos_token is None:
            raise ModelError("recipe.model.path: the tokenizer has no eos token; a causal LM needs one to end texts")
        if tokenizer.pad_token is None:  # GPT-2 ships none; its eos pads (labels are masked by length, not by id)
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        return tokenizer

    def dataset(self, tokenizer: Any, texts: list[str], labels: list[int] | None, max_length: int) -> EncodedTexts:
        enc = tokenizer(texts, truncation=True, max_length=max_length - 1, add_special_tokens=False)
        ids = [list(row) + [tokenizer.eos_token_id] for row in enc["input_ids"]]
        # labels = the inputs (the model shifts them); padded with -100 by the collator, so an
        # eos that doubles as pad (GPT-2) is still a training target
        return EncodedTexts({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "labels": [list(r) for r in ids]}, None)

    def collator(self, tokenizer: Any, padding: str, max_length: int) -> Any:
        # Not DataCollatorForLanguageModeling(mlm=False): it masks labels wherever input == pad id,
        # which with pad = eos (GPT-2) drops every eos target and the model never learns to stop.
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, padding=padding, max_length=max_length if padding == "max_length" else None, label_pad_token_id=-100)

    def best_metric(self, metric: str) -> tuple[str, bool]:
        return "loss", False  # perplexity = exp(loss): the lowest loss is the best checkpoint

    def compute_metrics(self, label_names: list[str]) -> None:
        return None  # the Trainer's eval loss is the metric; full-vocabulary logits would not fit in memory

    def eval_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        if "loss" in metrics:
            metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
        return metrics


def build_scratch(scratch: Any, texts: list[str], max_length: int, out: Path) -> Path:
    """A random-init GPT-2 and a byte-level BPE tokenizer trained on `texts`, saved to `out`
    like a hub model (config, safetensors, tokenizer.json)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    known = set(GPT2Config().to_dict())
    unknown = sorted(set(scratch.config) - known)
    if unknown:
        raise RecipeError(f"recipe.model.scratch.config: {unknown[0]!r} is not a GPT2Config field (e.g. n_layer, n_head, n_embd, n_inner)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=scratch.vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=PAD, model_max_length=max_length)
    fields = {"n_positions": max_length, **scratch.config}
    if int(fields["n_positions"]) < max_length:
        raise RecipeError(f"recipe.model.scratch.config.n_positions: {fields['n_positions']} is below model.max_length {max_length}")
    config = GPT2Config(vocab_size=len(fast), bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, **fields)
    torch.manual_seed(scratch.seed)
    out.mkdir(parents=True, exist_ok=True)
    GPT2LMHeadModel(config).save_pretrained(str(out))
    fast.save_pretrained(str(out))
    return out
