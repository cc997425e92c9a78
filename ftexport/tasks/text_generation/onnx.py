"""The decoder with its key/value cache as a module the dynamo exporter traces: past tensors
in, a transformers DynamicCache built from them, logits and the new cache out."""

from __future__ import annotations

from typing import Any

from ..base import OnnxSpec


def decoder_spec(model: Any) -> OnnxSpec:
    import torch
    from transformers import DynamicCache

    config = model.config
    layers = int(config.num_hidden_layers)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    class Decoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, past: list[Any]) -> Any:
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(layers)])
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache, use_cache=True
            )
            present: list[Any] = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    # an example past of 4 tokens and 3 new ones (sizes above 1: torch.export specializes 0 and 1)
    batch, new, past_len = 2, 3, 4
    vocab = int(config.vocab_size)
    ids = torch.randint(0, vocab, (batch, new))
    mask = torch.ones(batch, past_len + new, dtype=torch.long)
    positions = torch.arange(past_len, past_len + new).expand(batch, new)
    past = [torch.zeros(batch, kv_heads, past_len, head_dim) for _ in range(2 * layers)]
    kv = [f"{i}.{part}" for i in range(layers) for part in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{n}" for n in kv)]
    outputs = ["logits", *(f"present.{n}" for n in kv)]
    dim = torch.export.Dim
    b, s, p, m = dim("batch_size"), dim("sequence_length"), dim("past_sequence_length"), dim("total_sequence_length")
    shapes = ({0: b, 1: s}, {0: b, 1: m}, {0: b, 1: s}, [{0: b, 2: p}] * (2 * layers))
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"}, "attention_mask": {0: "batch_size", 1: "total_sequence_length"}}
    return OnnxSpec(Decoder(model).eval(), (ids, mask, positions, past), inputs, outputs, axes, shapes, dynamo=True)
