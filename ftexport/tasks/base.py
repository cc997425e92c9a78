"""The interface every task implements: what stages ask a task instead of comparing its name.

A task is one object (a `Task` subclass) registered under its name. Stages call
`get_task(name)` and then only these attributes and methods:

- capabilities, read by the recipe checks and the stages: which quantization modes, graph
  optimization, accuracy-aware int8, TensorRT engines, Triton export, distillation, traced
  prefix/prompt adapters and scratch models it supports; which training metrics it computes;
  which extra gate fields its parity results carry;
- training hooks (model class, tokenization, collator, metrics) for `ftexport train`;
- export hooks: the Optimum task name and extra manifest sections (a decoder's KV-cache layout);
- judging hooks: a `ParityCase` (the PyTorch reference on the held-out split and the compare
  function for a variant), a `BenchProbe` (the cells to time and how each backend answers),
  and the report tables;
- the runtime head that serves it (`head`), which the runtime picks by the manifest's task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..core.errors import ModelError, RecipeError
from ..core.gates import COMMON_GATE_FIELDS, GateField

QUANTIZE_MODES = ("dynamic", "static", "fp16", "int8-block")


@dataclass
class Cell:
    """One benchmark cell: every backend gets these same batches, in this order."""

    batch: int
    seq_len: int | str  # "real": held-out texts as they come, padded per batch
    batches: list[Any]  # batches of inputs (texts, or token ids for a decoder)
    tokens: float  # mean padded length of a batch
    check_batches: list[Any] | None = None  # what the parity check reads, when more than the timed batches

    @property
    def parity_batches(self) -> list[Any]:
        return self.check_batches or self.batches


@dataclass
class Calls:
    """How one backend answers a cell's batch: `check` gives outputs to compare with the
    baseline before timing; `phases` are the calls timed (one per phase: "" for a single one)."""

    check: Any  # Callable[[batch], outputs]
    phases: dict[str, Any] = field(default_factory=dict)  # phase -> Callable[[batch], Any]


@dataclass
class OnnxSpec:
    """What the torch exporter traces for a task: a module whose positional arguments are the
    graph's inputs, example arguments, the input and output names, the dynamic axes, and
    whether to use the dynamo exporter (torch.export) or the TorchScript one."""

    module: Any
    args: tuple[Any, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]  # TorchScript exporter: input/output name -> {axis: name}
    dynamic_shapes: Any = None  # dynamo exporter: torch.export.Dim per argument
    dynamo: bool = False


class BenchProbe:
    """What `ftexport bench` times for a task. The engine builds the runners (PyTorch, ONNX
    Runtime, TensorRT, plain Optimum) and asks the probe how each answers and what to compare."""

    cold_start: bool = True  # measure start-to-first-answer in a fresh process
    scores_accuracy: bool = False  # `accuracy` scores labelled texts (bench --accuracy)

    def check(self, section: Any, max_length: int) -> None:
        """Refuse settings the bundle cannot take (a length over its max_length), before any model loads."""

    def headline(self, section: Any, max_length: int, cells: list[Cell]) -> tuple[int, list[int]]:
        """The headline sequence length (the run's closing table) and the batch sizes timed."""
        return section.headline_seq_len(max_length), list(section.batch_sizes)

    def skip(self, kind: str, device: str) -> str | None:
        """Why this task is not timed on a backend kind (pytorch, pytorch-compile, optimum, ort, trt), or None."""
        return None

    def cells(self, section: Any, predictor: Any, pool: list[str] | None, notes: list[str]) -> list[Cell]:
        raise NotImplementedError

    def ort(self, predictor: Any) -> Calls:
        raise NotImplementedError

    def torch(self, model: Any, tokenizer: Any, max_length: int, device: str, model_dir: Path | None = None) -> Calls:
        raise NotImplementedError

    def iterations(self, phase: str, section: Any) -> tuple[int, int]:
        """(warm-up calls, timed calls) of a phase over all rounds."""
        return section.warmup, section.iterations

    def accuracy(self, outputs: list[Any], labels: list[int]) -> float:
        """Accuracy of a backend's `check` outputs (one per batch of texts) against the labels."""
        raise NotImplementedError

    def agree(self, reference: Any, outputs: Any, tolerance: float) -> tuple[bool, dict[str, Any]]:
        """Whether a backend's outputs match the baseline's closely enough to be timed, and the
        figures that say so."""
        raise NotImplementedError

    def finish(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Derived rows from the timed ones (each row still holds its raw times under "_times")."""
        return rows

    def report_fields(self, section: Any, max_length: int) -> dict[str, Any]:
        """Task-specific fields of bench.json (grid, traffic...)."""
        return {}


class ParityCase:
    """The PyTorch reference on the held-out split, and how a variant is compared with it.
    Built by `Task.parity_case`; the parity engine runs `score` for every (variant, backend)."""

    metric: str = "accuracy"  # the task score that min_accuracy and max_accuracy_drop judge
    reference: dict[str, Any]  # the reference's scores, for the report
    details: dict[str, Any]  # task-specific header fields of parity.json
    split: str
    examples: int
    labels: list[str]

    @property
    def reference_metric(self) -> float:
        return float(self.reference[self.metric])

    def score(self, predictor: Any) -> dict[str, Any]:
        """Run the variant and measure it against the reference; raise `Incomparable` when the
        variant cannot be compared at all (its result is then a failed gate)."""
        raise NotImplementedError

    def summary(self, result: dict[str, Any]) -> str:
        """One progress line of a variant's result."""
        raise NotImplementedError

    def gate(self, precision: str, gates: dict[str, Any]) -> Any:
        """The gate a variant of this precision must pass (a task may add defaults)."""
        return gates.get(precision) or _EmptyGate()


class _EmptyGate:
    def __getattr__(self, name: str) -> None:
        return None


class with_defaults:  # noqa: N801 - reads like a function at the call site
    """A gate with some thresholds filled in where the recipe left them unset."""

    def __init__(self, gate: Any, **defaults: Any):
        self._gate, self._defaults = gate, defaults

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._gate, name, None)
        return self._defaults.get(name) if value is None else value


class Incomparable(Exception):
    """A variant whose outputs cannot be compared with the reference (e.g. other words kept)."""


class Task:
    """Base class: defaults for an encoder whose answer is one label per text."""

    name: ClassVar[str]
    head: ClassVar[str]  # the runtime head that serves the bundle (ftexport_runtime.heads)
    optimum_task: ClassVar[str]  # Optimum's export task name
    peft_task_type: ClassVar[str]
    output_name: ClassVar[str] = "logits"
    output_axes: ClassVar[dict[int, str]] = {0: "batch_size"}  # the output's dynamic axes (torch exporter)
    labelled: ClassVar[bool] = True  # data: a label column (False: texts only)
    example: ClassVar[str] = "a wonderful, moving film"  # the `try:` line after `ftexport run`
    # capabilities
    # training.metric values; loss = the dev loss (lower is better), the steadiest choice on a small dev split
    metrics_computed: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "loss")
    forced_metric: ClassVar[str | None] = None  # a task scored one way only (language models: perplexity)
    quantize_modes: ClassVar[tuple[str, ...]] = QUANTIZE_MODES
    graph_optimization: ClassVar[bool] = True  # quantize.optimize O1-O4
    accuracy_aware: ClassVar[bool] = False
    tensorrt: ClassVar[bool] = True
    triton: ClassVar[bool] = False
    distill: ClassVar[bool] = False
    traced_adapters: ClassVar[bool] = False  # prefix / prompt tuning, exported by tracing the peft model
    scratch: ClassVar[bool] = False  # model.scratch: a random-init model built from a config
    plain_optimum: ClassVar[bool] = False  # bench's optimum-int8 row (ORTModelForSequenceClassification)
    gate_fields: ClassVar[tuple[GateField, ...]] = ()  # thresholds beyond the common ones
    recipe_section: ClassVar[tuple[str, Any] | None] = None  # (name, pydantic model) of the task's own recipe section
    lora_exclude: ClassVar[list[str] | None] = None  # modules peft's all-linear must leave out
    measured_gates: ClassVar[tuple[str, ...] | None] = None  # gate fields its results carry (None: all of them)
    default_gates: ClassVar[dict[str, dict[str, float]]] = {}  # precision -> thresholds, where the recipe sets none
    summary_keys: ClassVar[tuple[str, ...]] = ()  # variant result keys the bundle's manifest keeps
    reference_keys: ClassVar[tuple[str, ...]] = ()  # reference scores the bundle's manifest keeps

    # ---- recipe ---------------------------------------------------------------------------

    def check_recipe(self, recipe: Any) -> None:
        """Settings this task does not support fail here, before any work, in one line."""
        t, q = recipe.training, recipe.quantize
        if self.forced_metric:
            if "metric" in t.model_fields_set and t.metric != self.forced_metric:
                raise RecipeError(f"recipe.training.metric: {self.name} is scored by {self.forced_metric}, not {t.metric}")
            t.metric = self.forced_metric
        elif t.metric not in self.metrics_computed:
            raise RecipeError(
                f"recipe: training.metric {t.metric!r} is not computed for task {self.name}; use one of {', '.join(self.metrics_computed)}"
            )
        if recipe.model.scratch is not None:
            if not self.scratch:
                raise RecipeError(f"recipe.model.scratch: random-init models are not built for task {self.name}; give model.path")
            if recipe.method.name != "full":
                raise RecipeError(
                    f"recipe.method.name: a model.scratch model starts from random weights; train it with method 'full' "
                    f"({recipe.method.name} needs pretrained weights)"
                )
        if recipe.method.name in ("prefix", "prompt") and not self.traced_adapters:
            raise RecipeError(
                f"recipe.method.name: {recipe.method.name} tuning exports (virtual tokens traced into the graph) for "
                f"text-classification only; for {self.name} use lora, adalora, ia3, bitfit or full"
            )
        unsupported = [m for m in q.modes if m not in self.quantize_modes] + (
            [f"optimize {q.optimize}"] if q.optimize and not self.graph_optimization else []
        )
        if unsupported or (q.accuracy_aware.enabled and not self.accuracy_aware):
            what = ", ".join(unsupported) or "accuracy_aware"
            raise RecipeError(
                f"recipe.quantize: {self.name} takes the quantization modes {', '.join(self.quantize_modes)}"
                f"{'' if self.graph_optimization else ' and no graph optimization'} (not {what})"
            )
        if recipe.tensorrt.enabled and not self.tensorrt:
            raise RecipeError(f"recipe.tensorrt.enabled: TensorRT engines are not built for {self.name} bundles; they run on ONNX Runtime")
        if recipe.distill is not None and not self.distill:
            raise RecipeError(
                f"recipe.distill: distillation distils one label per text (task: text-classification); task {self.name} "
                "is not supported, train it with `ftexport train` instead"
            )
        v = recipe.validate_
        for precision, gate in v.gates().items():
            if precision in v.model_fields_set:
                continue  # the recipe set this gate; it is checked below
            if precision in self.default_gates:  # left at ftexport's default: the task's own default instead
                setattr(v, precision, type(gate)(**self.default_gates[precision]))
            elif self.measured_gates is not None:  # a default this task's results cannot be held to
                setattr(v, precision, type(gate)())
        own = {f.name for f in self.gate_fields}
        for precision, gate in v.gates().items():
            for other in gate.task_fields_set():
                if other not in own:
                    raise RecipeError(f"recipe.validate.{precision}.{other}: {self.name} does not measure this; remove it")
            if self.measured_gates is not None:
                unmeasured = [f for f in type(gate).model_fields if getattr(gate, f) is not None and f not in self.measured_gates]
                if unmeasured:
                    raise RecipeError(
                        f"recipe.validate.{precision}.{unmeasured[0]}: {self.name} does not measure this; "
                        f"its gates are {', '.join(self.measured_gates)}"
                    )

    def all_gate_fields(self) -> tuple[GateField, ...]:
        return COMMON_GATE_FIELDS + self.gate_fields

    def parity_settings(self, recipe: Any) -> Any:
        """Settings of the recipe that this task's parity check reads, beyond the data, split,
        gates and backends (a pydantic model or None; part of the validate stage's key)."""
        return None

    # ---- training -------------------------------------------------------------------------

    def auto_model_class(self) -> Any:
        raise NotImplementedError

    def load_model(self, path: str | Path, label_names: list[str], trust_remote_code: bool = False) -> Any:
        return self.auto_model_class().from_pretrained(
            str(path),
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            ignore_mismatched_sizes=True,  # a classifier (or tagger) with another label set gets a fresh head
            trust_remote_code=trust_remote_code,
        )

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        return tokenizer

    def best_metric(self, metric: str) -> tuple[str, bool]:
        return metric, metric != "loss"  # accuracy or F1: higher is better; the dev loss: lower

    def eval_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics

    def build_scratch(self, scratch: Any, texts: list[str], max_length: int, out: Path) -> Path:
        raise RecipeError(f"recipe.model.scratch: not supported for task {self.name}")

    def training_data(self, recipe: Any) -> Any:
        """The training and dev splits (`ftexport train`)."""
        from ..data import load_data

        return load_data(recipe.data, ("train", "validation"), labelled=self.labelled)

    def trainer_class(self, model_dir: Path) -> Any:
        """A Trainer subclass when the task trains with its own loss (None: transformers' Trainer)."""
        return None

    def save_extras(self, model_dir: Path, out: Path) -> None:
        """Files beside the weights that later stages need (copied from the starting model)."""

    # ---- export ---------------------------------------------------------------------------

    def load_for_export(self, model_dir: Path, trust_remote_code: bool = False) -> Any:
        """The model as the torch exporter traces it: eager attention (the matmul/softmax
        pattern ONNX Runtime's optimizer fuses into its Attention op), eval mode."""
        cls = self.auto_model_class()
        try:
            model = cls.from_pretrained(str(model_dir), attn_implementation="eager", trust_remote_code=trust_remote_code)
        except (TypeError, ValueError):  # an architecture without the eager/sdpa choice
            model = cls.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
        return model.eval()

    def onnx_module(self, model: Any, tokenizer: Any) -> OnnxSpec:
        """An encoder: the tokenizer's inputs in, `output_name` out, dynamic batch and
        sequence axes; the model itself traced with TorchScript (inputs as keyword arguments,
        in its forward's order), as Optimum does, so the graph, its node and weight names are
        the ones ONNX Runtime's transformer optimizer and the int8 tools expect."""
        import inspect

        order = list(inspect.signature(model.forward).parameters)
        names = sorted((n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")), key=order.index)
        sample = tokenizer(["a short text here", "a somewhat longer text to pad the other one"], padding=True, return_tensors="pt")
        axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
        model.config.return_dict = True
        return OnnxSpec(
            model.eval(), ({n: sample[n] for n in names},), names, [self.output_name], {**axes, self.output_name: dict(self.output_axes)}
        )

    def manifest_extras(self, model_dir: Path, model_file: Path, config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
        """Extra manifest sections the runtime's head needs (a decoder's cache layout, an
        embedding's dimension and pooling)."""
        return {}

    def check_reference_labels(self, reference_labels: list[str], bundle_labels: list[str]) -> None:
        if self.labelled and reference_labels and reference_labels != bundle_labels:
            raise ModelError(
                f"reference model labels {reference_labels} differ from the bundle's {bundle_labels}; "
                "compare the model the bundle was exported from"
            )

    # ---- judging --------------------------------------------------------------------------

    def parity_case(self, bundle: Any, reference_dir: Path, data: Any, split: str, batch_size: int, settings: Any) -> ParityCase:
        raise NotImplementedError

    def bench_probe(self) -> BenchProbe:
        raise NotImplementedError

    def parity_table(self, report: Any) -> str:
        raise NotImplementedError

    def bench_table(self, report: Any) -> str:
        raise NotImplementedError

    def summary_table(self, parity: Any, bench: Any) -> str:
        raise NotImplementedError

    def try_hint(self, bundle: Path) -> str:
        return f'ftexport-runtime predict {bundle} "{self.example}"'


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
