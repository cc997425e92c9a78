"""Fine-tuning methods, chosen by the recipe's `method.name`: what is trained, and how the
result becomes a model that export can read.

    none      no training: the pretrained model is exported as it is
    full      every weight (optionally freezing the embeddings and the lowest N layers)
    bitfit    biases and the task head only (Ben Zaken et al., 2021); a dense model, no merge
    lora      low-rank adapters (peft)            merged into dense weights
    adalora   LoRA whose ranks are re-allocated during training (peft)   merged
    ia3       learned rescaling vectors (peft)    merged
    prefix    learned key/value prefixes in every layer (peft)   not mergeable
    prompt    learned virtual input tokens (peft)                not mergeable

Merged methods export through Optimum like any dense model. Prefix and prompt tuning cannot
be folded into the weights, so `merge` passes the adapter through and `export` traces the
peft model itself: the learned tokens become constants of the ONNX graph, and the validate
stage then proves the graph gives PyTorch's answers.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import RecipeError, first_line

PEFT_METHODS = ("lora", "adalora", "ia3", "prefix", "prompt")
MERGEABLE = ("lora", "adalora", "ia3")
DENSE = ("full", "bitfit", "none")  # none: the pretrained model as it is, no training
METHODS = ("full", "bitfit", *PEFT_METHODS, "none")


def _layers(model: Any) -> Any:
    """The stack of transformer blocks: the longest ModuleList inside the base model whose
    length is the config's layer count (bert.encoder.layer, transformer.h, model.layers...)."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    for module in base.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise RecipeError(f"recipe.method.freeze.layers: cannot find the {n} transformer layers of this {type(model).__name__}")


def _head_parameter(model: Any, name: str) -> bool:
    """Parameters outside the base model (classifier, score...) form the task head."""
    prefix = getattr(model, "base_model_prefix", "")
    return bool(prefix) and not name.startswith(prefix + ".")


def apply_freezing(model: Any, method: Any) -> None:
    """BitFit, and the freezing strategies of a full fine-tune, as requires_grad flags."""
    if method.name == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad = name.endswith(".bias") or _head_parameter(model, name)
    freeze = method.freeze
    if freeze.embeddings:
        base = getattr(model, getattr(model, "base_model_prefix", ""), model)
        embeddings = getattr(base, "embeddings", None) or model.get_input_embeddings()
        for p in embeddings.parameters():
            p.requires_grad = False
    if freeze.layers:
        layers = _layers(model)
        if freeze.layers > len(layers):
            raise RecipeError(f"recipe.method.freeze.layers: {freeze.layers} is more than the model's {len(layers)} layers")
        for layer in layers[: freeze.layers]:
            for p in layer.parameters():
                p.requires_grad = False


def peft_config(method: Any, task: Any, total_steps: int) -> Any:
    import peft

    m = method
    task_type = task.peft_task_type
    targets = m.target_modules or "all-linear"
    exclude = task.lora_exclude if not m.target_modules else None  # modules "all-linear" must leave alone for this task
    if m.name == "lora":
        return peft.LoraConfig(
            task_type=task_type, r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout, target_modules=targets, exclude_modules=exclude
        )
    if m.name == "adalora":
        # AdaLoRA starts every adapter at rank r and prunes to an average of target_r over
        # the middle of training; it must know the step count to schedule that budget.
        tinit, tfinal = int(0.1 * total_steps), int(0.2 * total_steps)
        if total_steps - tinit - tfinal < 1:
            raise RecipeError(
                f"recipe.method.name: adalora needs more training steps than {total_steps} to schedule its rank budget; train longer"
            )
        return peft.AdaLoraConfig(
            task_type=task_type,
            init_r=m.r,
            target_r=m.target_r,
            lora_alpha=m.alpha,
            lora_dropout=m.dropout,
            target_modules=targets,
            exclude_modules=exclude,
            total_step=total_steps,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=max(1, total_steps // 20),
        )
    if m.name == "ia3":
        kw: dict[str, Any] = {}
        if m.target_modules:
            kw["target_modules"] = m.target_modules
            kw["feedforward_modules"] = m.feedforward_modules or []
        return peft.IA3Config(task_type=task_type, **kw)
    if m.name == "prefix":
        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=m.num_virtual_tokens)
    if m.name == "prompt":
        return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=m.num_virtual_tokens)
    raise AssertionError(m.name)


def check_positions(method: Any, config: Any, max_length: int) -> None:
    """Virtual tokens take position slots: max_length + virtual tokens must fit the model."""
    if method.name not in ("prefix", "prompt"):
        return
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and max_length + method.num_virtual_tokens > limit:
        raise RecipeError(
            f"recipe.method.num_virtual_tokens: {method.num_virtual_tokens} virtual tokens + model.max_length {max_length} "
            f"exceed the model's {limit} positions; lower one of them"
        )


def apply_method(model: Any, method: Any, task: Any, total_steps: int) -> Any:
    """Return the model to train: the model itself with some weights frozen, or a peft model."""
    if method.name in DENSE:
        apply_freezing(model, method)
        return model
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config(method, task, total_steps))
    except (ValueError, TypeError) as e:
        raise RecipeError(f"recipe.method: peft cannot apply {method.name} to this {type(model).__name__} ({first_line(e)})") from None


def adalora_callback() -> Any:
    """AdaLoRA re-allocates ranks from the gradients' importance scores, between the optimizer
    step and zero_grad; the Trainer does not do that on its own."""
    from transformers import TrainerCallback

    class AdaLoraAllocate(TrainerCallback):
        def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            inner = getattr(model, "module", model)  # DDP wraps the peft model
            inner.base_model.update_and_allocate(state.global_step)

    return AdaLoraAllocate()


def dropout_override(model: Any, p: float) -> None:
    """training.dropout: one rate for every dropout of the model, in the config (so a resumed
    or re-loaded model agrees) and in the modules already built."""
    import torch

    for key, value in list(vars(model.config).items()):
        if isinstance(value, float) and ("dropout" in key or key.endswith("_pdrop")):
            setattr(model.config, key, p)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
