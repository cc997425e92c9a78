"""The transfer file for distilling with `data.dev_holdout: sentences` from the committed teacher
outputs (recipes/teachers/mpnet-sst2.npz), with no teacher model at hand.

With the dev sentences' 6,485 phrases out of the training split, distill.augment would draw its
20,000 word-replaced texts from a smaller pool, and those are texts the teacher file has never
seen. This writes the texts the file does cover instead: recipes/distill.yaml's own 20,000
augmented texts, less every one that could be a word swap of a held-out phrase (same length, each
word equal or one of that word's replacement candidates), plus the texts of validation.tsv
(load_unlabeled and student_texts leave out dev, test and the dev sentences' phrases as always).
A recipe then reads it as distill.unlabeled with distill.augment off.

    FTEXPORT_DATA=... python docs/results/holdout-transfer.py recipes/distill.yaml OUT.tsv
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

from ftexport.core.hf import model_folder
from ftexport.data import load_data
from ftexport.recipe import load_recipe
from ftexport.train.distill import embedding_neighbours, student_texts


def main(recipe_path: str, out: str) -> None:
    recipe = load_recipe(recipe_path)
    a = recipe.distill.augment
    assert a is not None and a.join == 0 and a.replace == 1.0, "this file stands in for word replacement only"
    full = load_data(recipe.data, ("train", "validation", "test"))
    held = recipe.model_copy(update={"data": recipe.data.model_copy(update={"dev_holdout": "sentences"})})
    kept = set(load_data(held.data, ("train", "validation", "test"))["train"].texts)
    train_texts = full["train"].texts
    gone = [t.split() for t in dict.fromkeys(train_texts) if t not in kept]
    augmented = student_texts(recipe, full)["augmented"]  # what `ftexport distill recipes/distill.yaml` augments (the file labels)
    near = embedding_neighbours(model_folder(recipe.model.path), {w for t in train_texts for w in t.split()}, a.neighbours)
    by_len: dict[int, list[list[str]]] = defaultdict(list)
    for words in gone:
        by_len[len(words)].append(words)

    def from_gone(text: str) -> bool:
        words = text.split()
        return any(all(w == s or w in near.get(s, ()) for w, s in zip(words, src, strict=True)) for src in by_len.get(len(words), ()))

    keep = [t for t in augmented if not from_gone(t)]
    with open(recipe.unlabeled_path(), newline="") as f:
        dev_file = [row[recipe.data.text_column] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    with open(out, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None)
        w.writerow(["sentence"])
        for t in dev_file + keep:
            w.writerow([t])
    print(
        f"{len(gone)} held-out phrases; {len(augmented)} augmented texts, {len(augmented) - len(keep)} could come from them, "
        f"{len(keep)} kept; {len(dev_file)} texts of {recipe.unlabeled_path().name}; wrote {out}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
