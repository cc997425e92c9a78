"""The parity gate for token classification (NER).

Each sentence's words go through PyTorch and through every bundle variant (the runtime's
Predictor, pre-tokenized words in, as an application with CoNLL-style input calls it). Both
sides are read at each word's first sub-token — the positions that carry labels in training:

- tensor level: |logit difference|, cosine and top-1 agreement over those positions;
- entity level: the entities a variant finds against the entities PyTorch finds (seqeval F1
  with PyTorch's tags as the truth: "entity_agreement"), and the share of sentences whose
  entity sets are identical;
- task level: entity precision/recall/F1 against the gold tags (seqeval), with the per-type
  report, and the F1 drop against PyTorch (what the gates' max_accuracy_drop judges).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ftexport_runtime import Predictor
from ftexport_runtime.bundle import Bundle

from . import progress
from .data import load_data
from .recipe import DataSection, Gate
from .tasks.token_classification import class_report, entity_scores, reference_word_logits
from .tokens import tags_of
from .train import load_tokenizer

# What parity.json keeps per variant, beside the gate's checks.
METRIC = "f1"


def tags_from_logits(word_logits: list[np.ndarray], n_words: list[int], names: list[str]) -> list[list[str]]:
    """Word tags from first-sub-token logits; words cut off by max_length count as O."""
    return [[names[int(k)] for k in lg.argmax(-1)] + ["O"] * (n - len(lg)) for lg, n in zip(word_logits, n_words)]


def scores(gold: list[list[str]], tags: list[list[str]]) -> dict[str, float]:
    """Entity precision/recall/F1 and token accuracy; "precision" names a variant's numeric
    precision (fp32, int8) in parity.json, so the entity score is entity_precision."""
    s = entity_scores(gold, tags)
    return {"entity_precision": s["precision"], "recall": s["recall"], "f1": s["f1"], "accuracy": s["accuracy"]}


def entity_parity(reference: list[list[str]], tags: list[list[str]]) -> dict[str, float]:
    from seqeval.metrics.sequence_labeling import get_entities

    same = [set(get_entities(r)) == set(get_entities(t)) for r, t in zip(reference, tags)]
    return {"entity_agreement": entity_scores(reference, tags)["f1"], "sentence_agreement": float(np.mean(same)) if same else 1.0}


def validate_tokens(bundle: Bundle, reference_dir: Path, data: DataSection, gates: dict[str, Gate], split: str,
                    batch_size: int, backends: list[str] | tuple[str, ...], names: list[str]) -> dict[str, Any]:
    from .validate import _unavailable, apply_gate, compare, each_predictor, settle

    manifest = bundle.manifest
    labels = manifest.labels
    held_out = load_data(data.model_copy(update={"label_names": labels}), (split,))[split]
    words = held_out.words or []
    gold = tags_of(held_out.labels, labels)
    n_words = [len(w) for w in words]
    progress.step(f"validate: {len(words)} sentences ({sum(n_words)} words) of the {split} split, "
                  f"PyTorch vs {', '.join(names)} on {', '.join(backends)}, entity level")

    import torch

    from .tasks import get_task

    model = get_task(manifest.task).auto_model_class().from_pretrained(str(reference_dir))
    if torch.cuda.is_available():
        model = model.to("cuda")
    ref_logits = reference_word_logits(model, load_tokenizer(reference_dir, "reference model"), words, manifest.max_length, batch_size)
    ref_tags = tags_from_logits(ref_logits, n_words, labels)
    ref_flat = np.concatenate(ref_logits)
    reference = {"backend": "pytorch", "device": str(next(model.parameters()).device), **scores(gold, ref_tags),
                 "per_class": class_report(gold, ref_tags)}
    del model
    progress.info(f"pytorch   entity F1 {reference['f1']:.4f}  (P {reference['entity_precision']:.4f}  R {reference['recall']:.4f})")
    report: dict[str, Any] = {
        "task": manifest.task, "metric": METRIC, "split": split, "examples": len(words), "words": sum(n_words),
        "labels": labels, "reference": reference, "variants": {},
    }
    for key, backend, variant, predictor in each_predictor(bundle, names, backends, batch_size, report):
        logits = predictor.word_logits(words)
        if [len(x) for x in logits] != [len(x) for x in ref_logits]:  # the bundle's tokenizer.json cut words differently
            report["variants"][key] = _unavailable(variant.precision, backend, "the runtime tokenizer keeps other words than the reference's")
            continue
        tags = tags_from_logits(logits, n_words, labels)
        result: dict[str, Any] = {"precision": variant.precision, "backend": backend, "providers": predictor.providers}
        result.update(scores(gold, tags))
        result.update(compare(ref_flat, np.concatenate(logits)))
        result.update(entity_parity(ref_tags, tags))
        result["per_class"] = class_report(gold, tags)
        settle(report, key, result, apply_gate(result, reference["f1"], gates.get(variant.precision, Gate()), metric=METRIC),
               f"entity F1 {result['f1']:.4f}  entity agreement {result['entity_agreement']:.4f}  "
               f"token agreement {result['agreement']:.4f}  max |dlogit| {result['max_logit_diff']:.2e}")
    report["passed"] = all(v["passed"] for v in report["variants"].values())
    return report
