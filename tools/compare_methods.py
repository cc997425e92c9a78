"""Train the same model with every fine-tuning method on the same data and budget, and
report what each trains and how it scores: trainable-parameter share, training time and
test accuracy (PyTorch, the unmerged model). One table, one run, one machine.

    python tools/compare_methods.py recipes/quickstart.yaml --train-samples 2000 \\
        --out docs/results/methods-sst2

Each method keeps the recipe's other settings except its learning rate (`--lr METHOD=LR`
overrides; the defaults in DEFAULT_LR are the usual ranges: 1e-3 to 3e-2 for adapters and
virtual tokens, 5e-5 for full weights).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

DEFAULT_LR = {"full": 5e-5, "bitfit": 1e-3, "lora": 2e-3, "adalora": 2e-3, "ia3": 5e-3, "prefix": 1e-2, "prompt": 3e-2}
METHODS = list(DEFAULT_LR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--train-samples", type=int, default=2000)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", action="append", default=[], metavar="METHOD=LR")
    ap.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args()

    import numpy as np

    from ftexport.core.hf import load_reference, load_tokenizer, predict_logits
    from ftexport.core.machine import machine_info
    from ftexport.data import load_data
    from ftexport.recipe import load_recipe, parse_recipe
    from ftexport.tasks import get_task
    from ftexport.train.trainer import train

    lrs = {**DEFAULT_LR, **{k: float(v) for k, v in (x.split("=", 1) for x in args.lr)}}
    base = load_recipe(args.recipe)
    task = get_task(base.task)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="methods-"))
    for name in args.methods.split(","):
        data = base.model_dump(by_alias=True)
        data["method"] = {"name": name, "r": 16, "alpha": 32, "dropout": 0.0, "target_r": 8}
        data["data"]["max_train_samples"] = args.train_samples
        data["training"].update(lr=lrs[name], epochs=args.epochs, early_stopping_patience=None, eval_steps=None)
        recipe = parse_recipe(data)
        out = work / name
        t0 = time.monotonic()
        record = train(recipe, out, quiet=True)
        seconds = time.monotonic() - t0
        test = load_data(recipe.data.model_copy(update={"label_names": record["labels"]}), ("test",))["test"]
        model = load_reference(out, task)
        logits = predict_logits(model, load_tokenizer(out), test.texts, recipe.model.max_length)
        scores = task.metrics(logits, np.asarray(test.labels), len(record["labels"]))
        params = record["metrics"]["trainable_parameters"]
        rows.append(
            {
                "method": name,
                "lr": lrs[name],
                "trainable": params["trainable"],
                "share": params["share"],
                "train_s": round(seconds, 1),
                "steps": record["metrics"]["steps"],
                **scores,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    report = {
        "recipe": args.recipe,
        "model": base.model.path,
        "train_samples": args.train_samples,
        "epochs": args.epochs,
        "test_examples": len(test.texts),
        "machine": machine_info(),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"Fine-tuning methods on {base.model.path}: {args.train_samples} training examples, {args.epochs:g} epoch, "
        f"test accuracy on {len(test.texts)} examples (PyTorch, unmerged). Machine: {report['machine'].get('cpu', '?')}.",
        "",
        "| method | lr | trainable params | share | train s | test accuracy |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['lr']:g} | {r['trainable']:,} | {100 * r['share']:.2f}% | {r['train_s']:.0f} | {100 * r['accuracy']:.2f} |"
        for r in rows
    ]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
