"""Training precision A/B: one recipe trained several times in one process, each time with one
TrainingArguments setting changed (bf16 autocast, fused AdamW, TF32), same data, seed and steps.

    python docs/results/precision-ab.py recipes/quickstart.yaml --samples 20000 --out docs/results/X.json

What found that bf16 autocast makes the quickstart's LoRA collapse on an H200 (the first variant
pays the process's CUDA warm-up, so compare samples/s from the second on). Early stopping is
off so every variant trains the whole schedule; dev rows and eval steps are the recipe's.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# TrainingArguments overrides; "tf32" is ftexport's own switch (TF32 inside training alone).
VARIANTS = {
    "recipe's (auto)": {},
    "bf16 autocast": {"bf16": True},
    "bf16 autocast + adamw_torch (not fused)": {"bf16": True, "optim": "adamw_torch"},
    "fp32 TF32 off": {"tf32": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("--samples", type=int, default=20000, help="data.max_train_samples")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--out", required=True, help="JSON report")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import TrainingArguments

    from ftexport.core.machine import machine_info
    from ftexport.recipe import load_recipe
    from ftexport.train import trainer

    overrides: dict = {}
    original = TrainingArguments.__init__

    @functools.wraps(original)
    def init(self, *a, **k):
        original(self, *a, **{**k, **overrides})

    TrainingArguments.__init__ = init
    data = yaml.safe_load(Path(args.recipe).read_text())
    data["data"]["max_train_samples"] = args.samples
    data["training"]["early_stopping_patience"] = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(data))
        recipe = load_recipe(path)
        for i, name in enumerate(args.variants.split(",")):
            overrides.clear()
            overrides.update({k: v for k, v in VARIANTS[name].items() if k != "tf32"})
            wanted = trainer.tf32_wanted
            if "tf32" in VARIANTS[name]:
                trainer.tf32_wanted = lambda device, on=VARIANTS[name]["tf32"]: on
            try:
                m = trainer.train(recipe, Path(tmp) / f"v{i}", quiet=True)["metrics"]
            finally:
                trainer.tf32_wanted = wanted
            if VARIANTS[name].get("bf16"):
                m["precision"] = "bf16"  # set here, past the recipe's mixed_precision
            rows.append({"variant": name, "overrides": VARIANTS[name], **m})
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "recipe": args.recipe,
        "max_train_samples": args.samples,
        "machine": machine_info(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
