"""Compare two teacher-outputs files (`ftexport distill --save-teacher-outputs`) on the texts
both hold: how often the two teachers pick the same label, how far their logits and their
probabilities at the distillation temperature lie apart, and each file's record (test
accuracy, machine). For a teacher trained again, on another CPU, from the same recipe: its
students learn from its soft targets, so this says how much of a change in the students the
teacher alone can explain.

    python tools/compare_teacher_outputs.py recipes/teachers/mpnet-sst2-holdout.npz \\
        recipes/teachers/mpnet-sst2-holdout-xeon.npz --temperature 2 \\
        --out docs/results/teacher-mpnet-holdout-zen4-vs-xeon-outputs.json

Writes OUT (JSON) and prints one line; two files with no text in common, or another label
set, are one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ftexport.core.errors import FtexportError
from ftexport.tasks.base import softmax
from ftexport.train.teacher_outputs import TeacherOutputs


def compare(a: TeacherOutputs, b: TeacherOutputs, temperature: float) -> dict:
    if a.label_names != b.label_names:
        raise FtexportError(f"{a.path} predicts {a.label_names}, {b.path} predicts {b.label_names}: only files of one label set compare")
    common, ia, ib = np.intersect1d(a.ids, b.ids, assume_unique=True, return_indices=True)
    if not len(common):
        raise FtexportError(f"{a.path} and {b.path} hold no text in common: write both from recipes that read the same texts")
    la, lb = a.rows[ia].astype(np.float64), b.rows[ib].astype(np.float64)
    soft = np.abs(softmax(la / temperature) - softmax(lb / temperature))
    d = np.abs(la - lb)
    # a logit offset shared by every label changes nothing: compare the margins too
    margin = np.abs((la - la.mean(axis=1, keepdims=True)) - (lb - lb.mean(axis=1, keepdims=True)))
    record = ("name", "test_accuracy", "machine", "texts", "sha256")
    return {
        "files": {str(t.path): {k: t.meta.get(k) for k in record} for t in (a, b)},
        "common_texts": int(len(common)),
        "only_in_first": int(len(a.ids) - len(common)),
        "only_in_second": int(len(b.ids) - len(common)),
        "label_agreement": float((la.argmax(1) == lb.argmax(1)).mean()),
        "temperature": temperature,
        "soft_target_abs_diff": {"mean": float(soft.mean()), "p99": float(np.quantile(soft, 0.99))},
        "logit_abs_diff": {"mean": float(d.mean()), "max": float(d.max())},
        "centred_logit_abs_diff": {"mean": float(margin.mean()), "p99": float(np.quantile(margin, 0.99))},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--temperature", type=float, default=2.0, help="the distillation temperature of the soft targets (2.0)")
    ap.add_argument("--out", required=True, help="the JSON report to write")
    args = ap.parse_args()
    try:
        report = compare(TeacherOutputs(args.first), TeacherOutputs(args.second), args.temperature)
    except FtexportError as e:
        sys.exit(f"error: {e}")
    report["command"] = "python tools/compare_teacher_outputs.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"{out}: {report['common_texts']} texts in common, same label on {report['label_agreement']:.2%}, "
        f"soft targets (T {args.temperature:g}) {report['soft_target_abs_diff']['mean']:.4f} apart on average"
    )


if __name__ == "__main__":
    main()
