"""`ftexport run`: chain the stages of a recipe, each into its own directory under the
recipe's output folder, skipping a stage whose artifact is already there with the same key
(same inputs, same settings), so a failed run resumes where it stopped.

    runs/NAME/train      adapter (or full model)   ftexport train
    runs/NAME/distill    student (distill recipes) ftexport distill, instead of train
    runs/NAME/merged     dense model               ftexport merge
    runs/NAME/onnx       bundle, fp32              ftexport export
    runs/NAME/quantized  bundle, fp32 + int8       ftexport quantize
    runs/NAME/trt        bundle + TensorRT engines ftexport export --trt (recipe tensorrt.enabled)
    runs/NAME/parity     parity.json / .md         ftexport validate
    runs/NAME/bench      bench.json / .md          ftexport bench
    runs/NAME/bundle     the final bundle          ftexport pack
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core import progress
from .core.artifacts import is_fresh
from .core.errors import GateFailed, RecipeError
from .core.reports import BenchReport, ParityReport
from .export import resolve_exporter
from .export import tensorrt as trt_mod
from .export.quantize import quantize, quantize_key
from .export.stage import export, export_key
from .judge import bench as bench_mod
from .judge import parity as parity_mod
from .recipe import Recipe
from .ship.pack import pack, pack_key
from .tasks import get_task
from .train.distill import distill, distill_key
from .train.merge import merge, merge_key
from .train.trainer import train, train_key

STAGES = ("train", "merge", "export", "quantize", "validate", "bench", "pack")  # a default run; distill and tensorrt when the recipe asks
DIRS = {
    "train": "train",
    "distill": "distill",
    "merge": "merged",
    "export": "onnx",
    "quantize": "quantized",
    "tensorrt": "trt",
    "validate": "parity",
    "bench": "bench",
    "pack": "bundle",
}


@dataclass
class RunResult:
    root: Path
    bundle: Path
    task: Any
    parity: ParityReport | None = None
    bench: BenchReport | None = None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        return self.task.summary_table(self.parity, self.bench) if self.parity is not None else ""


def stage_dirs(recipe: Recipe) -> dict[str, Path]:
    root = recipe.output_dir()
    return {s: root / d for s, d in DIRS.items()}


def run(recipe: Recipe, force: bool = False, stop_after: str | None = None) -> RunResult:
    """Run every stage (or up to `stop_after`); raise GateFailed when parity fails."""
    d = stage_dirs(recipe)
    task = get_task(recipe.task)
    resolve_exporter(recipe.export.exporter, task)  # an exporter this environment lacks fails before training, not after
    result = RunResult(recipe.output_dir(), d["pack"], task)
    quantizing = bool(recipe.quantize.modes or recipe.quantize.optimize)
    bundle_dir = d["quantize"] if quantizing else d["export"]
    gates = recipe.validate_.gates()
    rebuilt = force  # once a stage runs, every later one runs: keys hash settings, not outputs

    first = "distill" if recipe.distill is not None else "train"  # a distill recipe trains its student by distillation
    stop_after = first if stop_after in ("train", "distill") else stop_after
    plan: list[tuple[str, Callable[[], str], Callable[[], Any]]] = [
        (
            first,
            lambda: distill_key(recipe) if first == "distill" else train_key(recipe),
            lambda: (
                distill(recipe, d[first], quiet=progress.quiet())
                if first == "distill"
                else train(recipe, d["train"], quiet=progress.quiet())
            ),
        ),
        ("merge", lambda: merge_key(d[first]), lambda: merge(d[first], d["merge"])),
        (
            "export",
            lambda: export_key(d["merge"], recipe.export.opset, None, resolve_exporter(recipe.export.exporter, task).name),
            lambda: export(
                d["merge"], d["export"], recipe.export.opset, name=recipe.name, exporter=recipe.export.exporter, task_name=recipe.task
            ),
        ),
    ]
    if quantizing:
        q = recipe.quantize
        plan.append(
            (
                "quantize",
                lambda: quantize_key(d["export"], q, recipe.data, gates["int8"]),
                lambda: quantize(d["export"], d["quantize"], q, recipe.data, gates["int8"]),
            )
        )
    trt = recipe.tensorrt
    if trt.enabled:
        trt_mod.require_tensorrt()  # before training, not after an hour of it
        upstream, bundle_dir = bundle_dir, d["tensorrt"]
        texts = (lambda: trt_mod.training_texts(recipe.data)) if trt.seq is None else (lambda: None)
        settings = trt_mod.settings_of(trt.precisions, trt.batch, trt.seq, trt.on_longer, trt.workspace_gib)
        plan.append(
            (
                "tensorrt",
                lambda: trt_mod.engines_key(upstream, settings),
                lambda: trt_mod.build_engines(
                    upstream, d["tensorrt"], trt.precisions, texts(), trt.batch, trt.seq, trt.on_longer, trt.workspace_gib
                ),
            )
        )
    v = recipe.validate_
    own = task.parity_settings(recipe)  # the task's own parity settings (a decoder's greedy check), part of the key
    plan += [
        (
            "validate",
            lambda: parity_mod.validate_key(bundle_dir, d["merge"], recipe.data, v.split, gates, v.backends, own, v.batch_size),
            lambda: parity_mod.validate(
                bundle_dir, d["merge"], recipe.data, gates, d["validate"], v.split, v.batch_size, v.backends, settings=own
            ),
        ),
        (
            "bench",
            lambda: bench_mod.bench_key(bundle_dir, d["merge"], recipe.bench),
            lambda: bench_mod.bench(
                bundle_dir,
                d["merge"],
                recipe.bench,
                d["bench"],
                bench_mod.held_out_texts(recipe.data, task.labelled),
                ParityReport.load(d["validate"]),
            ),
        ),
        (
            "pack",
            lambda: pack_key(bundle_dir, d["validate"], d["bench"], False),
            lambda: pack(bundle_dir, d["pack"], d["validate"], d["bench"]),
        ),
    ]
    stages = [stage for stage, _, _ in plan]
    if stop_after is not None and stop_after not in stages:
        how = {"quantize": "give quantize.modes or quantize.optimize", "tensorrt": "set tensorrt.enabled: true"}
        raise RecipeError(
            f"--stop-after {stop_after}: recipe {recipe.name!r} has no {stop_after} stage"
            + (f" ({how[stop_after]} to add one)" if stop_after in how else "")
            + f"; its stages: {', '.join(stages)}"
        )
    for stage, key, action in plan:
        if not rebuilt and is_fresh(d[stage], key()):
            progress.step(f"{stage}: up to date, skipped ({d[stage]})")
            result.skipped.append(stage)
        else:
            t0 = time.monotonic()
            action()
            result.seconds[stage] = time.monotonic() - t0
            result.ran.append(stage)
            rebuilt = True
        if stage == "validate":
            result.parity = ParityReport.load(d["validate"])
            if not result.parity.passed:
                raise GateFailed(
                    f"validate: parity gate failed ({'; '.join(result.parity.failures())}); report in {d['validate']}/parity.md",
                    result.parity,
                )
        if stage == "bench":
            result.bench = BenchReport.load(d["bench"])
        if stage == stop_after:
            break
    return result
