"""The runtime's footprint against what a user would reach for instead.

    python tools/footprint.py --bundle runs/quickstart/bundle --model runs/quickstart/merged \
        [--slim-bundle runs/quickstart/bundle-int8] [--repeats 5] [--json out.json]

Installed size: the dependency closure of each stack, read from the installed distributions'
RECORD files in this environment (what `pip install` put on disk).
  - ftexport-runtime: onnxruntime + tokenizers + numpy and what they pull in
  - transformers pipeline on PyTorch: torch + transformers and what they pull in
  - Optimum ORTModel: optimum-onnx[onnxruntime] and what it pulls in
  - with --torch-python PY: torch + transformers as installed in another environment, e.g.
    one made by a plain `pip install torch transformers` (on Linux x86-64 that is the CUDA
    build of torch, with its nvidia-* libraries: what a user gets by default)

Cold start: import + load + first prediction of one text, timed inside a fresh Python
process (so the interpreter's own start is left out, as an embedding app already runs),
median over --repeats processes; the process's wall time from spawn to exit is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

TEXT = "a wonderful, moving film"

STACKS = {
    "ftexport-runtime": ["ftexport-runtime"],
    "transformers pipeline (PyTorch)": ["torch", "transformers"],
    "Optimum ORTModel": ["optimum-onnx", "onnxruntime"],
}

# Each child prints {"seconds": import + load + first answer, "label": ..., "torch_loaded": bool}
CHILDREN = {
    "ftexport-runtime": """
import time, sys, json; t = time.perf_counter()
from ftexport_runtime import Predictor
p = Predictor.from_bundle(sys.argv[1])
label = p.predict([sys.argv[2]])[0].label
print(json.dumps({"seconds": time.perf_counter() - t, "label": label, "torch_loaded": "torch" in sys.modules}))
""",
    "transformers pipeline (PyTorch)": """
import time, sys, json; t = time.perf_counter()
from transformers import pipeline
clf = pipeline("text-classification", model=sys.argv[1], device=-1)
label = clf([sys.argv[2]])[0]["label"]
print(json.dumps({"seconds": time.perf_counter() - t, "label": label, "torch_loaded": "torch" in sys.modules}))
""",
    "Optimum ORTModel": """
import time, sys, json; t = time.perf_counter()
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer
model = ORTModelForSequenceClassification.from_pretrained(sys.argv[1], file_name=sys.argv[3])
tok = AutoTokenizer.from_pretrained(sys.argv[1])
logits = model(**tok([sys.argv[2]], return_tensors="pt")).logits
label = model.config.id2label[int(logits.argmax(-1)[0])]
print(json.dumps({"seconds": time.perf_counter() - t, "label": label, "torch_loaded": "torch" in sys.modules}))
""",
}


def closure(roots: list[str]) -> dict[str, int]:
    """Installed distributions reachable from `roots` through their requirements (extras
    only where a root names them), mapped to bytes on disk."""
    env = default_environment()
    seen: dict[str, int] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency that is not installed is not part of the footprint
        seen[name] = sum((f.size or 0) for f in dist.files or [])
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e}) for e in ("", *req.extras)):
                todo.append(sub)
    return seen


def closure_in(python: str, roots: list[str]) -> dict[str, int]:
    """closure(roots) as seen by another interpreter (another virtual environment)."""
    here = str(Path(__file__).parent)
    code = f"import sys, json; sys.path.insert(0, {here!r}); import footprint; print(json.dumps(footprint.closure(sys.argv[1:])))"
    proc = subprocess.run([python, "-c", code, *roots], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"--torch-python {python}: cannot read its installed packages ({(proc.stderr.strip().splitlines() or ['no output'])[-1]})")
    return json.loads(proc.stdout)


def _size(dists: dict[str, int]) -> dict[str, Any]:
    return {"bytes": sum(dists.values()), "distributions": len(dists), "largest": sorted(dists.items(), key=lambda kv: -kv[1])[:5]}


def installed_sizes(torch_python: str | None = None) -> dict[str, Any]:
    out = {stack: _size(closure(roots)) for stack, roots in STACKS.items()}
    if torch_python:
        dists = closure_in(torch_python, ["torch", "transformers"])
        if "torch" not in dists:
            sys.exit(f"--torch-python {torch_python}: torch is not installed there")
        out["transformers pipeline (PyTorch, default pip install)"] = {**_size(dists), "python": torch_python}
    return out


def cold_start(stack: str, args: list[str], repeats: int) -> dict[str, Any]:
    runs, walls = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", CHILDREN[stack], *args],
            capture_output=True,
            text=True,
            env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"},
        )
        walls.append(time.perf_counter() - t)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "all_seconds": [r["seconds"] for r in runs],
        "process_wall_s": statistics.median(walls),
        "label": runs[0]["label"],
        "torch_loaded": runs[0]["torch_loaded"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="an ftexport bundle (the runtime loads its default CPU variant)")
    ap.add_argument("--slim-bundle", help="the same model packed with `ftexport pack --variants int8`")
    ap.add_argument("--model", required=True, help="the PyTorch model directory the bundle was exported from")
    ap.add_argument("--onnx-file", default="model.int8.onnx", help="file in --bundle that Optimum's ORTModel loads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-python", help="python of another environment holding a default `pip install torch transformers`, sized too")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()

    sizes = installed_sizes(a.torch_python)
    runtime_bytes = sizes["ftexport-runtime"]["bytes"]
    starts = {"ftexport-runtime": cold_start("ftexport-runtime", [a.bundle, TEXT], a.repeats)}
    if a.slim_bundle:
        starts["ftexport-runtime (slim bundle)"] = cold_start("ftexport-runtime", [a.slim_bundle, TEXT], a.repeats)
    starts["transformers pipeline (PyTorch)"] = cold_start("transformers pipeline (PyTorch)", [a.model, TEXT], a.repeats)
    starts["Optimum ORTModel"] = cold_start("Optimum ORTModel", [a.bundle, TEXT, a.onnx_file], a.repeats)

    print("| stack | installed size MB | distributions | vs ftexport-runtime |\n|---|---|---|---|")
    for stack, s in sizes.items():
        print(f"| {stack} | {s['bytes'] / 2**20:.0f} | {s['distributions']} | {s['bytes'] / runtime_bytes:.1f}x |")
    print("\n| stack | cold start s (import + load + first answer) | process wall s | imports torch |\n|---|---|---|---|")
    for stack, c in starts.items():
        print(
            f"| {stack} | {c['seconds']:.3f} | {c['process_wall_s']:.3f} | {'yes' if c['torch_loaded'] else 'no'} |"
            if "error" not in c
            else f"| {stack} | failed: {c['error']} | | |"
        )
    if a.json:
        import platform

        from ftexport.core.machine import machine_info

        Path(a.json).write_text(
            json.dumps(
                {
                    "machine": machine_info(),
                    "python": platform.python_version(),
                    "repeats": a.repeats,
                    "installed": sizes,
                    "cold_start": starts,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
