"""Where an ONNX model spends its time on the CPU: each operator type's share of one batch-1 x
128-token call, from ONNX Runtime's profiler (30 calls after loading, two threads).

    python tools/profile_ops.py runs/q/model.onnx runs/q/model.int8.onnx

Prints, per model, the total kernel time per call and the eight costliest operator types. The
profiler's raw JSON (prof_MODEL_*.json) is written to --profile-dir and removed unless --keep.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

CALLS = 30


def profile(path: Path, where: Path) -> collections.Counter:
    o = ort.SessionOptions()
    o.intra_op_num_threads = 2
    o.enable_profiling = True
    o.profile_file_prefix = str(where / f"prof_{path.name}")
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    feeds = {
        "input_ids": np.random.randint(1000, 20000, (1, 128)).astype(np.int64),
        "attention_mask": np.ones((1, 128), np.int64),
        "token_type_ids": np.zeros((1, 128), np.int64),
    }
    feeds = {k: v for k, v in feeds.items() if k in names}
    for _ in range(CALLS):
        s.run(None, feeds)
    with open(s.end_profiling()) as f:
        events = json.load(f)
    agg: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            agg[e["args"]["op_name"]] += e["dur"]
    return agg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="ONNX model files (an encoder taking input_ids, attention_mask[, token_type_ids])")
    ap.add_argument("--profile-dir", type=Path, help="where the profiler's JSON goes [default: a temporary folder]")
    ap.add_argument("--keep", action="store_true", help="keep the profiler's JSON files")
    a = ap.parse_args()
    missing = [str(p) for p in a.models if not p.is_file()]
    if missing:
        sys.exit(f"error: no such ONNX file: {', '.join(missing)}")
    with tempfile.TemporaryDirectory() as scratch:
        where = a.profile_dir or Path(scratch)
        where.mkdir(parents=True, exist_ok=True)
        for p in a.models:
            agg = profile(p, where)
            print(p, "total ms/run", sum(agg.values()) / CALLS / 1000)
            for k, v in agg.most_common(8):
                print(f"  {k:28s} {v / CALLS / 1000:7.2f} ms")
            if not a.keep:
                for f in where.glob(f"prof_{p.name}*.json"):
                    os.remove(f)


if __name__ == "__main__":
    main()
