"""Train only the no-KD side of a one-seed distill recipe, under the key `ftexport distill`
reuses: run it beside `ftexport distill` on a copy of the recipe with `baseline: false`, and the
two sides of a seed train at once instead of one after the other (two cores, one thread each).
A later `ftexport distill` of the recipe with `baseline: true` and the same -o finds this
baseline and does not train it again.

    OMP_NUM_THREADS=1 python docs/results/distill-baseline-only.py RECIPE OUT   # OUT as given to ftexport distill -o
"""

from __future__ import annotations

import sys
from pathlib import Path

from ftexport.core.hf import model_folder
from ftexport.data import fingerprint
from ftexport.recipe import load_recipe
from ftexport.train.distill import make_baseline_key, work_dir
from ftexport.train.trainer import train


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    recipe = load_recipe(sys.argv[1])
    if len(recipe.distill.seeds) != 1:
        raise SystemExit(f"{sys.argv[1]}: distill.seeds is {recipe.distill.seeds}; give a copy with one seed")
    seed = recipe.distill.seeds[0]
    student = model_folder(recipe.model.path).resolve()
    seeded = recipe.model_copy(
        update={
            "training": recipe.training.model_copy(update={"seed": seed}),
            "model": recipe.model.model_copy(update={"path": str(student)}),
        }
    )
    key = make_baseline_key(seeded, fingerprint(seeded.data), student, seeded.model.max_length)
    out = work_dir(Path(sys.argv[2])) / "baseline"
    print(f"baseline of seed {seed}, key {key} -> {out}", flush=True)
    train(seeded, out, key=key)


if __name__ == "__main__":
    main()
