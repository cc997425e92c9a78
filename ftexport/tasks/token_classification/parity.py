"""The parity check for token classification (NER).

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

from ...core import progress
from ...core.gates import compare
from ...core.hf import load_tokenizer, reference_device
from ...core.tables import markdown_table
from ...data import load_data
from ...data.conll import tags_of
from ..base import Incomparable, ParityCase
from .metrics import class_report, entity_scores, reference_word_logits

# The task score parity.json reports per variant, beside the gate's checks.
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


class TokensCase(ParityCase):
    """PyTorch's word-level logits and tags on the held-out sentences; a variant is compared
    at each word's first sub-token and entity by entity."""

    metric = METRIC

    def __init__(self, task: Any, bundle: Any, reference_dir: Path, data: Any, split: str, batch_size: int):
        manifest = bundle.manifest
        self.labels, self.split = list(manifest.labels), split
        held_out = load_data(data.model_copy(update={"label_names": self.labels}), (split,))[split]
        self.words = held_out.words or []
        self.gold = tags_of(held_out.labels, self.labels)
        self.n_words = [len(w) for w in self.words]
        self.examples = len(self.words)
        progress.info(f"{len(self.words)} sentences ({sum(self.n_words)} words), entity level")
        model = reference_device(task.auto_model_class().from_pretrained(str(reference_dir)))
        self.reference_logits = reference_word_logits(
            model, load_tokenizer(reference_dir, "reference model"), self.words, manifest.max_length, batch_size
        )
        self.reference_tags = tags_from_logits(self.reference_logits, self.n_words, self.labels)
        self.reference_flat = np.concatenate(self.reference_logits)
        self.reference = {
            "backend": "pytorch",
            "device": str(next(model.parameters()).device),
            **scores(self.gold, self.reference_tags),
            "per_class": class_report(self.gold, self.reference_tags),
        }
        self.details = {"metric": METRIC, "words": sum(self.n_words)}
        progress.info(
            f"pytorch   entity F1 {self.reference['f1']:.4f}  (P {self.reference['entity_precision']:.4f}  R "
            f"{self.reference['recall']:.4f})"
        )

    def score(self, predictor: Any) -> dict[str, Any]:
        logits = predictor.word_logits(self.words)
        if [len(x) for x in logits] != [len(x) for x in self.reference_logits]:  # the bundle's tokenizer.json cut words differently
            raise Incomparable("the runtime tokenizer keeps other words than the reference's")
        tags = tags_from_logits(logits, self.n_words, self.labels)
        result: dict[str, Any] = scores(self.gold, tags)
        result.update(compare(self.reference_flat, np.concatenate(logits)))
        result.update(entity_parity(self.reference_tags, tags))
        result["per_class"] = class_report(self.gold, tags)
        return result

    def summary(self, r: dict[str, Any]) -> str:
        return (
            f"entity F1 {r['f1']:.4f}  entity agreement {r['entity_agreement']:.4f}  "
            f"token agreement {r['agreement']:.4f}  max |dlogit| {r['max_logit_diff']:.2e}"
        )


def parity_table(report: Any) -> str:
    """Token classification: entity-level scores against the gold tags and against PyTorch."""
    ref = report["reference"]
    rows: list[list[Any]] = [
        ["pytorch (reference)", "fp32", ref["entity_precision"], ref["recall"], ref["f1"], None, None, None, None, "—"]
    ]
    for name, v in report["variants"].items():
        if "error" in v:
            rows.append([f"onnx {name}", v["precision"], None, None, None, None, None, None, None, f"FAIL: {v['error']}"])
            continue
        failed = [c["name"] for c in v["checks"] if not c["passed"]]
        verdict = "PASS" if v["passed"] else "FAIL: " + ", ".join(failed)
        rows.append(
            [
                f"onnx {name}",
                v["precision"],
                v["entity_precision"],
                v["recall"],
                v["f1"],
                v["f1_drop"],
                v["entity_agreement"],
                v["agreement"],
                f"{v['max_logit_diff']:.2e}",
                verdict,
            ]
        )
    head = (
        f"Entity-level parity on the {report['split']} split ({report['examples']} sentences, {report.get('words', '?')} words); "
        "entity agreement = entity F1 against PyTorch's entities, token agreement = top-1 at each word's first sub-token\n\n"
    )
    table = markdown_table(
        [
            "model",
            "precision",
            "entity P",
            "entity R",
            "entity F1",
            "F1 drop",
            "entity agreement",
            "token agreement",
            "max |Δlogit|",
            "gate",
        ],
        rows,
    )
    per_class = [[k, r["precision"], r["recall"], r["f1-score"], int(r["support"])] for k, r in ref.get("per_class", {}).items()]
    if per_class:
        table += "\n\nPyTorch per entity type (seqeval)\n\n" + markdown_table(["type", "precision", "recall", "F1", "support"], per_class)
    return head + table
