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
ftexport.json training record, or REPORT.json#SIDE: that seed's `student` or `baseline` side
as an earlier report of this tool (or a distill.json's `seeds`) scored it on the same test
split, from the right/wrong per text it keeps. So a run of one session pairs with a run of
another whose model folder is gone (`runs/` does not always survive), e.g.

    --pair 44=runs/e4/.s44.work/kd:docs/results/distill-xeon-4ep-nokd.json#student

A pair with one side (SEED=DIR, one name in --names) scores that side alone and keeps its
per-text results for a later pairing: students without KD trained in one session, say, for
the distilled students of the next.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="the recipe whose test split (data.test) scores both sides")
    ap.add_argument(
        "--pair", action="append", required=True, metavar="SEED=STUDENT[:BASELINE]", help="SEED=DIR: one side, kept to pair later"
    )
    ap.add_argument("--names", default="student,baseline", help="what the two sides are called in the report")
    ap.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    specs: dict[int, dict[str, tuple[str, str]]] = {}
    for spec in args.pair:
        try:
            seed, sides = spec.split("=", 1)
            student, sep, baseline = sides.partition(":")
            if not student or (sep and not baseline):
                raise ValueError
            # each side: a model folder, or (report, side name) for REPORT.json#SIDE
            specs[int(seed)] = {role: side.partition("#")[::2] for role, side in (("student", student), ("baseline", baseline)) if side}
        except ValueError:
            ap.error(f"--pair {spec!r}: write SEED=STUDENT_DIR:BASELINE_DIR (or SEED=DIR for one side), e.g. 42=runs/a/kd:runs/b/baseline")
    if len({len(sides) for sides in specs.values()}) > 1:
        ap.error("--pair: give every seed two sides, or every seed one")
    two = len(next(iter(specs.values()))) == 2
    names = [n.strip() for n in args.names.split(",")] if two or args.names != ap.get_default("names") else ["student"]
    if len(names) != (2 if two else 1) or not all(names):
        want = "the two sides' names, comma-separated, e.g. 'distilled,no KD'" if two else "one name for the one side, e.g. 'no KD'"
        ap.error(f"--names {args.names!r}: give {want}")

    from ftexport.core.errors import FtexportError, ModelError
    from ftexport.core.machine import machine_info
    from ftexport.data import load_data
    from ftexport.recipe import load_recipe
    from ftexport.train.distill import SHIP_RULES, ScoredSide, seed_table, seeds_markdown, shipped_seed, split_sha256

    recipe = load_recipe(args.recipe)
    for sides in specs.values():
        for path, name in sides.values():
            if name and name not in ("student", "baseline"):
                ap.error(f"--pair: {path}#{name}: after '#' name the report's side, student or baseline")
            if name and not Path(path).is_file():
                ap.error(f"--pair: {path} is not a file (REPORT.json#SIDE reads an earlier report)")
            if not name and not (Path(path) / "config.json").is_file():
                ap.error(f"--pair: {path} is not a model folder (no config.json)")
    test = load_data(recipe.data, ("train", "test"))["test"]
    split = split_sha256(test.texts, test.labels)
    metric = recipe.training.metric
    reports: dict[str, dict] = {}
    runs: dict[int, dict[str, Path | ScoredSide]] = {}
    try:
        for seed, sides in specs.items():
            runs[seed] = {}
            for role, (path, name) in sides.items():
                if not name:
                    runs[seed][role] = Path(path)
                    continue
                if path not in reports:
                    try:
                        loaded = json.loads(Path(path).read_text())
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise ModelError(f"{path}: not a JSON report ({e}); give this tool's OUT.json or a distill.json") from None
                    loaded = loaded if isinstance(loaded, dict) else {}
                    reports[path] = loaded.get("seeds", loaded)  # a distill.json keeps the table under "seeds"
                runs[seed][role] = ScoredSide.from_report(reports[path], seed, name, f"{path}#{name}", split, metric)
        table = seed_table(runs, test.texts, test.labels, recipe.model.max_length, metric=metric)
    except FtexportError as e:
        raise SystemExit(f"error: {e}") from None
    shown = dict(zip(("student", "baseline")[: len(names)], names, strict=True))
    rule = recipe.distill.ship if recipe.distill else "first"
    ship = {"seed": shipped_seed(runs, rule, metric), "rule": rule}  # the student the recipe's rule would output
    report = {"recipe": args.recipe, "test": recipe.data.test, "names": shown, "pairs": args.pair, **table, "shipped_seed": ship}
    report["machine"] = machine_info()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")

    named = "" if args.names == ap.get_default("names") else f" --names {shlex.quote(args.names)}"
    command = f"python tools/paired_seeds.py {args.recipe} " + " ".join(f"--pair {p}" for p in args.pair) + f"{named} --out {args.out}"
    lines = seeds_markdown(table, f"Test accuracy ({recipe.data.test}) per seed", (shown["student"], shown.get("baseline", "")))
    side = f"the {shown['student']} side of seed {ship['seed']}"
    lines.append(f"\nThe recipe's output (distill.ship: {rule}, {SHIP_RULES[rule]}) would be {side}.")
    md = f"# Paired seeds\n\n`{command}`\n\n" + "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
