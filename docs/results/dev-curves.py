"""Dev curves of training runs, read from the stderr logs `ftexport distill` / `ftexport train`
write (one "step N: dev accuracy X" line per evaluation), and what each stopping rule would
have kept. Runs are deterministic for a given seed (a run stopped by patience evaluates
exactly the first steps of the same run without it), so the checkpoint a patience would keep
is one of the no-early-stopping run's evaluations.

    python docs/results/dev-curves.py OUT.json NAME=LOG [NAME=LOG ...]

The Trainer's rules, mirrored: a checkpoint is a new best only when its dev score is strictly
higher; with patience p, training stops at the p-th evaluation in a row without a new best.
The last line of each log is the final evaluation of the checkpoint kept, not a step of the
curve, and is left out.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

LINE = re.compile(r"step (\d+): dev .*?accuracy (\d\.\d+)")


def curve(log: Path) -> list[tuple[int, float]]:
    text = log.read_text(errors="replace").replace("\r", "\n")
    points = [(int(s), float(a)) for s, a in LINE.findall(text)]
    if len(points) < 2:
        raise SystemExit(f"{log}: fewer than two 'step N: dev accuracy' lines; is it the log of a finished run?")
    return points[:-1]


def kept(points: list[tuple[int, float]], patience: int | None) -> dict[str, float | int]:
    best_step, best, waited, stop = points[0][0], points[0][1], 0, points[-1][0]
    for step, acc in points[1:]:
        if acc > best:
            best_step, best, waited = step, acc, 0
        else:
            waited += 1
            if patience is not None and waited >= patience:
                stop = step
                break
    return {"kept_step": best_step, "dev_accuracy": best, "stopped_at": stop}


def main() -> None:
    if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    runs = {}
    for arg in sys.argv[2:]:
        name, log = arg.split("=", 1)
        points = curve(Path(log))
        rules = {f"patience {p}": kept(points, p) for p in range(1, 9)}
        rules["no early stopping"] = kept(points, None)
        runs[name] = {"log": log, "curve": [{"step": s, "dev_accuracy": a} for s, a in points], "rules": rules}
    report = {"command": "python docs/results/dev-curves.py " + " ".join(sys.argv[1:]), "runs": runs}
    out.write_text(json.dumps(report, indent=1) + "\n")
    for name, run in runs.items():
        summary = "; ".join(
            f"{r}: {v['kept_step']} ({v['dev_accuracy']:.4f}, stop {v['stopped_at']})"
            for r, v in run["rules"].items()
            if r in ("patience 4", "patience 5", "no early stopping")
        )
        print(f"{name}: {summary}")


if __name__ == "__main__":
    main()
