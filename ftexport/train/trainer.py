"""`ftexport train`: fine-tune a pretrained model on the recipe's data with the Hugging Face
Trainer, fully or with a peft adapter (LoRA and friends, see methods.py).

Output: a save_pretrained directory. For LoRA it holds the adapter (and the classifier
head, which peft saves beside it); `ftexport merge` folds it into dense weights.

Distributed: the same command runs under `torchrun` and `accelerate launch` (DDP, FSDP,
DeepSpeed; see docs/distributed.md). The recipe's batch_size is the global batch: each of
the N processes takes batch_size / N, so a recipe trains the same way on 1 or 8 devices.
Only rank 0 writes files and prints; the other ranks wait for it at barriers.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ..core import progress
from ..core.artifacts import StageRecord, link_tree, make_key, read_record, stage_dir
from ..core.errors import RecipeError
from ..core.hf import check_model_dir, cuda_matmul_precision, load_tokenizer, model_folder, model_hash, reference_labels, resolve_model_path
from ..data import fingerprint
from ..tasks import get_task
from .methods import adalora_callback, apply_method, check_positions, dropout_override


def resolve_device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise RecipeError("recipe.training.device: 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def precision_flags(mixed: str, device: str) -> dict[str, bool]:
    """Autocast only when the recipe asks for it (bf16 or fp16, CUDA only). `auto` is fp32, with
    TF32 matmuls on an Ampere or newer GPU (tf32_wanted): on an H200, bf16 autocast made the
    quickstart's LoRA (lr 2e-3, 625 steps) collapse to the majority class (dev loss 0.667) where
    fp32 + TF32 trained it (0.267), no slower (docs/results/gpu-h200-precision-ab.json)."""
    if mixed in ("fp16", "bf16") and device != "cuda":
        raise RecipeError(f"recipe.training.mixed_precision: {mixed} needs a CUDA device; use 'auto' or 'no' on the CPU")
    return {"bf16": mixed == "bf16", "fp16": mixed == "fp16"}


def tf32_wanted(device: str) -> bool:
    """TF32 tensor-core matmuls for fp32 training: CUDA on compute capability 8.0 (Ampere) or newer."""
    import torch

    return device == "cuda" and torch.cuda.get_device_capability()[0] >= 8


def _progress_callback() -> Any:
    """Trainer's own callbacks print every log dict to stdout; keep stdout for results, show
    the loss on the progress bar and each dev evaluation as one line on stderr."""
    from transformers.trainer_callback import ProgressCallback

    class Progress(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            if getattr(self, "training_bar", None) is not None and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)
            scores = {
                k.removeprefix("eval_"): v for k, v in logs.items() if k in ("eval_loss", "eval_accuracy", "eval_macro_f1", "eval_f1")
            }
            if "loss" in scores and not any(k in logs for k in ("eval_accuracy", "eval_macro_f1", "eval_f1")):
                scores["perplexity"] = math.exp(min(scores["loss"], 50.0))  # a language model's dev score
            if scores:
                progress.info(f"step {state.global_step}: dev " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    return Progress


def evaluate_last_step() -> Any:
    """Evaluate the final step when eval_steps does not divide the step count, so the finished
    model is a candidate for the best checkpoint. transformers 5 does this itself and 4.57 does
    not: the same run kept step 600 of 625 on one stack and step 625 on the other."""
    from transformers import TrainerCallback

    class EvaluateLastStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            every = state.eval_steps  # the Trainer's own absolute count
            if state.global_step >= state.max_steps and args.eval_strategy == "steps" and every and state.global_step % every:
                control.should_evaluate = True  # the Trainer saves the last step already
            return control

    return EvaluateLastStep()


def rng_neutral(evaluate: Callable[..., Any]) -> Callable[..., Any]:
    """`evaluate` that leaves torch's random generators as it found them. An evaluation draws
    random numbers (its data loader's seed; transformers 5 draws differently from 4), which moved
    every later dropout mask: the same recipe and seed trained a different model depending on
    `eval_steps` and on the installed transformers (SST-2 quickstart: 86.24% on 4.57, 85.44% on 5.x).
    With the generators restored, training follows the same path on both stacks."""
    import torch

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        cpu = torch.random.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        try:
            return evaluate(*args, **kwargs)
        finally:
            torch.random.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

    return wrapped


def version_specific_args(group_by_length: bool, warmup_ratio: float) -> dict[str, Any]:
    """TrainingArguments that transformers 5 renamed: group_by_length became
    train_sampling_strategy, and warmup_ratio became a float warmup_steps."""
    import inspect

    from transformers import TrainingArguments

    params = inspect.signature(TrainingArguments.__init__).parameters
    kw: dict[str, Any] = {}
    if "warmup_ratio" in params:
        kw["warmup_ratio"] = warmup_ratio
    else:
        kw["warmup_steps"] = float(warmup_ratio)  # a float in [0, 1) is a ratio of the steps
    if "group_by_length" in params:
        kw["group_by_length"] = group_by_length
    elif group_by_length:
        kw["train_sampling_strategy"] = "group_by_length"
    return kw


def world() -> tuple[int, int]:
    """(rank, world size) as the launchers (torchrun, accelerate launch, deepspeed) set them
    in the environment; read before the Trainer starts the process group, because the
    per-device batch size must be known to build TrainingArguments."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def per_device_batch(batch_size: int, world_size: int) -> int:
    """The recipe's batch_size is the global batch; each process takes an equal share."""
    if batch_size % world_size:
        near = [n for n in (batch_size - batch_size % world_size, batch_size + world_size - batch_size % world_size) if n > 0]
        raise RecipeError(
            f"recipe.training.batch_size: {batch_size} is the global batch and does not split evenly over {world_size} processes; "
            f"set it to a multiple of {world_size} ({' or '.join(map(str, near))}) or launch a number of processes that divides "
            f"{batch_size}"
        )
    return batch_size // world_size


def check_launcher(device: str) -> None:
    """accelerate refuses FSDP without an accelerator, with a traceback from deep inside the
    Trainer; say it in one line before loading anything."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") and device != "cuda":
        raise RecipeError(
            f"accelerate launch: FSDP needs CUDA GPUs and this run is on the {device}; "
            "on CPUs launch with torchrun or --config_file recipes/accelerate/ddp.yaml"
        )


def drop_incomplete_checkpoints(ckpt_dir: Path) -> list[str]:
    """Remove the checkpoints a crash or Ctrl-C cut short while they were saved, and name them.
    The Trainer writes trainer_state.json last, and resumes from the highest-numbered folder
    whatever it holds: a partial one would fail every later run until deleted by hand."""
    cut = sorted(p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and not (p / "trainer_state.json").is_file())
    for p in cut:
        shutil.rmtree(p)
    return [p.name for p in cut]


def train_key(recipe: Any) -> str:
    """Settings, the data's content and the starting weights' content: not how paths are spelled."""
    weights = model_hash(resolve_model_path(recipe.model.path)) if recipe.model.path is not None else None
    section = get_task(recipe.task).recipe_section  # the task's own section (an instruct prompt) shapes the training data too
    own = (section[0],) if section and getattr(recipe, section[0], None) is not None else ()
    return make_key("train", recipe.section_hash("task", "model", "data", "method", "training", *own), fingerprint(recipe.data), weights)


def total_steps(t: Any, examples: int, device_batch: int, world_size: int) -> int:
    """Optimizer steps the Trainer will take (AdaLoRA schedules its rank budget on it)."""
    import math

    if t.max_steps:
        return t.max_steps
    per_epoch = max(1, math.ceil(math.ceil(examples / (device_batch * world_size)) / t.gradient_accumulation_steps))
    return max(1, math.ceil(t.epochs * per_epoch))


def trainable_parameters(model: Any) -> dict[str, float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}


def train(recipe: Any, output: str | Path, quiet: bool = False, trainer_class: Any = None, key: str | None = None) -> StageRecord | None:
    """Fine-tune per the recipe and write the model (or adapter) directory to `output`.
    `ftexport distill` passes its own Trainer subclass (a different loss) and stage key."""
    t = recipe.training
    rank, world_size = world()
    try:  # what is wrong with the launch is the same on every rank
        device_batch = per_device_batch(t.batch_size, world_size)
        device = resolve_device(t.device)
        check_launcher(device)
    except RecipeError:
        if rank != 0:
            raise SystemExit(2) from None  # rank 0 says why: one line, not one per process
        raise
    if rank != 0:
        progress.set_quiet(True)  # rank 0 reports for all; N copies of each line help no one
        quiet = True

    import torch
    import transformers
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    task = get_task(recipe.task)
    if recipe.method.name == "none":  # no training: the pretrained model is the stage's output
        return keep_pretrained(recipe, Path(output), task, key or train_key(recipe))
    flags = precision_flags(t.mixed_precision, device)
    data = task.training_data(recipe)
    dev = data.get("validation")
    if t.early_stopping_patience and dev is None:
        raise RecipeError("recipe.training.early_stopping_patience: needs a dev split; set data.validation")
    output = Path(output)
    key = key or train_key(recipe)
    scratch_dir = output.parent / f".{output.name}.scratch"
    if recipe.model.scratch is not None:  # a random-init model (the task builds it): the "pretrained" model, built here
        if world_size > 1:  # every rank would build (and delete) the same folder
            raise RecipeError(
                "recipe.model.scratch: train a scratch model in one process (ranks would race on building it); run `ftexport train` "
                "without a launcher"
            )

        progress.step(f"train: building a random-init model {recipe.model.scratch.config} and a tokenizer from the train split")
        shutil.rmtree(scratch_dir, ignore_errors=True)
        base = task.build_scratch(recipe.model.scratch, data["train"].texts, recipe.model.max_length, scratch_dir).resolve()
    else:
        base = model_folder(recipe.model.path).resolve()
    check_model_dir(base)

    tokenizer = task.prepare_tokenizer(load_tokenizer(base))
    progress.step(
        f"train: {len(data['train'])} examples"
        + (f", labels {data.label_names}" if task.labelled else "")
        + f", method {recipe.method.name}, device {device}"
        + (f", {world_size} processes x batch {device_batch}" if world_size > 1 else "")
    )
    transformers.set_seed(t.seed)
    model = task.load_model(base, data.label_names, recipe.model.trust_remote_code)
    max_len = recipe.model.max_length
    check_positions(recipe.method, model.config, max_len)
    if t.dropout is not None:
        dropout_override(model, t.dropout)
    model = apply_method(model, recipe.method, task, total_steps(t, len(data["train"]), device_batch, world_size))
    params = trainable_parameters(model)
    progress.info(
        f"{recipe.method.name}: trainable parameters {params['trainable']:,} of {params['total']:,} ({100 * params['share']:.2f}%)"
    )

    context = {"recipe": recipe, "label_names": data.label_names}  # what a task's dataset may read beyond the split
    train_ds = task.dataset(tokenizer, data["train"].inputs, data["train"].labels, max_len, **context)
    dev_ds = task.dataset(tokenizer, dev.inputs, dev.labels, max_len, **context) if dev is not None else None

    compute_metrics = task.compute_metrics(data.label_names)
    best_metric, greater_is_better = task.best_metric(t.metric)
    # Checkpoints live beside the stage (not inside its temp dir) so an interrupted run resumes.
    ckpt_dir = output.parent / f".{output.name}.checkpoints"

    evaluating = dev_ds is not None
    # AdaLoRA saves each checkpoint pruned to that moment's ranks, which cannot be loaded back
    # into the model (its ranks moved on): no mid-run checkpoints, so no best-checkpoint
    # reload and no resume; the recipe refuses early stopping for it (recipe.py).
    checkpoints = recipe.method.name != "adalora"
    strategy = ("steps" if t.eval_steps else "epoch") if evaluating else "no"
    cuda = device == "cuda"
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        per_device_train_batch_size=device_batch,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_type=t.scheduler,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        eval_strategy=strategy,
        eval_steps=t.eval_steps,
        save_strategy=(strategy if evaluating else "steps") if checkpoints else "no",
        save_steps=t.eval_steps or 500,
        save_total_limit=2,
        load_best_model_at_end=evaluating and checkpoints,
        metric_for_best_model=best_metric if evaluating else None,
        greater_is_better=greater_is_better,
        logging_steps=10,
        report_to="none",
        disable_tqdm=quiet,
        use_cpu=not cuda,
        dataloader_num_workers=t.dataloader_workers,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        tf32=None,  # not process-wide: TF32 is on inside trainer.train() alone (below)
        # NCCL has no CPU tensors; None lets accelerate pick (NCCL on GPUs, or what its config says).
        ddp_backend="gloo" if world_size > 1 and not cuda else None,
        **flags,
        **version_specific_args(cuda if t.group_by_length is None else t.group_by_length, t.warmup_ratio),
    )
    if args.world_size != world_size:  # a launcher that does not set WORLD_SIZE would silently change the batch
        raise RecipeError(
            f"ftexport train: the environment says WORLD_SIZE={world_size} but torch.distributed has {args.world_size} processes; "
            "launch with torchrun or accelerate launch"
        )
    state = getattr(args, "distributed_state", None)  # the process group the Trainer will use, now initialized
    if world_size > 1:
        atexit.unregister(_close_process_group)  # once per process, however many train() calls
        atexit.register(_close_process_group)
    if args.process_index == 0:
        if ckpt_dir.exists() and (ckpt_dir / "KEY").is_file() and (ckpt_dir / "KEY").read_text() != key:
            shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / "KEY").write_text(key)
        for cut in drop_incomplete_checkpoints(ckpt_dir):
            progress.info(f"train: {cut} was cut short (no trainer_state.json: a crash or Ctrl-C while saving); resuming without it")
    _barrier(state)  # every rank must see the same checkpoints to agree on resuming
    resume = ckpt_dir.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpt_dir.iterdir())

    callbacks: list[Any] = [EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience)] if t.early_stopping_patience else []
    callbacks.append(evaluate_last_step())
    if recipe.method.name == "adalora":
        callbacks.append(adalora_callback())
    trainer = (trainer_class or task.trainer_class(base) or Trainer)(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        data_collator=task.collator(tokenizer, t.padding, max_len),
        processing_class=tokenizer,
        compute_metrics=compute_metrics if evaluating and compute_metrics else None,
        callbacks=callbacks,
    )
    trainer.evaluate = rng_neutral(trainer.evaluate)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not quiet:
        trainer.add_callback(_progress_callback())
    tf32 = tf32_wanted(device)
    with cuda_matmul_precision("tf32") if tf32 else nullcontext():
        result = trainer.train(resume_from_checkpoint=True if resume else None)
    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "steps": result.global_step,
        "trainable_parameters": params,
        "resumed": resume,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "precision": "bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "fp32",
        "tf32": tf32,
        "optimizer": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
        "padding": t.padding,
        "group_by_length": bool(cuda if t.group_by_length is None else t.group_by_length),
    }
    if evaluating:
        ev = trainer.evaluate()
        metrics.update({k.removeprefix("eval_"): v for k, v in ev.items() if k.startswith("eval_") and isinstance(v, float)})
        metrics = task.eval_metrics(metrics)
    progress.info(
        f"trained {result.global_step} steps in {metrics['train_runtime_s']:.0f}s "
        f"({metrics['train_samples_per_second']:.1f} samples/s)"
        + (f", dev {t.metric} {metrics.get(t.metric, float('nan')):.4f}" if evaluating else "")
    )

    # Under FSDP/DeepSpeed the weights are sharded: every rank takes part in gathering them,
    # then rank 0 alone writes the stage directory (one writer, so no race on the rename).
    sharded = world_size > 1 or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    state_dict = trainer.accelerator.get_state_dict(trainer.model) if sharded else None
    if args.process_index != 0:
        _barrier(state)  # wait until rank 0 has renamed the stage into place
        return None
    with stage_dir(output) as tmp:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))
        task.save_extras(base, tmp)
        StageRecord(
            "train",
            key,
            inputs={"base_model": str(base), "data": fingerprint(recipe.data)},
            settings={"method": recipe.method.model_dump(), "training": t.model_dump(), "max_length": max_len},
            metrics=metrics,
            method=recipe.method.name,
            base_model="scratch" if recipe.model.scratch is not None else str(base),
            labels=data.label_names,
            task=recipe.task,
            max_length=max_len,
            trust_remote_code=recipe.model.trust_remote_code,
        ).write(tmp)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    shutil.rmtree(scratch_dir, ignore_errors=True)
    _barrier(state)
    return read_record(output)


def keep_pretrained(recipe: Any, output: Path, task: Any, key: str) -> StageRecord | None:
    """method none: the pretrained model, checked and linked into the stage folder as it is
    (a sentence-embedding model exported without fine-tuning, or an already fine-tuned model)."""
    base = model_folder(recipe.model.path).resolve()
    check_model_dir(base)
    task.prepare_tokenizer(load_tokenizer(base))
    labels = reference_labels(base) if task.labelled else []
    if task.labelled and not labels:
        raise RecipeError(
            f"recipe.method.name: none keeps {base} as it is, and its config.json names no labels (id2label); "
            "fine-tune it with another method"
        )
    progress.step(f"train: method none, {base.name} kept as it is (no training)")
    with stage_dir(output) as tmp:
        link_tree(base, tmp, skip=("ftexport.json",))
        StageRecord(
            "train",
            key,
            inputs={"base_model": str(base)},
            settings={"method": recipe.method.model_dump(), "max_length": recipe.model.max_length},
            method="none",
            base_model=str(base),
            labels=labels,
            task=recipe.task,
            max_length=recipe.model.max_length,
            trust_remote_code=recipe.model.trust_remote_code,
        ).write(tmp)
    return read_record(output)


def _close_process_group() -> None:
    """Tear the process group down before the interpreter does: left to exit, gloo's threads
    can outlive it and abort the process ("terminate called without an active exception",
    exit -6) after a run that succeeded. Runs at exit, not after train(), because a second train()
    in the same process (distill's seeds) still needs the group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _barrier(state: Any) -> None:
    if state is not None and state.num_processes > 1:
        state.wait_for_everyone()
