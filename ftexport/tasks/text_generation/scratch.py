"""A random-init GPT-2 and a byte-level BPE tokenizer trained on the train split, saved like a
hub model: what `model.scratch` builds where no pretrained decoder weights are at hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.errors import RecipeError

EOS, PAD = "<|endoftext|>", "<|pad|>"


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
    trainer = trainers.BpeTrainer(
        vocab_size=scratch.vocab_size, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=PAD, model_max_length=max_length
    )
    fields = {"n_positions": max_length, **scratch.config}
    if int(fields["n_positions"]) < max_length:
        raise RecipeError(f"recipe.model.scratch.config.n_positions: {fields['n_positions']} is below model.max_length {max_length}")
    config = GPT2Config(
        vocab_size=len(fast), bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, **fields
    )
    torch.manual_seed(scratch.seed)
    out.mkdir(parents=True, exist_ok=True)
    GPT2LMHeadModel(config).save_pretrained(str(out))
    fast.save_pretrained(str(out))
    return out
