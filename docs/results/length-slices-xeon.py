"""Run as: FTEXPORT_DATA=/path/to/data python docs/results/length-slices-xeon.py OUT.json NAME=DIR[,DIR...] ...

Where do the students lose to the teacher? Scores the teacher (its committed outputs file) and
every named group of student checkpoints (e.g. the three seeds of one recipe) on SST-2's test
split and on the 2,000 dev rows that choose checkpoints (data.max_eval_samples, sample_seed 0),
sliced by length in words; and counts how much of each split the training rows already hold.
GLUE's SST-2 training set lists every phrase of a treebank sentence as its own row, and
validation.tsv is a random cut of that set, so a dev row is usually a phrase of a training
sentence, or a sentence whose phrases are training rows; the test split's sentences are not.

No training: each checkpoint reads the texts once (a minute per checkpoint on 2 cores)."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ftexport.core.machine import machine_info  # noqa: E402
from ftexport.data.phrases import all_pieces, outside, pieces, whole_sentences, words  # noqa: E402
from ftexport.train.teacher_outputs import TeacherOutputs  # noqa: E402

BINS = [(1, 9), (10, 19), (20, 29), (30, 999)]
D = Path(os.environ["FTEXPORT_DATA"]) / "sst2"
TEACHER = Path(__file__).resolve().parents[2] / "recipes" / "teachers" / "mpnet-sst2.npz"


def read(name: str, dev: bool = False) -> pd.DataFrame:
    df = pd.read_csv(D / name, sep="\t", quoting=3, keep_default_na=False)
    return df.sample(n=2000, random_state=0) if dev else df


def predict(folder: str, texts: list[str]) -> np.ndarray:
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            enc = tok(texts[i : i + 64], return_tensors="pt", padding=True, truncation=True, max_length=128)
            out.append(model(**enc).logits.argmax(-1).numpy())
    return np.concatenate(out)


def overlap(texts: list[str], train: list[str], train_pieces: set[str]) -> dict[str, float]:
    """Share of `texts` that are themselves a phrase of a training row, and share whose longest
    phrase that is a training row covers at least half their words."""
    rows = {words(t) for t in train}  # the TSVs keep a trailing space on most rows
    inside = half = 0
    for t in texts:
        inside += words(t) in train_pieces
        longest = max((len(p.split()) for p in pieces(t) if p in rows), default=0)
        half += longest * 2 >= len(t.split())
    return {"inside_a_training_row": inside / len(texts), "half_covered_by_a_training_row": half / len(texts)}


def slices(pred: np.ndarray, y: np.ndarray, lengths: np.ndarray) -> dict[str, float]:
    """Accuracy in percent, unrounded: overall and per length bin."""
    out = {"all": float((pred == y).mean()) * 100}
    for lo, hi in BINS:
        s = (lengths >= lo) & (lengths <= hi)
        out[f"{lo}-{hi if hi < 999 else ''}"] = float((pred[s] == y[s]).mean()) * 100
    return out


def rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in d.items()}


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    out_path, groups = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    started = time.time()
    train = read("train.tsv").sentence.tolist()
    train_pieces = all_pieces(train)
    splits = {"test": read("test.tsv"), "dev": read("validation.tsv", dev=True)}
    teacher = TeacherOutputs(TEACHER)
    report: dict = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "command": "python docs/results/length-slices-xeon.py " + " ".join(sys.argv[1:]),
        "bins_in_words": [f"{lo}-{hi if hi < 999 else ''}" for lo, hi in BINS],
        "splits": {},
    }
    for split, df in splits.items():
        texts, y = df.sentence.tolist(), df.label.to_numpy()
        lengths = np.array([len(t.split()) for t in texts])
        entry = {
            "rows": len(texts),
            "rows_per_bin": [int(((lengths >= lo) & (lengths <= hi)).sum()) for lo, hi in BINS],
            "mean_words": round(float(lengths.mean()), 1),
            "overlap_with_training_rows": {k: round(v, 4) for k, v in overlap(texts, train, train_pieces).items()},
            "teacher": rounded(slices(teacher.logits(texts, split).argmax(-1), y, lengths)),
            "students": {},
        }
        for name, folders in groups:
            per_seed = [slices(predict(f, texts), y, lengths) for f in folders.split(",")]
            entry["students"][name] = {
                "checkpoints": folders.split(","),
                "per_seed": [rounded(s) for s in per_seed],
                "mean": rounded({k: float(np.mean([s[k] for s in per_seed])) for k in per_seed[0]}),
            }
        report["splits"][split] = entry
    full_dev = read("validation.tsv").sentence.tolist()
    wholes = [full_dev[i] for i in whole_sentences(full_dev, train)]
    report["dev_holdout_sentences"] = {  # what data.dev_holdout: sentences makes of these files
        "validation_rows": len(full_dev),
        "whole_sentences": len(wholes),
        "mean_words": round(float(np.mean([len(t.split()) for t in wholes])), 1),
        "training_rows_left_out": len(train) - len(outside(train, wholes)),
    }
    report["seconds"] = round(time.time() - started)
    report["machine"] = machine_info()
    Path(out_path).write_text(json.dumps(report, indent=2) + "\n")
    print(f"dev_holdout sentences: {report['dev_holdout_sentences']}")
    for split, entry in report["splits"].items():
        print(f"{split}: {entry['rows_per_bin']} rows per bin {report['bins_in_words']}; {entry['overlap_with_training_rows']}")
        print(f"  teacher {entry['teacher']}")
        for name, s in entry["students"].items():
            print(f"  {name} {s['mean']}")


if __name__ == "__main__":
    main()
