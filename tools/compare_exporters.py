"""Optimum's exporter against the torch exporter on one model, in one run: the same merged
model exported both ways, each bundle given the fp32, fused (O2) and dynamic int8 variants,
each variant judged on the recipe's test split (accuracy, parity with PyTorch) and timed at
batch 1 x 128 tokens and on real-traffic batch 1, all variants interleaved round by round.

    python tools/compare_exporters.py recipes/quickstart.yaml runs/quickstart/merged --out docs/results/exporters-quickstart.json

Needs the Optimum stack (both exporters run there).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("model", help="the merged model folder (runs/NAME/merged)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--iterations", type=int, default=60, help="timed calls per cell, over all rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from ftexport_runtime import Bundle, Predictor

    from ftexport.core.machine import default_threads, machine_info
    from ftexport.core.timing import cycle, summarize, time_calls
    from ftexport.export.quantize import quantize
    from ftexport.export.stage import export
    from ftexport.judge.parity import validate
    from ftexport.recipe import QuantizeSection, load_recipe
    from ftexport.tasks import get_task
    from ftexport.tasks.encoder import texts_of_length

    recipe = load_recipe(args.recipe)
    task = get_task(recipe.task)
    threads = args.threads or default_threads()
    work = Path(tempfile.mkdtemp(prefix="exporters-"))
    rows: dict[str, dict] = {}
    predictors = {}
    for exporter in ("optimum", "torch"):
        onnx_dir = work / exporter / "onnx"
        export(args.model, onnx_dir, recipe.export.opset, name=recipe.name, exporter=exporter)
        quantize(onnx_dir, work / exporter / "int8", QuantizeSection(modes=["dynamic"]))
        quantize(onnx_dir, work / exporter / "fused", QuantizeSection(modes=[], optimize="O2"))
        for variant, bundle, name in (
            ("fp32", onnx_dir, "fp32"),
            ("opt", work / exporter / "fused", "fused O2"),
            ("int8", work / exporter / "int8", "int8"),
        ):
            key = f"{exporter} {name}"
            report = validate(
                bundle,
                args.model,
                recipe.data,
                recipe.validate_.gates(),
                work / exporter / f"parity-{variant}",
                "test",
                recipe.validate_.batch_size,
                ["cpu"],
                variants=[variant],
            )
            v = report["variants"][variant]
            rows[key] = {
                "exporter": exporter,
                "variant": name,
                "accuracy": v["accuracy"],
                "agreement": v["agreement"],
                "max_logit_diff": v["max_logit_diff"],
                "passed": v["passed"],
                "bytes": (bundle / Bundle.open(bundle).manifest.variants[variant].file).stat().st_size,
                "reference_accuracy": report["reference"]["accuracy"],
            }
            predictors[key] = Predictor.from_bundle(bundle, variant=variant, threads=threads)
    # the same inputs for every variant: 8 texts of exactly 128 tokens, and 8 held-out batches of 1
    from ftexport.data import load_data

    pool = load_data(recipe.data.model_copy(update={"max_test_samples": 512}), ("test",), labelled=task.labelled)["test"].texts
    first = next(iter(predictors.values()))
    cells = {"b1x128": [[t] for t in texts_of_length(first, 128, 8, pool)], "b1 real": [[t] for t in random.Random(0).sample(pool, 8)]}
    times: dict[tuple[str, str], list[float]] = {(k, c): [] for k in predictors for c in cells}
    names = list(predictors)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for key in order:
            for cell, batches in cells.items():
                times[(key, cell)] += time_calls(cycle(predictors[key].predict, batches), 3, max(1, args.iterations // args.rounds))
    for (key, cell), t in times.items():
        rows[key][f"p50_ms_{cell.replace(' ', '_')}"] = summarize(t, 1)["p50_ms"]
    for row in rows.values():
        peer = rows[f"optimum {row['variant']}"]
        row["p50_vs_optimum_b1x128"] = row["p50_ms_b1x128"] / peer["p50_ms_b1x128"]
    out = {
        "machine": machine_info(),
        "threads": threads,
        "model": str(args.model),
        "recipe": args.recipe,
        "split": "test",
        "examples": len(load_data(recipe.data, ("test",), labelled=task.labelled)["test"]),
        "rounds": args.rounds,
        "iterations": args.iterations,
        "rows": list(rows.values()),
        "command": f"python tools/compare_exporters.py {args.recipe} {args.model} --out {args.out}",
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows.values()], indent=1))


if __name__ == "__main__":
    main()
