"""A/B latency of two ftexport checkouts on the same bundle: `ftexport bench` with each, in
turn, N times (A B A B ...), so drift on a shared machine lands on both; then each cell's p50
per run and the change of the medians. Used to check a refactoring for regressions.

    python tools/ab_bench.py --old ../old-checkout --bundle runs/quickstart/bundle \
        --reference runs/quickstart/merged --recipe recipes/quickstart.yaml --runs 3 --out docs/results/ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the other checkout (its ftexport/ and runtime/ go first on PYTHONPATH)")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ab-"))
    old = Path(args.old).resolve()
    env_old = {**os.environ, "PYTHONPATH": f"{old}:{old / 'runtime'}"}
    cells: dict[str, dict[str, list[float]]] = {}
    for i in range(args.runs):
        for tag, env, cwd in (("old", env_old, work), ("new", dict(os.environ), Path.cwd())):
            out = work / f"{tag}{i}"
            cmd = [
                sys.executable,
                "-m",
                "ftexport.cli",
                "-q",
                "bench",
                str(Path(args.bundle).resolve()),
                "--reference",
                str(Path(args.reference).resolve()),
                "--recipe",
                str(Path(args.recipe).resolve()),
                "--no-cold-start",
                "--repeats",
                str(args.repeats),
                "-o",
                str(out),
            ]
            subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True)
            for r in json.loads((out / "bench.json").read_text())["results"]:
                cells.setdefault(f"{r['backend']} b{r['batch']} s{r['seq_len']}", {}).setdefault(tag, []).append(r["p50_ms"])
    rows = [
        {
            "cell": c,
            "old_p50_ms": v["old"],
            "new_p50_ms": v["new"],
            "median_change": statistics.median(v["new"]) / statistics.median(v["old"]) - 1,
        }
        for c, v in cells.items()
    ]
    machine = json.loads((work / "new0" / "bench.json").read_text())["machine"]
    Path(args.out).write_text(
        json.dumps({"command": " ".join(sys.argv), "machine": machine, "runs": args.runs, "repeats": args.repeats, "cells": rows}, indent=2)
        + "\n"
    )
    for r in rows:
        print(f"{r['cell']:28s} {r['median_change']:+.1%}")


if __name__ == "__main__":
    main()
