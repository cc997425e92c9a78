"""Training throughput: the recipe's training with length-grouped dynamic padding against the
same training with every text padded to model.max_length (what a hand-written loop with
`padding="max_length"` does), same data, steps and machine, in one run.

    python tools/train_throughput.py recipes/quickstart.yaml --steps 60 --out docs/results/train-throughput-cpu

Reports samples/s of each and their ratio (issue 8's GPU target: at least 1.5x). On a CUDA
machine both runs use what `ftexport train` picks there (bf16 or fp16 autocast, TF32, fused
AdamW); the only difference between the two rows is padding and length grouping.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

SETTINGS = {
    "max_length padding": {"padding": "max_length", "group_by_length": False},
    "dynamic padding, length-grouped": {"padding": "longest", "group_by_length": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args()

    from ftexport.core.machine import machine_info
    from ftexport.recipe import load_recipe, parse_recipe
    from ftexport.train.trainer import train

    base = load_recipe(args.recipe)
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    rows = []
    for name, setting in SETTINGS.items():
        data = base.model_dump(by_alias=True)
        data["data"]["max_train_samples"] = args.steps * base.training.batch_size
        data["data"]["validation"] = None  # time training only
        data["training"].update(
            max_steps=args.steps, epochs=1, eval_steps=None, early_stopping_patience=None, device=args.device, **setting
        )
        out = work / name.replace(" ", "_").replace(",", "")
        record = train(parse_recipe(data), out, quiet=True)
        m = record["metrics"]
        rows.append(
            {
                "setting": name,
                **setting,
                "samples_per_s": m["train_samples_per_second"],
                "runtime_s": m["train_runtime_s"],
                "steps": m["steps"],
                "device": m["device"],
                "precision": m["precision"],
                "tf32": m["tf32"],
                "optimizer": m["optimizer"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    ratio = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    report = {
        "recipe": args.recipe,
        "model": base.model.path,
        "max_length": base.model.max_length,
        "batch_size": base.training.batch_size,
        "steps": args.steps,
        "machine": machine_info(),
        "rows": rows,
        "speedup": ratio,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    machine = report["machine"]
    where = rows[0]["device"] if rows[0]["device"] != "cpu" else machine.get("cpu", "CPU")
    lines = [
        f"Training throughput, {base.model.path}, batch {base.training.batch_size}, max_length {base.model.max_length}, "
        f"{args.steps} steps per row, on {where} ({rows[0]['precision']}, TF32 {rows[0]['tf32']}, {rows[0]['optimizer']}).",
        "",
        "| padding | samples/s | time s |",
        "|---|---|---|",
    ]
    lines += [f"| {r['setting']} | {r['samples_per_s']:.1f} | {r['runtime_s']:.1f} |" for r in rows]
    lines += ["", f"Dynamic, length-grouped padding: **{ratio:.2f}x** the samples/s of max_length padding."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
