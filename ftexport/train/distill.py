"""`ftexport distill`: train a small student to copy a fine-tuned teacher.

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))
           (soft_loss: mse puts the mean squared error of the raw logits, MSE(s, t), in the KL's place)
           [+ hidden_mse * MSE(proj(student [CLS]), teacher [CLS])]

The teacher runs once, over the training split, before training starts; its logits (and
[CLS] states when hidden_mse is on) are cached in $FTEXPORT_CACHE/distill (default
~/.cache/ftexport), one file per piece of texts (training split, transfer file, synthetic
texts), keyed by the teacher's files and the piece's texts, so every student of that teacher
reuses them; they reach the student as extra dataset columns. Training itself is
`ftexport train` (train.train) with a Trainer subclass for the loss, so checkpoints, resume,
seeds and launchers behave the same. With `baseline: true` the same student is also
fine-tuned without the teacher (same settings, same seed), and distill.md compares teacher,
student and baseline on the held-out split, with each one's PyTorch latency.

Work files live in a hidden sibling `.OUTPUT.work/` (the cut student, the two training runs
per seed); each piece is keyed, so a re-run with a new alpha reuses the teacher's
logits and the baseline.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..core import progress
from ..core.artifacts import StageRecord, is_fresh, link_tree, make_key, read_record, stage_dir, unlinked
from ..core.errors import ModelError, RecipeError
from ..core.hf import cache_root, check_model_dir, load_tokenizer, model_folder, model_hash, predict_logits
from ..core.machine import machine_info
from ..core.tables import markdown_table
from ..core.timing import cycle, summarize, time_calls
from ..data import fingerprint, load_data, read_table
from ..data.phrases import outside
from ..tasks import get_task
from ..tasks.encoder import torch_probs
from .teacher_outputs import TeacherOutputs, save_npz, save_teacher_outputs
from .trainer import train

LATENCY_BATCHES = (1, 8)


# ---- the loss -----------------------------------------------------------------------------

UNLABELED = -100  # the label of a transfer-set text: the Trainer's and torch's "ignore" index


def distillation_loss(
    student_logits: Any, teacher_logits: Any, labels: Any, alpha: float, temperature: float, soft_loss: str = "kl"
) -> Any:
    """alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T), averaged over the batch.
    T^2 keeps the soft term's gradients on the same scale whatever T is (Hinton et al. 2015).
    soft_loss "mse" replaces the KL term by the mean squared error between the raw logits
    (over rows and classes; Tang et al. 2019), which also copies how sure the teacher is.
    Rows labelled UNLABELED (transfer-set texts) count in the soft term only; the CE term is the
    mean over the labelled rows (0 in a batch without any)."""
    import torch.nn.functional as F

    # the mean over labelled rows, without a device sync: 0 (not NaN) for a batch without any
    labelled = (labels != UNLABELED).sum()
    ce = F.cross_entropy(student_logits, labels, ignore_index=UNLABELED, reduction="sum") / labelled.clamp(min=1)
    teacher_logits = teacher_logits.to(student_logits.dtype)
    if soft_loss == "mse":
        return alpha * ce + (1 - alpha) * F.mse_loss(student_logits, teacher_logits)
    log_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    return alpha * ce + (1 - alpha) * temperature**2 * kl


def soft_term(soft_loss: str, temperature: float) -> str:
    """How the settings name the soft term, for the progress line and distill.md."""
    return "logit MSE" if soft_loss == "mse" else f"T {temperature}"


class WithTeacher:
    """The tokenized training split (then the transfer set, if any) plus, per row, the
    teacher's cached outputs."""

    def __init__(self, parts: list[Any], logits: np.ndarray, hidden: np.ndarray | None):
        self.parts = [p for p in parts if len(p)]
        rows = sum(len(p) for p in self.parts)
        if rows != len(logits):
            raise ModelError(f"distill: {len(logits)} cached teacher outputs for {rows} training rows; delete the .work folder and re-run")
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.logits, self.hidden = logits, hidden

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        item = dict(self.parts[part][i - int(self.starts[part])])
        item["teacher_logits"] = self.logits[i]
        if self.hidden is not None:
            item["teacher_hidden"] = self.hidden[i]
        return item


class TeacherCollator:
    """Pads the tokens with the usual collator and stacks the teacher columns beside them."""

    KEYS = ("teacher_logits", "teacher_hidden")

    def __init__(self, base: Any):
        self.base = base

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        extra = {k: torch.tensor(np.stack([f.pop(k) for f in features])) for k in self.KEYS if k in features[0]}
        batch = self.base(features)
        batch.update(extra)
        return batch


def distill_trainer_class(
    settings: Any, logits: np.ndarray, hidden: np.ndarray | None, unlabeled: tuple[Any, list[str], int] | None = None
) -> Any:
    """A Trainer whose loss is the distillation loss; evaluation (no teacher columns) is plain CE.
    `unlabeled` = (task, texts, max_length): transfer-set texts appended to the training
    split, labelled UNLABELED; `logits` (and `hidden`) cover the training rows, then these."""
    from torch import nn
    from transformers import Trainer

    class DistillTrainer(Trainer):
        def __init__(self, *args: Any, **kwargs: Any):
            parts = [kwargs["train_dataset"]]
            if unlabeled is not None:
                task, texts, max_length = unlabeled
                parts.append(task.dataset(kwargs["processing_class"], texts, [UNLABELED] * len(texts), max_length))
            kwargs["train_dataset"] = WithTeacher(parts, logits, hidden)
            kwargs["data_collator"] = TeacherCollator(kwargs["data_collator"])
            kwargs["args"].remove_unused_columns = False  # else the Trainer drops the teacher columns
            model = kwargs["model"]
            if hidden is not None:
                # A submodule of the student so the optimizer trains it and checkpoints keep it;
                # removed before the student is saved (see train()).
                width = model.config.hidden_size
                model.distill_projection = nn.Linear(width, hidden.shape[1]) if width != hidden.shape[1] else nn.Identity()
            super().__init__(*args, **kwargs)
            # compute_loss returns a batch mean: let the Trainer scale it for gradient accumulation
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any) -> Any:
            teacher = inputs.pop("teacher_logits", None)
            teacher_hidden = inputs.pop("teacher_hidden", None)
            labels = inputs.pop("labels")
            out = model(**inputs, output_hidden_states=teacher_hidden is not None)
            if teacher is None:
                import torch.nn.functional as F

                loss = F.cross_entropy(out.logits, labels)  # evaluation: the dev split is labelled
            else:
                loss = distillation_loss(out.logits, teacher, labels, settings.alpha, settings.temperature, settings.soft_loss)
            if teacher_hidden is not None:
                import torch.nn.functional as F

                projected = self.accelerator.unwrap_model(model).distill_projection(out.hidden_states[-1][:, 0])
                loss = loss + settings.hidden_mse * F.mse_loss(projected, teacher_hidden.to(projected.dtype))
            return (loss, out) if return_outputs else loss

        def train(self, *args: Any, **kwargs: Any) -> Any:
            result = super().train(*args, **kwargs)
            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "distill_projection"):
                del model.distill_projection  # training-only: the saved student is a plain classifier
            return result

    return DistillTrainer


# ---- teacher and student ------------------------------------------------------------------


def _layer_list(model: Any) -> Any:
    from torch import nn

    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    return layers if isinstance(layers, nn.ModuleList) else None


# Where a student's layers are cut from: the teacher (student.from_teacher) or model.path (student.layers).
CUT_FROM = {"teacher": "recipe.distill.student.from_teacher.layers", "model.path": "recipe.distill.student.layers"}


def kept_layers(spec: Any, n: int, source: str = "teacher") -> list[int]:
    where = CUT_FROM[source]
    keep = list(range(0, n, 2)) if spec == "every_other" else list(spec)
    bad = [i for i in keep if i >= n]
    if bad:
        raise RecipeError(f"{where}: the {source} model has {n} layers (0..{n - 1}); {bad} do not exist")
    if len(keep) == n:
        raise RecipeError(f"{where}: {keep} keeps all {n} layers; a student must drop some")
    return keep


def cut_student(source_dir: Path, layers: Any, output: Path, trust_remote_code: bool = False, source: str = "teacher") -> list[int]:
    """Save the source model (the teacher, or model.path) with only the kept encoder layers
    (weights copied, in order) to `output`. A head the source lacks (a pretrained encoder such
    as all-MiniLM-L6-v2) is not saved: training draws it with each seed, as it does for an
    uncut model.path, rather than every seed sharing one draw made here. The cut is the same
    bytes on every run (the draws it does make are seeded)."""
    import torch
    from torch import nn
    from transformers import AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(source_dir), trust_remote_code=trust_remote_code, output_loading_info=True
        )
    prefix = f"{model.base_model_prefix}."
    headless = any(not k.startswith(prefix) for k in info["missing_keys"])
    stack = _layer_list(model)
    if stack is None:
        raise ModelError(
            f"{CUT_FROM[source]}: {model.config.model_type} has no BERT-style encoder.layer list to cut; "
            "use a BERT-like model, or give a smaller pretrained student in model.path"
        )
    keep = kept_layers(layers, len(stack), source)
    model.base_model.encoder.layer = nn.ModuleList([stack[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    with stage_dir(output) as tmp:
        (model.base_model if headless else model).save_pretrained(str(tmp))
        load_tokenizer(source_dir, "recipe.distill.teacher" if source == "teacher" else "model.path").save_pretrained(str(tmp))
        (tmp / "ftexport.json").write_text(json.dumps({"stage": "distill-student", "key": output.name, "layers": keep}) + "\n")
    return keep


def check_compatible(recipe: Any, teacher_dir: Path | None, student_dir: Path, outputs: TeacherOutputs | None = None) -> None:
    """Refuse, before any work, a teacher whose labels or (at token level) tokens differ. A
    teacher given by its outputs file is checked against that file's label names and length."""
    from transformers import AutoConfig

    d = recipe.distill
    assert d is not None
    if d.student.layers is not None:
        student_config = AutoConfig.from_pretrained(str(student_dir), trust_remote_code=recipe.model.trust_remote_code)
        kept_layers(d.student.layers, student_config.num_hidden_layers, "model.path")
    # data.label_names is optional: without it the labels are the training split's, sorted, as training maps them
    labels = list(recipe.data.label_names or load_data(recipe.data, ("train",)).label_names)
    if teacher_dir is None:
        assert outputs is not None
        outputs.check(labels, recipe.model.max_length)
        return
    check_model_dir(teacher_dir, "recipe.distill.teacher")
    config = AutoConfig.from_pretrained(str(teacher_dir), trust_remote_code=recipe.model.trust_remote_code)
    names = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else []
    generic = all(n == f"LABEL_{i}" for i, n in enumerate(names))
    if labels and not generic and names != list(labels):
        raise RecipeError(
            f"recipe.distill.teacher: the teacher predicts {names}, the recipe's labels are {list(labels)}; the label lists must match in "
            f"order"
        )
    if labels and config.num_labels != len(labels):
        raise RecipeError(
            f"recipe.distill.teacher: the teacher has {config.num_labels} outputs, the recipe {len(labels)} labels; use a teacher "
            f"fine-tuned on these labels"
        )
    if d.student.from_teacher is not None:
        kept_layers(d.student.from_teacher.layers, config.num_hidden_layers)
    if d.level == "token":
        t_vocab = load_tokenizer(teacher_dir, "recipe.distill.teacher").get_vocab()
        s_vocab = load_tokenizer(student_dir).get_vocab()
        if t_vocab != s_vocab:
            differ = len(set(t_vocab.items()) ^ set(s_vocab.items()))
            raise RecipeError(
                f"recipe.distill.level: teacher {teacher_dir} and student {student_dir} have different tokenizers "
                f"({len(t_vocab)} vs {len(s_vocab)} entries, {differ} differ); token-level distillation needs the same tokens: "
                "set distill.level: text to have the teacher read each text with its own tokenizer"
            )


def teacher_outputs(
    teacher_dir: Path, texts: list[str], max_length: int, with_hidden: bool, batch_size: int = 64, trust_remote_code: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher logits (and last-layer [CLS] states) for `texts`, read with the teacher's own
    tokenizer, in inference mode, shortest texts batched together (less padding)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tok = load_tokenizer(teacher_dir, "recipe.distill.teacher")
    model = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir), trust_remote_code=trust_remote_code).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    logits = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    hidden = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32) if with_hidden else None
    report_every = max(1, len(texts) // batch_size // 5)
    with torch.inference_mode():
        for n, start in enumerate(range(0, len(texts), batch_size)):
            if n and n % report_every == 0:
                progress.info(f"teacher: {start} of {len(texts)} texts")
            rows = order[start : start + batch_size]
            enc = tok([texts[i] for i in rows], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            out = model(**enc, output_hidden_states=with_hidden)
            logits[rows] = out.logits.float().numpy()
            if hidden is not None:
                hidden[rows] = out.hidden_states[-1][:, 0].float().numpy()
    return logits, hidden


def teacher_pieces(
    teacher_dir: Path,
    pieces: dict[str, list[str]],
    key: tuple[Any, ...],
    work: Path,
    legacy: str,
    trust_remote_code: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Path], bool]:
    """The teacher's outputs on each piece of texts (training split, transfer file, synthetic
    texts), in that order, each cached on its own in $FTEXPORT_CACHE/distill, keyed by the
    teacher (`key`: hash, max_length, with hidden states) and the piece's texts: every student
    of that teacher, and every recipe that adds or changes one piece, reuses the others. A
    student without hidden_mse also reads a piece's logits from the file a hidden_mse run left.
    Returns (logits, hidden, {piece: its cache file}, whether everything came from cache).

    Before pieces, one file held the training and transfer texts together, teacher-`legacy`.npz
    (its key: teacher, data fingerprint, max_length, hidden states, transfer key); found in the
    work folder or the cache, it is split into its pieces once."""
    t_hash, max_len, with_hidden = key
    named = {p: texts for p, texts in pieces.items() if texts}

    def cache_file(texts: list[str]) -> Path:
        """The piece's own file; without hidden states, a hidden_mse run's file when only that
        one exists (the same logits, [CLS] states beside)."""
        own, richer = (cache_root() / "distill" / f"teacher-{make_key(t_hash, texts, max_len, h)}.npz" for h in (with_hidden, True))
        return richer if not own.is_file() and richer.is_file() else own

    files = {p: cache_file(texts) for p, texts in named.items()}
    old = next((c for c in (work / f"teacher-{legacy}.npz", cache_root() / "distill" / f"teacher-{legacy}.npz") if c.is_file()), None)
    n_old = len(pieces["training"]) + len(pieces.get("transfer", []))
    if old is not None and not all(f.is_file() for p, f in files.items() if p in ("training", "transfer")):
        z = np.load(old)
        if len(z["logits"]) == n_old and (not with_hidden or "hidden" in z):
            start = 0
            for p in ("training", "transfer"):
                if p in named:
                    rows = slice(start, start + len(named[p]))
                    _save_npz(files[p], z["logits"][rows], z["hidden"][rows] if with_hidden else None)
                    start += len(named[p])
    got: list[tuple[np.ndarray, np.ndarray | None]] = []
    cached = True
    for p, texts in named.items():
        f = files[p]
        if f.is_file():
            progress.step(f"distill: teacher outputs on the {len(texts)} {p} texts from the cache ({f.name})")
            z = np.load(f)
            got.append((z["logits"], z["hidden"] if with_hidden else None))
        else:
            cached = False
            progress.step(f"distill: teacher {teacher_dir.name} reads the {len(texts)} {p} texts (once)")
            out = teacher_outputs(teacher_dir, texts, max_len, with_hidden, trust_remote_code=trust_remote_code)
            _save_npz(f, *out)
            got.append(out)
        if len(got[-1][0]) != len(texts):
            raise ModelError(f"distill: the teacher cache {f} holds {len(got[-1][0])} rows, not {len(texts)}; delete it and re-run")
    logits = np.concatenate([g[0] for g in got])
    hidden = np.concatenate([g[1] for g in got]) if with_hidden else None  # type: ignore[misc]
    return logits, hidden, files, cached


def _save_npz(path: Path, logits: np.ndarray, hidden: np.ndarray | None) -> None:
    save_npz(path, logits=logits, **({"hidden": hidden} if hidden is not None else {}))


# ---- the transfer set ---------------------------------------------------------------------


def load_unlabeled(recipe: Any, train_texts: list[str], held_out: Iterable[str] = ()) -> list[str]:
    """The texts of distill.unlabeled: read from its file (the text column only), empty and
    duplicate texts dropped, those of the held-out splits always (`held_out`: the dev rows
    that choose checkpoints and the test rows that are reported; a teacher's answers on them
    would leak into both), and (skip_training_texts) those already in the labelled training
    split; then a seeded sample of max_samples."""
    u = recipe.distill.unlabeled  # type: ignore[union-attr]
    assert u is not None
    path, column = recipe.unlabeled_path(), u.text_column or recipe.data.text_column
    where = "distill.unlabeled"
    df = read_table(path, u.format, columns=(column, "label"), section=where)
    if column not in df.columns:
        raise RecipeError(
            f"recipe.{where}: {path} has no column {column!r} (it has: {', '.join(map(str, df.columns[:10]))}); set {where}.text_column"
        )
    seen = set(held_out) | (set(train_texts) if u.skip_training_texts else set())
    texts = []
    for t in df[column].tolist():
        if isinstance(t, str) and t.strip() and t not in seen:
            seen.add(t)
            texts.append(t)
    if not texts:
        raise RecipeError(
            f"recipe.{where}: {path} has no texts left in column {column!r}"
            + (" once those of the training split are left out (skip_training_texts)" if u.skip_training_texts else "")
        )
    if u.max_samples is not None and u.max_samples < len(texts):
        rng = np.random.default_rng(recipe.data.sample_seed)
        texts = [texts[i] for i in sorted(rng.choice(len(texts), u.max_samples, replace=False))]
    return texts


CONNECTIVES = (", but", ", and", ", although", ", yet", "; however ,", ", even though", ", while", ", because", ", so", "and")


def word_neighbours(vocab: list[str], vectors: np.ndarray, words: Iterable[str], k: int) -> dict[str, list[str]]:
    """Each of `words` that is a whole word of `vocab` (one token, letters only, 2+ characters)
    -> its k nearest such words by cosine of their rows in `vectors` (a model's input
    embeddings). Similarities are rounded to 4 decimals and ties go to the lower token id, so
    another CPU's last bits pick the same neighbours (the teacher-outputs file is keyed by text)."""
    ids = [i for i, w in enumerate(vocab) if len(w) > 1 and w.isalpha()]
    whole = {vocab[i]: n for n, i in enumerate(ids)}
    unit = vectors[ids].astype(np.float64)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    asked = sorted({w for w in words if w in whole}, key=whole.__getitem__)
    out: dict[str, list[str]] = {}
    for start in range(0, len(asked), 1024):  # a block of rows at a time: the full table would not fit
        block = asked[start : start + 1024]
        rows = [whole[w] for w in block]
        sims = np.round(unit[rows] @ unit.T, 4)
        sims[np.arange(len(rows)), rows] = -np.inf  # never a word's own neighbour
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        for w, row in zip(block, order):
            out[w] = [vocab[ids[j]] for j in row]
    return out


def embedding_neighbours(model_dir: Path, words: Iterable[str], k: int) -> dict[str, list[str]]:
    """word_neighbours over the input embeddings and vocabulary of the model in `model_dir`."""
    from transformers import AutoModel

    tokenizer = load_tokenizer(model_dir)
    vocab = [""] * len(tokenizer)
    for token, i in tokenizer.get_vocab().items():
        if i < len(vocab):
            vocab[i] = token
    vectors = AutoModel.from_pretrained(str(model_dir)).get_input_embeddings().weight.detach().numpy()
    return word_neighbours(vocab[: len(vectors)], vectors, words, k)


def augment_texts(train_texts: list[str], a: Any, exclude: Iterable[str] = (), neighbours: dict[str, list[str]] | None = None) -> list[str]:
    """distill.augment: `a.texts` synthetic texts from the training texts of at least
    `a.min_words` words, seeded. A share `a.join` joins two of them with a connective; a share
    `a.replace` swaps each word that has `neighbours` (word -> its nearest words) for one of
    them with chance `a.replace_words` (at least one word is swapped); the rest drop a share
    `a.drop` of one text's words (at least one). Texts in `exclude` (the training, transfer and
    held-out texts) and repeats are never returned."""
    pool = [t.split() for t in dict.fromkeys(train_texts) if len(t.split()) >= a.min_words]
    if len(pool) < 2:
        raise RecipeError(f"recipe.distill.augment: only {len(pool)} training texts have {a.min_words}+ words; lower augment.min_words")
    if a.replace and not neighbours:
        raise RecipeError("recipe.distill.augment.replace: no training word is a whole word of the student's vocabulary; set replace: 0")
    rng = np.random.default_rng(a.seed)
    seen = set(exclude)
    out: list[str] = []
    for _ in range(a.texts * 20):  # tiny pools run out of new texts: stop rather than loop for ever
        if len(out) == a.texts:
            break
        draw = rng.random()
        if draw < a.join:
            i, j = rng.choice(len(pool), 2, replace=False)
            text = " ".join([*pool[i], CONNECTIVES[rng.integers(len(CONNECTIVES))], *pool[j]])
        elif draw < a.join + a.replace:
            assert neighbours is not None
            words = list(pool[rng.integers(len(pool))])
            can = [n for n, w in enumerate(words) if w in neighbours]
            if not can:
                continue
            swap = [n for n in can if rng.random() < a.replace_words] or [can[rng.integers(len(can))]]
            for n in swap:
                near = neighbours[words[n]]
                words[n] = near[rng.integers(len(near))]
            text = " ".join(words)
        else:
            words = pool[rng.integers(len(pool))]
            gone = min(len(words) - 1, max(1, round(a.drop * len(words))))  # at least one word goes, one stays
            keep = np.sort(rng.choice(len(words), len(words) - gone, replace=False))
            text = " ".join(words[k] for k in keep)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def student_texts(recipe: Any, data: Any) -> dict[str, list[str]]:
    """The texts the student learns from, by piece: the training split, the transfer file's
    (never a dev or test text) and distill.augment's synthetic ones."""
    d = recipe.distill
    train_texts = data["train"].texts
    dev = data.get("validation")
    held_out = (dev.texts if dev is not None else []) + data["test"].texts
    extra = load_unlabeled(recipe, train_texts, held_out) if d.unlabeled is not None else []
    if extra and dev is not None and recipe.data.dev_holdout == "sentences":  # the phrases of dev's sentences are held out too
        extra = [extra[i] for i in outside(extra, dev.texts)]
    if extra:
        progress.info(f"transfer set: {len(extra)} unlabeled texts from {d.unlabeled.path} for the teacher to label")
    pieces = {"training": train_texts, "transfer": extra}
    if d.augment is not None:
        near = None
        if d.augment.replace:
            cut = d.student.from_teacher is not None  # the student's embeddings are then the teacher's
            source = model_folder(d.teacher if cut else recipe.model.path, "recipe.distill.teacher" if cut else "recipe.model.path")
            near = embedding_neighbours(source, {w for t in train_texts for w in t.split()}, d.augment.neighbours)
        pieces["augmented"] = augment_texts(train_texts, d.augment, [*train_texts, *extra, *held_out], near)
        progress.info(f"transfer set: {len(pieces['augmented'])} synthetic texts made from the training texts (distill.augment)")
    return pieces


def _transfer_key(recipe: Any) -> tuple[str, ...]:
    """The transfer set's part of a cache key (a hash of its settings and its file's bytes):
    nothing without one, so keys made before distill.unlabeled existed still match."""
    u = recipe.distill.unlabeled if recipe.distill else None
    if u is None:
        return ()
    h = hashlib.sha256(u.model_dump_json(exclude={"path"}).encode())
    with open(recipe.unlabeled_path(), "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return (h.hexdigest()[:16],)


# ---- the stage ----------------------------------------------------------------------------


def _paths(recipe: Any) -> tuple[Path | None, Path | None]:
    """(teacher model folder, student's starting folder); the teacher's is None when the recipe
    gives its outputs file instead, the student's when the student is cut from the teacher."""
    d = recipe.distill
    if d is None:
        raise RecipeError("recipe.distill: this recipe has no distill section; add one (see recipes/distill.yaml) or use `ftexport train`")
    teacher = model_folder(d.teacher, "recipe.distill.teacher").resolve() if d.teacher is not None else None
    return teacher, (None if d.student.from_teacher is not None else model_folder(recipe.model.path).resolve())


def distill_key(recipe: Any, hashes: tuple[str, str, tuple[str, ...], tuple[str, ...]] | None = None) -> str:
    """hashes: (data fingerprint, teacher hash, transfer key, student hash) when the caller has
    them already (each one reads files: the data, the teacher's and student's weights, the
    transfer set). Contents, not paths: the same files under another path keep the key."""
    data_fp, t_hash, transfer, s_hash = hashes or _input_hashes(recipe)
    return make_key(
        "distill", recipe.section_hash("task", "model", "data", "method", "training", "distill"), data_fp, t_hash, *transfer, *s_hash
    )


def _input_hashes(recipe: Any) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
    teacher, student = _paths(recipe)
    t_hash = model_hash(teacher if teacher is not None else Path(recipe.distill.teacher_outputs))  # the model, or its outputs file
    return fingerprint(recipe.data), t_hash, _transfer_key(recipe), ((model_hash(student),) if student else ())


def make_baseline_key(recipe: Any, data_fp: str, student_dir: Path, max_len: int) -> str:
    """The cache key of the student trained without the teacher: `recipe` is the seeded student
    recipe (model.path = student_dir), so the key follows the seed, data, method and training,
    not the teacher or the distill section."""
    sections = recipe.section_hash("task", "data", "method", "training")
    return make_key("distill-baseline", sections, data_fp, model_hash(student_dir), max_len)


def work_dir(output: Path) -> Path:
    return output.parent / f".{output.name}.work"


def save_outputs(recipe: Any, path: str | Path, append: bool = False) -> dict[str, Any]:
    """`ftexport distill --save-teacher-outputs`: the teacher's logits on every text the recipe
    uses (the student's pieces, then the dev and test splits), read through the same cache as
    a distillation, written to `path`. With `append` an existing file of the same teacher keeps
    its texts and gains those it lacks (one file serving several recipes). Returns the file's meta."""
    from transformers import AutoModelForSequenceClassification

    teacher_dir, student_dir = _paths(recipe)
    if teacher_dir is None:
        raise RecipeError(
            "recipe.distill.teacher: --save-teacher-outputs reads the teacher model; this recipe gives distill.teacher_outputs instead: "
            "name the model folder in distill.teacher"
        )
    check_compatible(recipe, teacher_dir, student_dir or teacher_dir)
    t_hash, max_len = model_hash(teacher_dir), recipe.model.max_length
    data = load_data(recipe.data, ("train", "validation", "test"))
    before = TeacherOutputs(path) if append and Path(path).is_file() else None
    if before is not None:  # refused before the teacher runs: the rows of two teachers must not mix
        before.check(list(data.label_names), max_len)
        if before.meta.get("teacher_hash") != t_hash:
            raise RecipeError(
                f"--append: {path} holds the outputs of teacher {before.meta.get('teacher_hash')} ({before.meta.get('teacher')}), "
                f"this recipe's teacher is {t_hash} ({teacher_dir}); write a new file instead"
            )
    pieces = student_texts(recipe, data)
    dev = data.get("validation")
    pieces.update({"dev": dev.texts if dev is not None else [], "test": data["test"].texts})
    trust = recipe.model.trust_remote_code
    logits, _, _, _ = teacher_pieces(teacher_dir, pieces, (t_hash, max_len, False), Path(path).parent, "none", trust)
    model = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir), trust_remote_code=trust)
    test_logits = logits[-len(data["test"]) :]
    meta = {
        "label_names": list(data.label_names),
        "max_length": max_len,
        "teacher": str(teacher_dir),
        "teacher_hash": t_hash,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": getattr(model.config, "num_hidden_layers", None),
        "pieces": {p: len(texts) for p, texts in pieces.items()},
        "test_accuracy": float((test_logits.argmax(-1) == np.asarray(data["test"].labels)).mean()),
        "recipe": recipe.name,
        "machine": machine_info(),
    }
    if before is not None:  # what each recipe added, in order; the first entry is the file appended to
        history = before.meta.get("recipes") or [{k: before.meta.get(k) for k in ("recipe", "pieces", "texts")}]
        meta["recipes"] = [*history, {"recipe": recipe.name, "pieces": meta["pieces"]}]
    return save_teacher_outputs(Path(path), [t for texts in pieces.values() for t in texts], logits, meta, before)


def distill(recipe: Any, output: str | Path, quiet: bool = False) -> dict[str, Any]:
    """Distil the teacher into the student; write the student (a save_pretrained folder that
    `ftexport merge` passes through) with distill.json / distill.md to `output`."""
    teacher_dir, student_dir = _paths(recipe)
    d = recipe.distill
    assert d is not None
    if recipe.method.name != "full":
        raise RecipeError("recipe.method.name: distillation trains the whole student; set method: {name: full}")
    output = Path(output)
    work = work_dir(output)
    outputs = TeacherOutputs(d.teacher_outputs) if d.teacher_outputs is not None else None
    check_compatible(recipe, teacher_dir, student_dir or teacher_dir, outputs)  # type: ignore[arg-type]
    data_fp, t_hash, transfer, _ = hashes = _input_hashes(recipe)
    key = distill_key(recipe, hashes)
    max_len = recipe.model.max_length

    # 1. The student's starting weights: a pretrained model, or the teacher or that model with layers cut.
    layers: list[int] | None = None
    source = "teacher" if d.student.from_teacher is not None else "model.path"
    spec = d.student.from_teacher.layers if d.student.from_teacher is not None else d.student.layers
    if spec is not None:
        source_dir, source_hash = (teacher_dir, t_hash) if student_dir is None else (student_dir, hashes[3][0])
        assert source_dir is not None  # from_teacher needs the teacher model (the recipe schema says so)
        student_dir = work / f"student-{make_key(source_hash, spec, 'per-seed head')}"  # cuts before that drew one head for all seeds
        if (student_dir / "ftexport.json").is_file():
            layers = json.loads((student_dir / "ftexport.json").read_text())["layers"]
        else:
            progress.step(f"distill: cutting the student from the {source} model (layers {spec})")
            layers = cut_student(source_dir, spec, student_dir, recipe.model.trust_remote_code, source)
    assert student_dir is not None
    student_recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"path": str(student_dir)})})

    # 2. The teacher's outputs on the training split, once.
    data = load_data(recipe.data, ("train", "validation", "test"))
    train_texts = data["train"].texts
    pieces = student_texts(recipe, data)
    extra = pieces["transfer"] + pieces.get("augmented", [])
    if outputs is not None:
        logits = np.concatenate([outputs.logits(texts, p) for p, texts in pieces.items() if texts])
        hidden, caches, cached = None, {p: outputs.path for p, texts in pieces.items() if texts}, True
        progress.step(f"distill: teacher outputs on {len(logits)} texts from {outputs.path}")
    else:
        assert teacher_dir is not None
        with_hidden = d.hidden_mse > 0
        logits, hidden, caches, cached = teacher_pieces(
            teacher_dir,
            pieces,
            (t_hash, max_len, with_hidden),
            work,
            legacy=make_key(t_hash, data_fp, max_len, with_hidden, *transfer),  # the one-file cache's key before pieces
            trust_remote_code=recipe.model.trust_remote_code,
        )
    teacher_train_acc = float((logits[: len(train_texts)].argmax(-1) == np.asarray(data["train"].labels)).mean())
    progress.info(f"teacher accuracy on the training rows: {teacher_train_acc:.4f}")

    # 3. The student with the teacher, and (for the report) without: once per seed, the same
    #    seeds for both, so each seed is a paired comparison.
    seeds = d.seeds or [recipe.training.seed]
    # each run's key leaves the seed list and the baseline switch out: adding a seed, or the
    # baseline, later reuses the students already trained
    unkeyed = d.model_copy(update={"seeds": None, "baseline": True, "ship": "first"})  # ship picks among runs, never trains one
    pair_key = distill_key(recipe.model_copy(update={"distill": unkeyed}), hashes)
    if layers is not None:  # a cut student's runs follow the weights they start from (an older cut carried a random head)
        pair_key = make_key(pair_key, model_hash(student_dir))
    runs: dict[int, dict[str, Path]] = {}
    for seed in seeds:
        seeded = student_recipe.model_copy(update={"training": recipe.training.model_copy(update={"seed": seed})})
        runs[seed] = _train_pair(seeded, pair_key, work, seed, seeds, d, logits, hidden, extra, max_len, data_fp, student_dir, quiet)
    shipped = shipped_seed(runs, d.ship, recipe.training.metric)
    if len(seeds) > 1:
        progress.info(f"the output is seed {shipped}'s student ({SHIP_RULES[d.ship]})")
    kd_dir = runs[shipped]["student"]

    # 4. Teacher vs student vs baseline on the held-out split, and each one's latency.
    progress.step(f"distill: scoring teacher, student{' and baseline' if d.baseline else ''} on {len(data['test'])} test texts")
    test = data["test"]
    rows = {**({"teacher": teacher_dir} if teacher_dir is not None else {}), **runs[shipped]}
    given = {"teacher": (outputs.logits(test.texts, "test"), {**outputs.meta, "file": str(outputs.path)})} if outputs is not None else {}
    report = compare_models(rows, test.texts, test.labels, len(data.label_names), max_len, recipe.task, given=given)
    report["seeds"] = seed_table(
        runs, data["test"].texts, data["test"].labels, max_len, report.pop("correct"), recipe.training.metric, shipped
    )
    report["shipped_seed"] = {"seed": shipped, "rule": d.ship}
    report.update(
        {
            "settings": d.model_dump(mode="json"),
            "student_layers_from_teacher": layers if source == "teacher" else None,
            "student_layers_of_model_path": layers if source == "model.path" else None,
            "train_rows": len(train_texts),
            "unlabeled_rows": len(extra),
            "augmented_rows": len(pieces.get("augmented", [])),
            "teacher_logits": {
                "cache": str(caches["training"]),
                "pieces": {p: str(f) for p, f in caches.items()},
                "reused": cached,
                "teacher_train_accuracy": teacher_train_acc,
            },
            "test_rows": len(data["test"]),
            "machine": machine_info(),  # accuracy and latency both depend on it: name the CPU beside them
        }
    )
    s, t = report["models"]["student"], report["models"]["teacher"]
    report["student_minus_teacher"] = s["accuracy"] - t["accuracy"]
    if d.baseline:
        report["student_minus_baseline"] = s["accuracy"] - report["models"]["baseline"]["accuracy"]

    kd_record = read_record(kd_dir)
    with stage_dir(output) as tmp:
        link_tree(kd_dir, tmp)
        unlinked(tmp / "distill.json").write_text(json.dumps(report, indent=2) + "\n")
        unlinked(tmp / "distill.md").write_text(distill_markdown(report) + "\n")
        StageRecord(
            "distill",
            key,
            inputs={
                "teacher": str(teacher_dir if teacher_dir is not None else d.teacher_outputs),
                "teacher_hash": t_hash,
                "student": str(student_dir),
                "data": data_fp,
                "unlabeled": transfer[0] if transfer else "none",
            },
            settings={"distill": d.model_dump(mode="json"), "training": recipe.training.model_dump(), "max_length": max_len},
            metrics={
                **(kd_record.metrics if kd_record else {}),
                "test": {k: {m: v[m] for m in ("accuracy", "macro_f1")} for k, v in report["models"].items()},
            },
            method="full",
            base_model=str(student_dir),
            labels=data.label_names,
            task=recipe.task,
            max_length=max_len,
            trust_remote_code=recipe.model.trust_remote_code,
        ).write(tmp)
    return report


def _train_pair(
    recipe: Any,
    key: str,
    work: Path,
    seed: int,
    seeds: list[int],
    d: Any,
    logits: np.ndarray,
    hidden: np.ndarray | None,
    extra: list[str],
    max_len: int,
    data_fp: str,
    student_dir: Path,
    quiet: bool,
) -> dict[str, Path]:
    """Train (or reuse) the distilled student and, with distill.baseline, the same student
    without the teacher, both with `seed`. Returns {"student": dir[, "baseline": dir]}."""
    tag = "" if len(seeds) == 1 else f" (seed {seed}, {seeds.index(seed) + 1} of {len(seeds)})"
    suffix = "" if seed == seeds[0] else f"-seed{seed}"  # the first seed keeps the plain names (the folders of one-seed runs)
    out = {"student": work / f"kd{suffix}"}
    kd_key = make_key("distill-kd", key, seed)
    if is_fresh(out["student"], kd_key):
        progress.step(f"distill: student (with the teacher){tag} up to date, reused")
    else:
        progress.step(
            f"distill: training the student with the teacher{tag} (alpha {d.alpha}, {soft_term(d.soft_loss, d.temperature)}"
            + (f", hidden MSE {d.hidden_mse}" if hidden is not None else "")
            + (f"; {len(logits) - len(extra)} labelled + {len(extra)} unlabeled rows per epoch" if extra else "")
            + ")"
        )
        transfer = (get_task(recipe.task), extra, max_len) if extra else None
        train(recipe, out["student"], quiet=quiet, trainer_class=distill_trainer_class(d, logits, hidden, transfer), key=kd_key)
    if d.baseline:
        out["baseline"] = work / f"baseline{suffix}"
        baseline_key = make_baseline_key(recipe, data_fp, student_dir, max_len)
        if is_fresh(out["baseline"], baseline_key):
            progress.step(f"distill: baseline student (no teacher){tag} up to date, reused")
        else:
            progress.step(f"distill: training the same student without the teacher (baseline){tag}")
            train(recipe, out["baseline"], quiet=quiet, key=baseline_key)
    return out


SHIP_RULES = {"first": "the first seed", "best_dev": "the best dev score"}


class ScoredSide:
    """One side of a seed that an earlier report already scored on the same test split: its
    right/wrong answer per test text and its dev score, no model folder needed. Reports keep
    these (seed_table's `right`), so a student trained in one session pairs with a baseline
    trained in another even when the earlier model folders are gone."""

    def __init__(self, right: np.ndarray, dev: float | None, source: str) -> None:
        self.right, self.dev, self.source = np.asarray(right, dtype=bool), dev, source

    @classmethod
    def from_report(cls, report: dict[str, Any], seed: int, side: str, source: str, split: str, metric: str) -> ScoredSide:
        """`side` ("student" or "baseline") of `seed` in a seed_table report; refuses a report
        of another test split, or one written before reports kept each text's result."""
        if report.get("test_sha256") != split:
            raise ModelError(f"{source}: that report scored another test split (or predates per-text results); pair a model folder instead")
        row = report.get("per_seed", {}).get(str(seed))
        if row is None or side not in row.get("right", {}):
            raise ModelError(f"{source}: no per-text results for the {side} side of seed {seed} in that report; pair a model folder")
        return cls(np.array([c == "1" for c in row["right"][side]]), row.get(f"{side}_dev_{metric}"), source)


def split_sha256(texts: list[str], labels: list[int]) -> str:
    """A fingerprint of a test split (its texts and gold labels, in order): what makes per-text
    results of two reports comparable."""
    return hashlib.sha256(json.dumps([list(texts), [int(x) for x in labels]]).encode()).hexdigest()


def dev_score(path: Path | ScoredSide, metric: str) -> float | None:
    """The dev `metric` of a trained model's kept checkpoint (its training record's), or None."""
    if isinstance(path, ScoredSide):
        return path.dev
    record = read_record(path)
    return float(record.metrics[metric]) if record is not None and metric in record.metrics else None


def shipped_seed(runs: dict[int, dict[str, Path | ScoredSide]], rule: str, metric: str = "accuracy") -> int:
    """The seed whose distilled student is the output: the first one, or (best_dev) the one
    whose kept checkpoint scored best on dev, the earlier seed on a tie. Dev only: the test
    split never picks. A run without a dev score cannot be ranked, so best_dev then refuses."""
    seeds = list(runs)
    if rule == "first" or len(seeds) == 1:
        return seeds[0]
    scores = {seed: dev_score(runs[seed]["student"], metric) for seed in seeds}
    missing = [seed for seed, v in scores.items() if v is None]
    if missing:
        raise ModelError(
            f"distill.ship best_dev: no dev {metric} in the training record of seed(s) {missing}; "
            "train with a validation split (data.validation or data.dev_holdout), or set distill.ship: first"
        )
    return max(seeds, key=lambda seed: (scores[seed], -seeds.index(seed)))


def seed_table(
    runs: dict[int, dict[str, Path | ScoredSide]],
    texts: list[str],
    labels: list[int],
    max_length: int,
    first: dict[str, np.ndarray] | None = None,
    metric: str = "accuracy",
    scored: int | None = None,
) -> dict[str, Any]:
    """Test accuracy of student and baseline for every seed (`first`: the right/wrong per text
    of seed `scored` (default: the first seed), as compare_models scored them; scored here when not given), their means and spread, the
    paired McNemar test per seed, and each model's dev `metric` (its training record's, the
    kept checkpoint's: what recipe choices are made on, never the test split). A side given as
    a ScoredSide is not scored again: its per-text results come from the report that kept them.
    Each seed's `right` keeps every side's right/wrong per text ("1"/"0", in test order) and
    `test_sha256` the split's fingerprint, so a later report can pair with these runs."""
    from transformers import AutoModelForSequenceClassification

    gold = np.asarray(labels)
    per: dict[str, Any] = {}
    scored = next(iter(runs)) if scored is None else scored
    for seed, dirs in runs.items():
        correct = {}
        dev = {}
        for name, path in dirs.items():
            score = dev_score(path, metric)  # the dev score of the checkpoint kept, on which choices are made
            if score is not None:
                dev[f"{name}_dev_{metric}"] = score
            if isinstance(path, ScoredSide):
                if len(path.right) != len(gold):
                    raise ModelError(f"{path.source}: {len(path.right)} per-text results for a test split of {len(gold)} texts")
                correct[name] = path.right
            elif seed == scored and first is not None:
                correct[name] = first[name]
            else:
                model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
                correct[name] = predict_logits(model, load_tokenizer(path, name), texts, max_length).argmax(-1) == gold
        per[str(seed)] = {**{f"{name}_accuracy": float(c.mean()) for name, c in correct.items()}, **dev}
        if "baseline" in correct:
            per[str(seed)]["student_vs_baseline"] = paired_test(correct["student"], correct["baseline"])
        per[str(seed)]["right"] = {name: "".join("1" if r else "0" for r in c) for name, c in correct.items()}
    out: dict[str, Any] = {"per_seed": per, "test_sha256": split_sha256(texts, labels)}
    for name in next(iter(runs.values())):
        accs = np.array([row[f"{name}_accuracy"] for row in per.values()])
        out[name] = {"mean": float(accs.mean()), "std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0}
        dev = [row[f"{name}_dev_{metric}"] for row in per.values() if f"{name}_dev_{metric}" in row]
        if len(dev) == len(per):
            out[name][f"dev_{metric}_mean"] = float(np.mean(dev))
    if "baseline" in out:
        out["mean_student_minus_baseline"] = out["student"]["mean"] - out["baseline"]["mean"]
        out["seeds_student_ahead"] = sum(row["student_accuracy"] > row["baseline_accuracy"] for row in per.values())
    return out


def compare_models(
    models: dict[str, Path],
    texts: list[str],
    labels: list[int],
    num_labels: int,
    max_length: int,
    task_name: str,
    iterations: int = 30,
    rounds: int = 3,
    given: dict[str, tuple[np.ndarray, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Accuracy and macro-F1 of each model on `texts`, and PyTorch p50 latency at batch 1 and
    8 measured in the same run (models interleaved round by round, so a busy machine slows
    them alike); speed-up is the teacher's p50 over each model's. `given`: rows known only by
    their logits on `texts` and a meta (a teacher-outputs file): scored, never timed."""
    import torch
    from transformers import AutoModelForSequenceClassification

    task = get_task(task_name)
    loaded = {}
    correct: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {"models": {}}
    for name, (logits, meta) in (given or {}).items():
        correct[name] = logits.argmax(-1) == np.asarray(labels)
        out["models"][name] = {
            "path": f"{meta.get('file')} (the outputs of {meta.get('teacher')})",
            **task.metrics(logits, labels, num_labels),
            "parameters": meta.get("parameters"),
            "layers": meta.get("layers"),
        }
    for name, path in models.items():
        model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        tok = load_tokenizer(path, name)
        logits = predict_logits(model, tok, texts, max_length)
        scores = task.metrics(logits, labels, num_labels)
        correct[name] = logits.argmax(-1) == np.asarray(labels)
        out["models"][name] = {
            "path": str(path),
            **scores,
            "parameters": sum(p.numel() for p in model.parameters()),
            "layers": getattr(model.config, "num_hidden_layers", None),
        }
        loaded[name] = torch_probs(model, tok, max_length, "cpu")
    times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in models for b in LATENCY_BATCHES}
    for _ in range(rounds):
        for b in LATENCY_BATCHES:
            batches = [texts[i : i + b] for i in range(0, min(len(texts), 64 * b), b)]
            for name, fn in loaded.items():
                times[(name, b)] += time_calls(cycle(fn, batches), warmup=2, iterations=max(3, iterations // rounds))
    for name in models:
        out["models"][name]["latency_ms"] = {str(b): summarize(times[(name, b)], b)["p50_ms"] for b in LATENCY_BATCHES}
    teacher = out["models"]["teacher"]
    for name in models:
        m = out["models"][name]
        if "latency_ms" in teacher:  # a teacher given by its outputs was not timed: no speed-up to state
            m["speedup_vs_teacher"] = {b: teacher["latency_ms"][b] / m["latency_ms"][b] for b in m["latency_ms"]}
        if teacher["parameters"]:
            m["size_vs_teacher"] = m["parameters"] / teacher["parameters"]
    if "baseline" in correct:
        out["student_vs_baseline"] = paired_test(correct["student"], correct["baseline"])
    out["latency"] = {
        "backend": "pytorch fp32, CPU",
        "threads": torch.get_num_threads(),
        "p50_of": iterations,
        "texts": "held-out split, as they come",
    }
    out["correct"] = correct  # per-text right/wrong, for the per-seed paired tests; not written to the report
    return out


def paired_test(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of two models' right/wrong answers on the same texts: only the texts
    where they disagree carry evidence; p is the two-sided binomial probability of a split at
    least this uneven if neither model were better."""
    from scipy.stats import binomtest

    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = float(binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    return {"student_only_right": a_only, "baseline_only_right": b_only, "mcnemar_p": p}


TITLES = {"teacher": "teacher", "student": "student (distilled)", "baseline": "student without KD"}


def distill_markdown(report: dict[str, Any]) -> str:
    rows = []
    for name, m in report["models"].items():
        rows.append(
            [
                TITLES.get(name, name),
                m["layers"],
                f"{m['parameters'] / 1e6:.1f}M" if m["parameters"] else "?",
                f"{100 * m['accuracy']:.2f}%",
                f"{100 * m['macro_f1']:.2f}",
                *((f"{m['latency_ms'][b]:.2f}" for b in ("1", "8")) if "latency_ms" in m else ("not timed", "not timed")),
                f"{m['speedup_vs_teacher']['1']:.2f}x / {m['speedup_vs_teacher']['8']:.2f}x" if "speedup_vs_teacher" in m else "-",
            ]
        )
    s = report["settings"]
    lines = [
        "# Distillation",
        "",
        f"{report['test_rows']} held-out texts; teacher {report['models']['teacher']['path']}; "
        f"alpha {s['alpha']}, {soft_term(s.get('soft_loss', 'kl'), s['temperature'])}"
        + f", hidden MSE {s['hidden_mse']}, level {s['level']}; {report['train_rows']} labelled "
        f"training rows"
        + (
            f" and {report['unlabeled_rows']} unlabeled texts the teacher labelled for the student"
            + (f", {report['augmented_rows']} of them synthetic (distill.augment)" if report.get("augmented_rows") else "")
            + " (the baseline sees only the labelled rows)."
            if report.get("unlabeled_rows")
            else "."
        ),
        "",
        markdown_table(
            ["model", "layers", "params", "accuracy", "macro-F1", "p50 ms b1", "p50 ms b8", "speed-up vs teacher (b1 / b8)"], rows
        ),
        "",
        f"student - teacher: {100 * report['student_minus_teacher']:+.2f} points accuracy",
    ]
    if "student_minus_baseline" in report:
        lines.append(
            f"student - student without KD: {100 * report['student_minus_baseline']:+.2f} points accuracy (what distillation bought)"
        )
        if "student_vs_baseline" in report:
            t = report["student_vs_baseline"]
            lines.append(
                f"texts only the student gets right: {t['student_only_right']}, only the baseline: {t['baseline_only_right']} "
                f"(exact McNemar p = {t['mcnemar_p']:.3f}: "
                + (
                    "a difference this uneven is unlikely to be chance)"
                    if t["mcnemar_p"] < 0.05
                    else "a split this even could well be chance; more test texts would tell)"
                )
            )
    seeds = report.get("seeds", {})
    if len(seeds.get("per_seed", {})) > 1:
        lines += [
            "",
            *seeds_markdown(seeds, f"Every seed, test accuracy ({shipped_words(report)}; the tables above are that seed's)"),
        ]
    lines.append(
        f"\nLatency: {report['latency']['backend']}, {report['latency']['threads']} threads, p50 of {report['latency']['p50_of']} calls "
        f"per cell, models interleaved in one run."
    )
    if "machine" in report:  # reports from before it was recorded have none
        m = report["machine"]
        lines.append(f"Machine: {m['cpu']} ({', '.join(m['cpu_flags']) or 'no int8 flags'}), {m['cores']} cores.")
    return "\n".join(lines)


def shipped_words(report: dict[str, Any]) -> str:
    """Which seed's student the report's output is, in words (reports from before the rule
    was recorded shipped the first seed)."""
    ship = report.get("shipped_seed")
    if ship is None:
        return "the first one's student is the output"
    return f"seed {ship['seed']}'s student is the output: {SHIP_RULES[ship['rule']]}"


def seeds_markdown(seeds: dict[str, Any], lead: str, titles: tuple[str, str] = ("student", "without KD")) -> list[str]:
    """seed_table's result as markdown lines after `lead`: every seed's test accuracy (dev in
    brackets), and with a baseline the difference, McNemar p and how many seeds the student
    led; `titles` name the two sides."""
    has_base = "baseline" in seeds
    dev_key = next((k.removeprefix("student_") for k in next(iter(seeds["per_seed"].values())) if "_dev_" in k), None)

    def cell(r: dict[str, Any], name: str) -> str:
        dev = r.get(f"{name}_{dev_key}")
        return f"{100 * r[f'{name}_accuracy']:.2f}%" + (f" (dev {100 * dev:.2f}%)" if dev is not None else "")

    def mean_cell(name: str) -> str:
        m = seeds[name]
        dev = m.get(f"{dev_key}_mean")
        return f"{100 * m['mean']:.2f}% ± {100 * m['std']:.2f}" + (f" (dev {100 * dev:.2f}%)" if dev is not None else "")

    rows = [
        [seed, cell(r, "student")]
        + (
            [
                cell(r, "baseline"),
                f"{100 * (r['student_accuracy'] - r['baseline_accuracy']):+.2f}",
                f"{r['student_vs_baseline']['mcnemar_p']:.3f}",
            ]
            if has_base
            else []
        )
        for seed, r in seeds["per_seed"].items()
    ]
    mean = [mean_cell("student")]
    if has_base:
        mean += [
            mean_cell("baseline"),
            f"{100 * seeds['mean_student_minus_baseline']:+.2f}",
            "",
        ]
    rows.append(["mean ± sd"] + mean)
    head = ["seed", titles[0]] + ([titles[1], "difference (points)", "McNemar p"] if has_base else [])
    lines = [
        lead
        + (f"; in brackets the dev {dev_key.removeprefix('dev_')} of the checkpoint kept (recipes are chosen on it):" if dev_key else ":"),
        "",
        markdown_table(head, rows),
    ]
    if has_base:
        lines.append(f"the student is ahead of the baseline for {seeds['seeds_student_ahead']} of {len(rows) - 1} seeds")
    return lines
