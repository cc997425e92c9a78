"""Cold start of ftexport-runtime on two or more bundles, interleaved process by process so
that the machine's drift hits every bundle alike; prints each one's median and its ratio to
the first (the baseline).

    python tools/coldstart_ab.py old=runs/quickstart-old/bundle new=runs/quickstart/bundle \
        [--repeats 15] [--json out.json]

Each sample is tools/footprint.py's ftexport-runtime child: import + load (every file's
sha256 checked) + first prediction, timed inside a fresh Python process.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from footprint import cold_start  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundles", nargs="+", metavar="NAME=PATH", help="the first is the baseline")
    ap.add_argument("--repeats", type=int, default=15, help="cold starts per bundle, alternating (at least 1)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {a.repeats}")
    pairs: dict[str, str] = {}
    for arg in a.bundles:
        name, sep, path = arg.partition("=")
        if not sep or not name or not path:
            ap.error(f"{arg!r}: give each bundle as NAME=PATH")
        if name in pairs:
            ap.error(f"{name!r} is given twice; name each bundle once")
        pairs[name] = path
    seconds: dict[str, list[float]] = {name: [] for name in pairs}
    for _ in range(a.repeats):
        for name, path in pairs.items():
            r = cold_start("ftexport-runtime", [path, "a wonderful, moving film"], 1)
            if "error" in r:
                sys.exit(f"error: {name} ({path}): {r['error']}")
            seconds[name].append(r["seconds"])
    base = statistics.median(seconds[next(iter(pairs))])
    from ftexport.core.machine import machine_info

    out = {"machine": machine_info(), "python": platform.python_version(), "repeats": a.repeats, "bundles": {}}
    for name, values in seconds.items():
        med = statistics.median(values)
        out["bundles"][name] = {
            "path": pairs[name],
            "median_s": round(med, 4),
            "ratio": round(med / base, 3),
            "all_s": [round(v, 4) for v in values],
        }
        print(f"{name:>12}: median {med:.3f} s  ({med / base:.2f}x)  {pairs[name]}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
