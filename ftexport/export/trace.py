"""Tracing a peft model that has no dense form (prefix and prompt tuning) to ONNX: the learned
virtual tokens become constants of the graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import ModelError, first_line
from ..core.hf import load_reference
from .graph import quiet_exporters


def trace_adapter(model_dir: Path, task: Any, tokenizer: Any, path: Path, opset: int) -> None:
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
        with quiet_exporters():
            torch.onnx.export(
                Logits(model).eval(),
                tuple(sample[n] for n in names),
                str(path),
                input_names=names,
                output_names=[task.output_name],
                dynamic_axes={**axes, task.output_name: {0: "batch_size"}},
                opset_version=opset,
                dynamo=False,
            )
    except (RuntimeError, ValueError, TypeError) as e:
        raise ModelError(
            f"{model_dir}: this {type(model).__name__} adapter cannot be traced to ONNX faithfully ({first_line(e)}); train with lora, "
            f"adalora or ia3 to export"
        ) from None
