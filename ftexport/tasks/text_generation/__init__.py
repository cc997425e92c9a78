"""Causal language modelling (a decoder): next-token prediction on plain text.

A text is trained as its tokens followed by eos (no other special tokens), so the model
learns where a sentence ends and generation stops there; prompts are encoded the same way
(without eos). The dev metric is perplexity = exp(mean token loss), lower is better. The
bundle holds the decoder with its key/value cache; parity is greedy continuations token for
token and perplexity, and the benchmark times prefill and each generated token.

Where no pretrained decoder weights are at hand, `model.scratch` builds a randomly
initialized GPT-2 from a config plus a byte-level BPE trained on the train split.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ...core.errors import ModelError
from ...core.gates import GateField
from ..base import BenchProbe, OnnxSpec, ParityCase, Task
from ..encoder import EncodedTexts
from .instruct import InstructSection, check_template, end_of_turn_ids, instruct_dataset


class ChatCheck(BaseModel):
    """Parity settings of an instruction-tuned decoder: the greedy check and the instruct section."""

    generation: Any
    instruct: InstructSection


class TextGeneration(Task):
    name = "text-generation"
    head = "generate"
    optimum_task = "text-generation-with-past"  # one ONNX decoder with past_key_values in and present.* out
    peft_task_type = "CAUSAL_LM"
    labelled = False  # data: a text column only
    example = "the film is"
    metrics_computed = ("perplexity",)
    forced_metric = "perplexity"
    quantize_modes = ("dynamic", "int8-block", "int4")  # the KV-cache decoder is not calibrated or fused by ftexport yet
    recipe_section = ("instruct", InstructSection)  # instruction tuning through the model's chat template
    graph_optimization = False
    tensorrt = False
    scratch = True
    gate_fields = (
        GateField(
            "min_greedy_match",
            "greedy_match",
            "min",
            "text-generation: share of held-out prompts whose greedy continuation equals PyTorch's token for token (fp32 default 1.0)",
            ge=0,
            le=1,
        ),
        GateField("max_perplexity_ratio", "perplexity_ratio", "max", "text-generation: held-out perplexity / PyTorch's perplexity", ge=1),
    )
    summary_keys = (
        "accuracy",
        "accuracy_drop",
        "agreement",
        "max_logit_diff",
        "mean_logit_diff",
        "perplexity",
        "perplexity_ratio",
        "greedy_match",
    )
    reference_keys = ("accuracy", "perplexity")

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

    def training_data(self, recipe: Any) -> Any:
        """Plain texts, or (instruct) labelled rows whose label names are the answers."""
        from ...data import load_data

        return load_data(recipe.data, ("train", "validation"), labelled=getattr(recipe, "instruct", None) is not None)

    def dataset(self, tokenizer: Any, texts: list[str], labels: list[int] | None, max_length: int, **context: Any) -> EncodedTexts:
        instruct = getattr(context.get("recipe"), "instruct", None)
        if instruct is not None:
            check_template(tokenizer)
            return instruct_dataset(tokenizer, instruct, texts, list(labels or []), context.get("label_names") or [], max_length)
        enc = tokenizer(texts, truncation=True, max_length=max_length - 1, add_special_tokens=False)
        ids = [list(row) + [tokenizer.eos_token_id] for row in enc["input_ids"]]
        # labels = the inputs (the model shifts them); padded with -100 by the collator, so an
        # eos that doubles as pad (GPT-2) is still a training target
        return EncodedTexts({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids], "labels": [list(r) for r in ids]}, None)

    def collator(self, tokenizer: Any, padding: str, max_length: int) -> Any:
        # Not DataCollatorForLanguageModeling(mlm=False): it masks labels wherever input == pad id,
        # which with pad = eos (GPT-2) drops every eos target and the model never learns to stop.
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(
            tokenizer, padding=padding, max_length=max_length if padding == "max_length" else None, label_pad_token_id=-100
        )

    def best_metric(self, metric: str) -> tuple[str, bool]:
        return "loss", False  # perplexity = exp(loss): the lowest loss is the best checkpoint

    def compute_metrics(self, label_names: list[str]) -> None:
        return None  # the Trainer's eval loss is the metric; full-vocabulary logits would not fit in memory

    def eval_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        if "loss" in metrics:
            metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
        return metrics

    def build_scratch(self, scratch: Any, texts: list[str], max_length: int, out: Path) -> Path:
        from .scratch import build_scratch

        return build_scratch(scratch, texts, max_length, out)

    # ---- export ---------------------------------------------------------------------------

    def onnx_module(self, model: Any, tokenizer: Any) -> OnnxSpec:
        """The decoder with its key/value cache, as Optimum's text-generation-with-past lays it
        out (input_ids, attention_mask, position_ids, past_key_values.N.key/value in; logits,
        present.N.key/value out), so the runtime's Generator runs either. Traced with the dynamo
        exporter: a transformers Cache object is built from the past tensors inside the graph,
        which TorchScript tracing cannot follow."""
        from .onnx import decoder_spec

        return decoder_spec(model)

    def manifest_extras(self, model_dir: Path, model_file: Path, config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
        spec = generation_spec(model_file, config, tokenizer)
        if getattr(tokenizer, "chat_template", None):  # a chat model: the runtime renders its template and stops at the turn's end
            spec.update(
                {
                    "chat_template": tokenizer.chat_template,
                    "stop_ids": end_of_turn_ids(tokenizer),
                    "bos_token": tokenizer.bos_token,
                    "eos_token": tokenizer.eos_token,
                }
            )
        return {"generation": spec}

    # ---- judging --------------------------------------------------------------------------

    def parity_settings(self, recipe: Any) -> Any:
        """The greedy check's settings; with an instruct section, the two together."""
        instruct = getattr(recipe, "instruct", None)
        return ChatCheck(generation=recipe.validate_.generation, instruct=instruct) if instruct is not None else recipe.validate_.generation

    def parity_case(self, bundle: Any, reference_dir: Path, data: Any, split: str, batch_size: int, settings: Any) -> ParityCase:
        from .parity import GenerationCase, InstructCase

        if isinstance(settings, ChatCheck):
            return InstructCase(self, bundle, reference_dir, data, split, batch_size, settings)
        return GenerationCase(self, bundle, reference_dir, data, split, batch_size, settings)

    def bench_probe(self) -> BenchProbe:
        from .bench import GenerationProbe

        return GenerationProbe()

    def parity_table(self, report: Any) -> str:
        from .parity import parity_table

        return parity_table(report)

    def bench_table(self, report: Any) -> str:
        from .bench import bench_table

        return bench_table(report)

    def summary_table(self, parity: Any, bench: Any) -> str:
        from .bench import summary_table

        return summary_table(parity, bench)

    def try_hint(self, bundle: Path) -> str:
        return f'ftexport-runtime generate {bundle} "{self.example}" --max-new-tokens 20'


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
