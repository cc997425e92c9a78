"""`ftexport merge`: fold a LoRA, AdaLoRA or IA3 adapter into dense weights (peft's
merge_and_unload) and prove it: merged and unmerged models must give the same logits on a batch.

A full or BitFit fine-tune needs no merge, and prefix or prompt tuning cannot be merged
(their virtual tokens are not weights of the base model): both are passed through (hard
links) so the pipeline has one shape whatever the method. `export` traces an unmerged
adapter as it is (see ftexport/export/trace.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core import progress
from ..core.artifacts import RECORD, StageRecord, key_of, link_tree, make_key, read_record, stage_dir
from ..core.errors import GateFailed, ModelError
from ..core.hf import check_model_dir, load_tokenizer
from ..tasks import get_task
from .methods import DENSE, MERGEABLE

# fp32 max |logit difference| allowed between merged and unmerged: 1e-4, or 1e-5 of the
# largest logit when that is larger (a 30-layer language model with a 49k vocabulary has
# logits in the tens and differs by ~1e-4 from float rounding alone; an unfaithful merge,
# such as a wrong adapter scale, differs by tenths)
MERGE_TOLERANCE, MERGE_RELATIVE_TOLERANCE = 1e-4, 1e-5


def probe_batch(tokenizer: Any, texts: list[str] | None = None, seed: int = 0) -> dict[str, Any]:
    """A batch with real padding: given texts, or random vocabulary ids of several lengths."""
    import torch

    if texts:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    g = torch.Generator().manual_seed(seed)
    lengths = [32, 24, 16, 8, 5, 3, 12, 30]
    ids = torch.full((len(lengths), max(lengths)), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    low = max(tokenizer.all_special_ids or [0]) + 1
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(low, len(tokenizer), (n,), generator=g)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def merge_key(train_dir: Path) -> str:
    return make_key("merge", key_of(train_dir))


def merge(train_dir: str | Path, output: str | Path, texts: list[str] | None = None) -> StageRecord:
    """Write a dense save_pretrained model to `output`; raise GateFailed if merging changed logits."""
    train_dir, output = Path(train_dir), Path(output)
    record = read_record(train_dir)
    if record is None or record.stage not in ("train", "distill"):  # a distilled student is a full fine-tune
        raise ModelError(f"{train_dir}: not a train stage output (no {RECORD} from `ftexport train` or `ftexport distill`)")
    key = merge_key(train_dir)
    labels = record.labels or []
    method = record.method or "lora"
    if method not in MERGEABLE:
        adapter = method not in DENSE
        why = (
            "cannot be merged into dense weights, passing the adapter through to export"
            if adapter
            else "nothing to merge (passing the model through)"
        )
        progress.step(f"merge: {method} {why}")
        if not adapter:
            check_model_dir(train_dir, "train dir")
        with stage_dir(output) as tmp:
            link_tree(train_dir, tmp)
            done = StageRecord(
                "merge",
                key,
                {"train": record.key},
                {"merged": False},
                {},
                labels=labels,
                task=record.task,
                max_length=record.max_length,
                method=method,
                base_model=record.base_model,
                trust_remote_code=record.trust_remote_code,
            ).write(tmp)
        return done

    from peft import PeftModel

    progress.step(f"merge: folding the {method} adapter into {record.base_model}")
    task = get_task(record.task or "")
    base = Path(record.base_model or "")
    check_model_dir(base, "base model")
    tokenizer = load_tokenizer(train_dir, "train dir")
    model = task.load_model(base, labels, record.trust_remote_code)
    peft_model = PeftModel.from_pretrained(model, str(train_dir)).eval()
    batch = probe_batch(tokenizer, texts)
    import torch

    with torch.inference_mode():
        before = peft_model(**batch).logits.float().clone()
    merged = peft_model.merge_and_unload().eval()
    with torch.inference_mode():
        after = merged(**batch).logits.float()
    diff = float((before - after).abs().max())
    tolerance = max(MERGE_TOLERANCE, MERGE_RELATIVE_TOLERANCE * float(before.abs().max()))
    progress.info(f"merged vs unmerged max |logit diff| = {diff:.2e} (tolerance {tolerance:.1e})")
    if not diff <= tolerance:
        raise GateFailed(f"merge: merged model differs from the adapter model by {diff:.3g} > {tolerance:.3g}; the merge is not faithful")
    with stage_dir(output) as tmp:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        task.save_extras(train_dir, tmp)
        done = StageRecord(
            "merge",
            key,
            {"train": record.key},
            {"merged": True},
            {"max_logit_diff": diff},
            labels=labels,
            task=record.task,
            max_length=record.max_length,
            method=method,
        ).write(tmp)
    return done
