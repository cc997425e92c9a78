"""Pair two sets of students seed by seed on the recipe's test split, as `ftexport distill`
pairs its student and baseline: test accuracy per seed, the exact McNemar test per seed,
means and spread, and each model's dev score from its training record (what choices are
made on). For comparisons one recipe cannot hold: two sides trained by different recipes,
e.g. a student distilled for 2 epochs over a larger transfer set against the 3-epoch
baseline of recipes/distill.yaml.

    python tools/paired_seeds.py recipes/distill.yaml \\
        --pair 42=runs/big/s42:runs/rep/.distill.work/baseline \\
        --pair 43=runs/big/s43:runs/rep/.distill.work/baseline-seed43 \\
        --pair 44=runs/big/s44:runs/rep/.distill.work/baseline-seed44 \\
        --out docs/results/distill-xeon-big-seeds42-44-paired

Writes OUT.json and OUT.md; each side is a model folder (save_pretrained) with its
ftexport.json training record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="the recipe whose test split (data.test) scores both sides")
    ap.add_argument("--pair", action="append", required=True, metavar="SEED=STUDENT:BASELINE")
    ap.add_argument("--names", default="student,baseline", help="what the two sides are called in the report")
    ap.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args()

    import numpy as np
    from transformers import AutoModelForSequenceClassification

    from ftexport.core.hf import load_tokenizer, predict_logits
    from ftexport.core.machine import machine_info
    from ftexport.core.tables import markdown_table
    from ftexport.data import load_data
    from ftexport.recipe import load_recipe
    from ftexport.train.distill import seed_table

    recipe = load_recipe(args.recipe)
    runs: dict[int, dict[str, Path]] = {}
    for spec in args.pair:
        try:
            seed, sides = spec.split("=", 1)
            student, baseline = sides.split(":", 1)
            runs[int(seed)] = {"student": Path(student), "baseline": Path(baseline)}
        except ValueError:
            ap.error(f"--pair {spec!r}: write SEED=STUDENT_DIR:BASELINE_DIR, e.g. 42=runs/a/kd:runs/b/baseline")
    for dirs in runs.values():
        for path in dirs.values():
            if not (path / "config.json").is_file():
                ap.error(f"--pair: {path} is not a model folder (no config.json)")
    test = load_data(recipe.data, ("train", "test"))["test"]
    gold = np.asarray(test.labels)
    max_len = recipe.model.max_length
    first = {}  # seed_table scores every seed but the first, whose right/wrong it is given
    for name, path in next(iter(runs.values())).items():
        model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        first[name] = predict_logits(model, load_tokenizer(path, name), test.texts, max_len).argmax(-1) == gold
    table = seed_table(runs, test.texts, test.labels, max_len, first)
    shown = dict(zip(("student", "baseline"), args.names.split(","), strict=True))
    report = {"recipe": args.recipe, "test": recipe.data.test, "names": shown, "pairs": args.pair, **table, "machine": machine_info()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")

    def score(acc: float, dev: float | None, std: float | None = None) -> str:
        spread = f" ± {100 * std:.2f}" if std is not None else ""
        return f"{100 * acc:.2f}%{spread}" + (f" ({100 * dev:.2f}% dev)" if dev is not None else "")

    rows = []
    for seed, row in table["per_seed"].items():
        p = row["student_vs_baseline"]
        only = f"{p['student_only_right']} / {p['baseline_only_right']}; p = {p['mcnemar_p']:.2f}"
        diff = 100 * (row["student_accuracy"] - row["baseline_accuracy"])
        sides = [score(row[f"{n}_accuracy"], row.get(f"{n}_dev_accuracy")) for n in ("student", "baseline")]
        rows.append([seed, *sides, f"{diff:+.2f} ({only})"])
    means = [score(table[n]["mean"], table[n].get("dev_accuracy_mean"), table[n]["std"]) for n in ("student", "baseline")]
    ahead = f"ahead for {table['seeds_student_ahead']} of {len(runs)}"
    rows.append(["mean", *means, f"{100 * table['mean_student_minus_baseline']:+.2f} ({ahead})"])
    head = ["seed", shown["student"], shown["baseline"], "difference (only-one-right; McNemar p)"]
    command = f"python tools/paired_seeds.py {args.recipe} " + " ".join(f"--pair {p}" for p in args.pair) + f" --out {args.out}"
    md = f"# Paired seeds on {recipe.data.test}\n\n`{command}`\n\n" + markdown_table(head, rows) + "\n"
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
