"""The recipe schema: typed (pydantic), strict sections for every stage.

Values that name a plug-in (task, fine-tuning method, quantization mode, exporter, backend)
are checked against the plug-in registries, so a new plug-in is valid in a recipe as soon as
it is registered; settings a task does not support are refused by the task itself
(`Task.check_recipe`). The stages never import this module: they take its sections as plain
values, so a recipe is only one way to drive them (torchtune's components know no recipes).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from ftexport_runtime.engines import BACKENDS as RUNTIME_BACKENDS
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from ..core.errors import RecipeError
from ..core.gates import COMMON_GATE_FIELDS
from ..export import exporter_names
from ..export.quantize import mode_names
from ..judge.runners import BACKEND_PATTERN, BENCH_BACKENDS, backend_help
from ..tasks import DEFAULT_TASK, TASKS, get_task, task_names
from ..train.methods import METHODS


def _one_of(names: tuple[str, ...] | list[str]) -> Any:
    """A Literal of registered names: pydantic then says 'expected one of ...' for anything else."""
    return Literal[tuple(names)]  # type: ignore[valid-type]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ScratchModel(Section):
    """text-generation without downloadable weights: a randomly initialized GPT-2 built from
    these GPT2Config fields, with a byte-level BPE tokenizer trained on the train split."""

    vocab_size: int = Field(8000, ge=300, description="BPE vocabulary trained on data.train (special tokens included)")
    config: dict[str, Any] = Field(
        default_factory=lambda: {"n_layer": 4, "n_head": 4, "n_embd": 256},
        description="GPT2Config fields (n_layer, n_head, n_embd, ...); n_positions defaults to model.max_length",
    )
    seed: int = 0


class ModelSection(Section):
    path: str | None = Field(None, description="model directory, or package:NAME/dir for weights inside a Python package")
    max_length: int = Field(128, gt=1, description="tokens per text; longer texts are truncated")
    trust_remote_code: bool = False
    scratch: ScratchModel | None = Field(
        None, description="text-generation only: train a GPT-2 from random init instead of loading model.path"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        if (self.path is None) == (self.scratch is None):
            raise ValueError("give exactly one of model.path (pretrained weights) and model.scratch (random init, text-generation)")
        return self


class HubSource(Section):
    """Load the splits from the Hugging Face Hub instead of local files (needs network)."""

    dataset: str
    config: str | None = None
    splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"},
        description="ftexport split name -> hub split name",
    )


class DataSection(Section):
    root: str | None = Field(None, description="folder that relative split paths are resolved against")
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet", "disk", "conll"] = Field(
        "auto", description="auto: by suffix (.txt/.conll/.iob are CoNLL: one 'token TAG' per line, blank line between sentences)"
    )
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = Field(None, description="names for integer labels 0..K-1, or the allowed string labels")
    max_train_samples: int | None = Field(None, gt=0)
    max_eval_samples: int | None = Field(None, gt=0, description="rows of the validation split used during training")
    max_test_samples: int | None = Field(None, gt=0)
    sample_seed: int = 0
    dev_holdout: Literal["rows", "sentences"] = Field(
        "rows",
        description="rows: the validation split as it is; sentences: for sets that list every phrase of a sentence as a row "
        "(GLUE SST-2), dev keeps only the validation split's whole sentences and every training row that is a phrase of "
        "one of them leaves the training split, so dev scores sentences the model has not read in pieces (ftexport.data.phrases)",
    )
    bio: Literal["strict", "repair"] = Field(
        "strict",
        description="token-classification: an I-X that does not continue an X entity is an error (strict), "
        "or is read as B-X (repair: conlleval's rule)",
    )
    hub: HubSource | None = None

    @model_validator(mode="after")
    def _has_source(self) -> DataSection:
        if self.hub is None and self.test is None:
            raise ValueError("give local files (data.test, and data.train to train on) or a hub source (data.hub)")
        if self.dev_holdout == "sentences" and self.hub is None and (self.train is None or self.validation is None):
            raise ValueError("dev_holdout: sentences cuts dev out of data.validation and data.train; give both, or set dev_holdout: rows")
        return self

    def split_path(self, split: str) -> Path | None:
        value = getattr(self, split)
        if value is None:
            return None
        return Path(self.root) / value if self.root else Path(value)


class FreezeSection(Section):
    """Freezing strategies for method full or bitfit (adapter methods freeze the base anyway)."""

    embeddings: bool = Field(False, description="keep the embedding layer as pretrained")
    layers: int = Field(0, ge=0, description="keep the lowest N transformer layers as pretrained")


class MethodSection(Section):
    name: _one_of(METHODS) = Field(  # type: ignore[valid-type]
        "lora",
        description="full, bitfit (biases + head), lora, adalora, ia3 (merged into dense weights), prefix, prompt (exported unmerged)",
    )
    r: int = Field(8, gt=0, description="lora rank; adalora's initial rank")
    target_r: int = Field(4, gt=0, description="adalora: the average rank it prunes to")
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, description="module names to adapt (lora, adalora, ia3); default: every linear layer (ia3: peft's per-model default)"
    )
    feedforward_modules: list[str] | None = Field(None, description="ia3: which target_modules are feed-forward (scaled on their input)")
    num_virtual_tokens: int = Field(20, gt=0, description="prefix and prompt tuning: learned tokens per layer / input")
    freeze: FreezeSection = FreezeSection()

    @model_validator(mode="after")
    def _freeze_dense_only(self) -> MethodSection:
        if (self.freeze.embeddings or self.freeze.layers) and self.name not in ("full", "bitfit"):
            raise ValueError(f"freeze applies to method full or bitfit; {self.name} already trains only its adapter")
        return self


class TrainingSection(Section):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (overrides epochs)")
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(32, gt=0, description="global batch size: split evenly over the processes under torchrun or accelerate launch")
    eval_batch_size: int = Field(64, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    dropout: float | None = Field(None, ge=0, lt=1, description="override every dropout rate of the model (hidden, attention, classifier)")
    eval_steps: int | None = Field(None, gt=0, description="evaluate on the dev split every N steps (default: each epoch)")
    early_stopping_patience: int | None = Field(None, gt=0, description="stop after N evaluations without improvement")
    metric: _one_of(list(dict.fromkeys(m for t in TASKS.values() for m in t.metrics_computed))) = Field(  # type: ignore[valid-type]
        "accuracy",
        description="dev metric that picks the best checkpoint; f1 = entity-level F1 (token-classification); "
        "loss = the dev loss (lower is better; steadier than accuracy on a small dev split); "
        "perplexity (text-generation, lower is better)",
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="auto and no: fp32 (TF32 matmuls on Ampere+ GPUs); bf16 or fp16: autocast, CUDA only"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    group_by_length: bool | None = Field(
        None, description="batch texts of similar length together, so dynamic padding pads less (default: on with CUDA, off on the CPU)"
    )
    padding: Literal["longest", "max_length"] = Field(
        "longest", description="pad each batch to its longest text, or every text to model.max_length"
    )
    dataloader_workers: int = Field(0, ge=0)


class ExportSection(Section):
    opset: int = Field(17, ge=11, le=23, description="ONNX opset (the torch exporter's dynamo path, for decoders, writes 18 or newer)")
    exporter: _one_of(("auto", *exporter_names())) = Field(  # type: ignore[valid-type]
        "auto",
        description="optimum (Optimum's ONNX exporter, transformers<4.58), torch (torch.onnx, any transformers), or auto: "
        "Optimum where it can run here, else torch",
    )


class Calibration(Section):
    """Static int8: activation ranges measured on real texts before quantizing."""

    samples: int = Field(128, gt=0, description="texts drawn from the split to calibrate on")
    split: Literal["train", "validation"] = "train"
    method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="how a range is read from the observed activations")
    percentile: float = Field(99.999, gt=90, le=100, description="for method: percentile")


class AccuracyAware(Section):
    """When an int8 model misses the int8 gate, keep its most sensitive layers in fp32 and retry."""

    enabled: bool = False
    samples: int = Field(256, gt=0, description="validation texts on which sensitivity and the gate are measured")
    max_fp32_layers: int = Field(4, gt=0, description="give up after keeping this many layers in fp32")


class QuantizeSection(Section):
    modes: list[_one_of(mode_names())] = Field(  # type: ignore[valid-type]
        ["dynamic"],
        description="variants to add: dynamic (int8, activations scaled at run time), static (int8, calibrated), fp16 (GPU), "
        "int8-block (int8 weights and per-block int8 activations, MatMulNBits), int4 (4-bit weights, MatMulNBits); [] for none",
    )
    optimize: Literal["O1", "O2", "O3", "O4"] | None = Field(
        None, description="ORT graph optimization through Optimum before int8 (O1 basic, O2 + fusions, O3 + fast GELU; O4 = O3 + fp16, GPU)"
    )
    format: Literal["qdq", "qoperator"] = Field("qdq", description="static int8 graph format: QDQ (portable, feeds TensorRT) or QOperator")
    per_channel: bool = Field(
        True, description="one weight scale per output channel: on MiniLM it keeps top-1 agreement at 0.99 instead of 0.93"
    )
    reduce_range: bool = Field(False, description="7-bit weights, for old CPUs whose int8 kernels saturate; costs accuracy elsewhere")
    symmetric: bool = Field(
        False, description="static int8 with symmetric int8 activations (zero point 0): what TensorRT's int8 engines (export --trt) need"
    )
    calibration: Calibration = Calibration()
    accuracy_aware: AccuracyAware = AccuracyAware()


def _triple(v: Any) -> Any:
    """[min, opt, max] from a list or a "MIN,OPT,MAX" string."""
    if isinstance(v, str):
        try:
            v = [int(x) for x in v.split(",")]
        except ValueError:
            raise ValueError(f"expected MIN,OPT,MAX integers, got {v!r}") from None
    if v is not None and (len(v) != 3 or not 1 <= v[0] <= v[1] <= v[2]):
        raise ValueError(f"expected [min, opt, max] with 1 <= min <= opt <= max, got {v}")
    return v


class TensorRTSection(Section):
    """TensorRT engines (`ftexport export --trt`), built on the machine that will run them."""

    enabled: bool = Field(False, description="`ftexport run` builds engines after quantize (needs TensorRT 10 and a GPU)")
    precisions: list[Literal["fp16", "int8", "fp32"]] = Field(
        ["fp16"],
        description="engines to build: fp16 from the fp32 ONNX model; int8 from the static symmetric QDQ variant (quantize.symmetric)",
    )
    batch: tuple[int, int, int] = Field((1, 1, 64), description="optimization profile batch [min, opt, max]")
    seq: tuple[int, int, int] | None = Field(
        None, description="profile tokens [min, opt, max] (default: 1, the median and the longest training text rounded up to 32)"
    )
    on_longer: Literal["error", "truncate"] = Field(
        "error", description="a text over the profile's max tokens: refuse it, or cut it to the max"
    )
    workspace_gib: float = Field(4.0, gt=0, description="builder workspace memory")

    _check_triples = field_validator("batch", "seq", mode="before")(classmethod(lambda cls, v: _triple(v)))


def _gate_model() -> type[Section]:
    """The thresholds one precision must pass: the common fields plus those of every registered
    task (entity agreement, greedy match...); a task refuses the fields it does not measure."""
    fields: dict[str, Any] = {}
    for f in COMMON_GATE_FIELDS + tuple(f for t in TASKS.values() for f in t.gate_fields):
        fields.setdefault(f.name, (float | None, Field(None, ge=f.ge, le=f.le, description=f.description)))
    common = {f.name for f in COMMON_GATE_FIELDS}

    def task_fields_set(self: Any) -> list[str]:
        """The task-specific thresholds this gate sets."""
        return [n for n in type(self).model_fields if n not in common and getattr(self, n) is not None]

    model = create_model(
        "Gate", __base__=Section, __doc__="Pass/fail thresholds for one precision; a field left out is not checked.", **fields
    )
    model.task_fields_set = task_fields_set  # type: ignore[attr-defined]
    return model


Gate = _gate_model()


class GenerationCheck(Section):
    """text-generation parity: prompts cut from held-out texts, greedy continuations compared."""

    prompts: int = Field(32, gt=0, description="held-out texts whose first prompt_tokens tokens are prompts")
    prompt_tokens: int = Field(8, gt=0)
    new_tokens: int = Field(20, gt=0, description="greedy tokens generated per prompt")
    perplexity_texts: int | None = Field(None, gt=0, description="held-out texts scored for perplexity (default: the whole split)")


class ValidateSection(Section):
    split: Literal["test", "validation"] = "test"
    batch_size: int = Field(64, gt=0)
    generation: GenerationCheck = GenerationCheck()
    backends: list[_one_of(list(RUNTIME_BACKENDS))] = Field(
        ["cpu"], description="run every variant on each; a GPU backend that falls back to CPU fails"
    )  # type: ignore[valid-type]
    fp32: Gate = Gate(max_logit_diff=1e-3, min_agreement=0.999)
    fp16: Gate = Gate(min_agreement=0.995, max_accuracy_drop=0.005)
    int8: Gate = Gate(min_agreement=0.97, max_accuracy_drop=0.01)
    int4: Gate = Gate(max_accuracy_drop=0.01)

    def gates(self) -> dict[str, Gate]:
        return {"fp32": self.fp32, "fp16": self.fp16, "int8": self.int8, "int4": self.int4}


def _layer_indices(v: list[int], also: str = "") -> list[int]:
    """A list of encoder layers to keep: non-empty, distinct, none negative."""
    if not v or len(set(v)) != len(v) or any(i < 0 for i in v):
        raise ValueError(f"expected {also}a non-empty list of distinct layer indices >= 0, got {v}")
    return v


class FromTeacher(Section):
    """A student cut from the teacher: the same model with only some encoder layers."""

    layers: Literal["every_other"] | list[int] = Field(
        "every_other", description="encoder layers of the teacher to keep: every_other (0, 2, 4, ...) or a list of indices"
    )

    @field_validator("layers")
    @classmethod
    def _indices(cls, v: Any) -> Any:
        return _layer_indices(v, "every_other or ") if isinstance(v, list) else v


class StudentSection(Section):
    from_teacher: FromTeacher | None = Field(
        None, description="cut the student from the teacher; without it the student is model.path (a smaller pretrained model)"
    )
    layers: list[int] | None = Field(
        None,
        description="keep only these encoder layers of model.path, e.g. [0, 2, 4] of a 6-layer model: a smaller student with "
        "the pretrained weights of the layers kept",
    )

    @field_validator("layers")
    @classmethod
    def _distinct(cls, v: Any) -> Any:
        return _layer_indices(v) if v is not None else v

    @model_validator(mode="after")
    def _one_source(self) -> StudentSection:
        if self.layers is not None and self.from_teacher is not None:
            raise ValueError(
                "layers cuts model.path and from_teacher cuts the teacher: give one (from_teacher: {layers: [...]} to cut the teacher)"
            )
        return self


# Optional fields added after recipes were already being run: left unset, they leave a stage's
# settings hash as it was, so upgrading ftexport does not retrain finished stages.
ADDED_UNSET = (
    ("distill", "unlabeled"),
    ("distill", "seeds"),
    ("distill", "student.layers"),
    ("distill", "augment"),
    ("distill", "teacher_outputs"),
    ("distill", "soft_loss", "kl"),
    ("distill", "ship", "first"),
    ("data", "dev_holdout", "rows"),
)


class UnlabeledSection(Section):
    """A transfer set: texts without labels that the teacher labels for the student. Where
    labels are few and texts many, this is what distillation can use and plain fine-tuning
    cannot."""

    path: str = Field(
        description="a file of texts (csv, tsv, jsonl, parquet...), relative to data.root; its labels, if any, are never read"
    )
    text_column: str | None = Field(None, description="column holding the texts (default: data.text_column)")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = "auto"
    max_samples: int | None = Field(None, gt=0, description="a random sample of this many texts (data.sample_seed)")
    skip_training_texts: bool = Field(True, description="leave out texts that are also in the labelled training split (and duplicates)")


class AugmentSection(Section):
    """Synthetic transfer texts made from the labelled training texts (TinyBERT-style data
    augmentation, without a masked LM): two training texts joined by a connective (", but",
    ", although"...: the mixed sentences where a teacher's soft targets say most), one training
    text with some of its words swapped for near neighbours in the student's word embeddings
    (TinyBERT's word replacement, with embedding neighbours standing in for its masked LM), or
    one longer training text with some words dropped. Only the teacher labels them; the baseline
    never sees them."""

    texts: int = Field(gt=0, description="how many synthetic texts to make")
    join: float = Field(0.5, ge=0, le=1, description="share made by joining two training texts")
    replace: float = Field(
        0.0, ge=0, le=1, description="share made by swapping words for embedding neighbours; the rest (1 - join - replace) drop words"
    )
    replace_words: float = Field(0.4, gt=0, le=1, description="chance that each replaceable word of such a text is swapped (one at least)")
    neighbours: int = Field(15, ge=1, description="a swapped word becomes one of its this many nearest whole words (input embeddings)")
    drop: float = Field(0.15, gt=0, lt=1, description="share of words dropped from a text (at least one)")
    min_words: int = Field(4, ge=2, description="only training texts of at least this many words are used")
    seed: int = Field(0, description="seed of the random choices: the same seed, the same texts")

    @model_validator(mode="after")
    def _shares_fit(self) -> AugmentSection:
        if self.join + self.replace > 1:
            raise ValueError(f"augment.join + augment.replace is {self.join + self.replace:g}; the two shares must add up to at most 1")
        return self


class DistillSection(Section):
    """Knowledge distillation: train the recipe's model (the student) to match a teacher."""

    teacher: str | None = Field(
        None, description="the teacher's model directory (save_pretrained, e.g. a merged fine-tune), or package:NAME/dir"
    )
    teacher_outputs: str | None = Field(
        None,
        description="instead of teacher: a file of the teacher's logits on the recipe's texts "
        "(`ftexport distill RECIPE --save-teacher-outputs FILE`); the teacher model is then not needed",
    )
    student: StudentSection = StudentSection()
    alpha: float = Field(0.5, ge=0, le=1, description="weight of cross-entropy on the labels; 1 - alpha goes to the teacher's soft targets")
    temperature: float = Field(2.0, gt=0, description="softens both distributions before their KL divergence (scaled by T^2)")
    soft_loss: Literal["kl", "mse"] = Field(
        "kl",
        description="how the student copies the teacher: kl, the KL divergence of the softened distributions (Hinton et al.); "
        "mse, the squared error between the raw logits (Tang et al. 2019; temperature is not used)",
    )
    hidden_mse: float = Field(
        0.0,
        ge=0,
        description="weight of an MSE between the student's and teacher's last [CLS] hidden states "
        "(through a learned projection when widths differ); one vector per text, so it works at either level; 0 = off",
    )
    level: Literal["token", "text"] = Field(
        "token",
        description="token: teacher and student share a tokenizer (checked); text: the teacher reads each text with its own tokenizer",
    )
    baseline: bool = Field(True, description="also fine-tune the same student without the teacher (same settings, seed), for the report")
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="train student (and baseline) once per seed and report each and the mean; `ship` says which seed's student "
        "is the output (default: [training.seed])",
    )
    ship: Literal["first", "best_dev"] = Field(
        "first",
        description="which seed's student is the output: first (the first of seeds) or best_dev (the best dev score of its kept "
        "checkpoint, training.metric; a tie goes to the earlier seed); chosen on dev, never on the test split",
    )
    unlabeled: UnlabeledSection | None = Field(
        None,
        description="extra texts the teacher labels: the student learns from its soft targets there (no cross-entropy); "
        "the baseline never sees them",
    )
    augment: AugmentSection | None = Field(
        None, description="synthetic transfer texts made from the training texts, labelled by the teacher like unlabeled's"
    )

    @model_validator(mode="after")
    def _transfer_needs_the_teacher(self) -> DistillSection:
        if (self.teacher is None) == (self.teacher_outputs is None):
            raise ValueError(
                "give the teacher as distill.teacher (a model folder) or distill.teacher_outputs (a file of its logits), "
                + ("not both" if self.teacher else "one of them")
            )
        if self.teacher is None:
            needs = "student.from_teacher" if self.student.from_teacher is not None else "hidden_mse" if self.hidden_mse else None
            if needs:
                raise ValueError(f"{needs} needs the teacher model, and teacher_outputs holds only its logits: set distill.teacher instead")
        if self.soft_loss == "mse" and "temperature" in self.model_fields_set:
            raise ValueError("distill.temperature is not used with soft_loss: mse (raw logits are compared); remove it")
        for name in ("unlabeled", "augment"):
            if getattr(self, name) is not None and self.alpha == 1 and self.hidden_mse == 0:
                raise ValueError(
                    f"distill.{name} needs alpha < 1 or hidden_mse > 0: with alpha 1 the teacher's soft targets weigh nothing, "
                    "and unlabeled texts have nothing else to learn from"
                )
        return self


DEFAULT_BATCH_SIZES = [1, 8, 32]
DEFAULT_SEQ_LENS = [16, 64, 128, 256]
HEADLINE_SEQ_LEN = 128


class BenchSection(Section):
    batch_sizes: list[int] = Field(DEFAULT_BATCH_SIZES, description="grid of batch sizes")
    seq_len: int | None = Field(
        None, gt=1, description="the headline sequence length (the run's closing table); alone, the whole grid is this one length"
    )
    seq_lens: list[int] | None = Field(
        None, description="grid of sequence lengths (default: 16, 64, 128, 256 up to the model's max_length, or [seq_len])"
    )
    traffic: Literal["fixed", "real", "both"] = Field(
        "both", description="fixed: texts cut to exactly each seq_len; real: held-out texts as they come (dynamic padding); both"
    )
    warmup: int = Field(5, ge=0)
    iterations: int = Field(50, gt=0, description="timed calls per cell, split over the repeats")
    repeats: int = Field(
        3, ge=1, description="timing rounds per cell, backends interleaved; the spread of their p50s is the reported noise"
    )
    max_seconds: float | None = Field(None, gt=0, description="time budget per cell: stop timing a cell early once it is spent")
    threads: int | None = Field(None, gt=0, description="threads for every backend (default: physical cores)")
    cold_start: bool = Field(True, description="per backend, in a fresh process: start to first prediction, and peak RSS per cell")
    parity_tolerance: float = Field(
        0.1,
        ge=0,
        le=1,
        description="largest mean |difference| of class probabilities to the baseline (over the cell's texts) "
        "before a cell is refused a speed figure",
    )
    backends: list[str] = Field(
        list(BENCH_BACKENDS),
        description=backend_help() + "; ones this machine or bundle lacks are skipped with the reason",
    )

    @field_validator("backends")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.match(BACKEND_PATTERN, name):
                raise ValueError(f"unknown backend {name!r}; use {backend_help()} (e.g. ort-int8, ort-cuda-fp16, trt-fp16)")
        if not v:
            raise ValueError("expected at least one backend")
        return list(dict.fromkeys(v))

    @field_validator("batch_sizes", "seq_lens")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(b <= 0 for b in v)):
            raise ValueError(f"expected a non-empty list of positive sizes, got {v}")
        return v

    def grid_seq_lens(self, max_length: int | None = None) -> list[int]:
        """The grid's lengths. Explicit ones are kept as given (too long is an error for the
        caller to report); the default grid stops at the model's max_length."""
        if self.seq_lens or self.seq_len:
            return list(dict.fromkeys(self.seq_lens or [self.seq_len]))  # type: ignore[list-item]
        fits = [n for n in DEFAULT_SEQ_LENS if max_length is None or n <= max_length]
        return fits or [max_length]  # type: ignore[list-item]

    def headline_seq_len(self, max_length: int | None = None) -> int:
        grid = self.grid_seq_lens(max_length)
        want = self.seq_len or HEADLINE_SEQ_LEN
        return want if want in grid else min(grid, key=lambda n: abs(n - want))


class _Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: _one_of(task_names()) = DEFAULT_TASK  # type: ignore[valid-type]
    model: ModelSection
    data: DataSection
    method: MethodSection = MethodSection()
    training: TrainingSection = TrainingSection()
    export: ExportSection = ExportSection()
    quantize: QuantizeSection = QuantizeSection()
    validate_: ValidateSection = Field(ValidateSection(), alias="validate")
    bench: BenchSection = BenchSection()
    tensorrt: TensorRTSection = TensorRTSection()
    distill: DistillSection | None = Field(
        None, description="distil a teacher into the model (the student); `ftexport run` then distils instead of training"
    )
    output: str | None = Field(None, description="pipeline folder (default: runs/NAME)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _adalora_has_no_checkpoints(self) -> Recipe:
        if self.method.name == "adalora" and self.training.early_stopping_patience:
            raise ValueError(
                "training.early_stopping_patience: adalora cannot reload a mid-run checkpoint (its pruned ranks change shape), "
                "so it trains to the end; remove early_stopping_patience or use lora"
            )
        return self

    @model_validator(mode="after")
    def _training_data(self) -> Recipe:
        if self.data.hub is None and self.data.train is None and self.method.name != "none" and self.model.scratch is None:
            raise ValueError(
                "data.train: required to train; give the training split, or method: {name: none} to keep the pretrained model as it is"
            )
        if self.data.hub is None and self.data.train is None and self.model.scratch is not None:
            raise ValueError("data.train: a model.scratch model is built and trained on the training split; give data.train")
        return self

    @model_validator(mode="after")
    def _task_settings(self) -> Recipe:
        """Settings the task does not support fail here, before any work (a metric the task
        does not compute would otherwise fail at the first evaluation, minutes in)."""
        for owner in TASKS.values():
            if owner.recipe_section and owner.name != self.task and getattr(self, owner.recipe_section[0], None) is not None:
                raise RecipeError(f"recipe.{owner.recipe_section[0]}: a section of task {owner.name}; remove it, or set task: {owner.name}")
        get_task(self.task).check_recipe(self)
        return self

    @model_validator(mode="after")
    def _trt_int8_needs_symmetric(self) -> Recipe:
        if (
            self.tensorrt.enabled
            and "int8" in self.tensorrt.precisions
            and not ("static" in self.quantize.modes and self.quantize.symmetric)
        ):
            raise ValueError(
                "tensorrt.precisions: an int8 engine is built from the static symmetric QDQ model; "
                "add static to quantize.modes and set quantize.symmetric: true"
            )
        return self

    @model_validator(mode="after")
    def _distill_trains_everything(self) -> Recipe:
        if self.distill is not None and self.method.name != "full":
            raise ValueError("distillation trains the whole student; set method: {name: full} (LoRA students are not supported)")
        return self

    def output_dir(self) -> Path:
        return Path(self.output or f"runs/{self.name}")

    def section_hash(self, *names: str) -> str:
        """Stable hash of some sections: a stage's settings, for resuming `ftexport run`. Fields
        that say where a file lies (data.root, the split paths, model.path, the teacher's and the
        transfer set's paths) are left out: stage keys hash those files' contents instead, so
        the same data reached through another spelling of its path keeps the key."""
        dump = self.model_dump(mode="json", by_alias=True)
        for section, key, *default in ADDED_UNSET:  # a field added later hashes like its absence while at its default
            where = _parent(dump, section, key)
            if where is not None and where.get(key.split(".")[-1]) == (default[0] if default else None):
                where.pop(key.split(".")[-1], None)
        for section, key in PATH_FIELDS:
            where = _parent(dump, section, key)
            if where is not None:
                where.pop(key.split(".")[-1], None)
        blob = json.dumps({n: dump[n] for n in names}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def unlabeled_path(self) -> Path:
        """The transfer set's file (distill.unlabeled.path, relative to data.root)."""
        u = self.distill.unlabeled if self.distill else None
        assert u is not None
        return Path(self.data.root) / u.path if self.data.root else Path(u.path)


def _with_task_sections(base: type[Section]) -> type[Section]:
    """The recipe: the common sections plus each task's own (text-generation's `instruct`...),
    each optional, so a task brings its settings in its own folder."""
    extra = {
        name: (model | None, Field(None, description=model.__doc__.strip().splitlines()[0] if model.__doc__ else None))
        for name, model in (t.recipe_section for t in TASKS.values() if t.recipe_section)
    }
    return create_model("Recipe", __base__=base, __module__=__name__, **extra)


Recipe = _with_task_sections(_Recipe)


# Where-is-it fields, left out of settings hashes (their files' contents are hashed instead).
def _parent(dump: dict[str, Any], section: str, key: str) -> dict[str, Any] | None:
    """The dict holding the dotted `key` of `section` in a recipe dump, or None."""
    where = dump.get(section)
    for part in key.split(".")[:-1]:
        where = where.get(part) if isinstance(where, dict) else None
    return where if isinstance(where, dict) else None


PATH_FIELDS = (
    ("data", "root"),
    ("data", "train"),
    ("data", "validation"),
    ("data", "test"),
    ("model", "path"),
    ("distill", "teacher"),
    ("distill", "teacher_outputs"),
    ("distill", "unlabeled.path"),
)
