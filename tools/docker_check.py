"""Build docker/runtime-cpu.Dockerfile with a bundle baked in, serve it, and check the
container answers every text of a TSV exactly as the host's ftexport-runtime does, that
Docker's own HEALTHCHECK reports healthy, and that the image holds no torch.

    python tools/docker_check.py --bundle runs/quickstart/bundle --texts ../shared/data/sst2/test.tsv \
        [--python-image local/python:3.11-slim-bookworm] [--json docs/results/docker-cpu.json]

The bundle must lie inside the repository (it is part of the build context).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHUNK = 32  # texts per request; the server's default max_batch, so one request is one model call


def docker(*args: str, timeout: float = 1500) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"error: docker {' '.join(args[:2])} failed: {last}")
    return proc.stdout.strip()


def post(base: str, texts: list[str]) -> list[str]:
    req = urllib.request.Request(
        f"{base}/v1/predict", data=json.dumps({"texts": texts}).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return [p["label"] for p in json.loads(r.read())["predictions"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, type=Path)
    ap.add_argument("--texts", required=True, type=Path, help="TSV with a 'sentence' column")
    ap.add_argument("--python-image", default=None, help="base image (build-arg PYTHON_IMAGE); default: the Dockerfile's")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    bundle = a.bundle.resolve()
    if not bundle.is_relative_to(REPO) or not (bundle / "manifest.json").is_file():
        sys.exit(
            f"error: --bundle {a.bundle}: not a bundle inside the repository ({REPO}); the build context is the repository, "
            "so copy or pack the bundle under runs/NAME/"
        )
    rel = bundle.relative_to(REPO)
    with a.texts.open(newline="") as f:
        texts = [row["sentence"] for row in csv.DictReader(f, delimiter="\t")]

    sys.path.insert(0, str(REPO / "runtime"))
    from ftexport_runtime import Predictor

    from ftexport.core.machine import machine_info

    # The same 32-text model calls as the requests below: a dynamic int8 model's answers depend
    # on the batch it runs in (docs/serving.md), so the host must batch the way the server does.
    predictor = Predictor.from_bundle(bundle)
    host = [p.label for i in range(0, len(texts), CHUNK) for p in predictor.predict_batch(texts[i : i + CHUNK])]

    tag = f"ftexport-runtime-check:{uuid.uuid4().hex[:8]}"
    build = ["build", "-f", "docker/runtime-cpu.Dockerfile", "--build-arg", f"BUNDLE={rel}", "-t", tag]
    if a.python_image:
        build += ["--build-arg", f"PYTHON_IMAGE={a.python_image}"]
    docker(*build, str(REPO))
    info = json.loads(docker("image", "inspect", tag))[0]
    container = None
    try:
        probe = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "python", tag, "-c", "import torch"], capture_output=True, text=True, timeout=120
        )
        if probe.returncode and "No module named 'torch'" not in probe.stderr:
            sys.exit(f"error: could not run python in the image: {(probe.stderr.strip().splitlines() or ['no output'])[-1]}")
        torch = probe.returncode == 0
        container = docker("run", "-d", "-p", "127.0.0.1::8000", tag)
        base = "http://127.0.0.1:" + docker("port", container, "8000/tcp").split()[0].rsplit(":", 1)[1]
        t0 = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > 90:
                sys.exit("error: /healthz never answered: " + docker("logs", container)[-500:])
            time.sleep(0.2)
        ready_s = time.monotonic() - t0
        got = []
        for i in range(0, len(texts), CHUNK):
            got += post(base, texts[i : i + CHUNK])
        health = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:  # HEALTHCHECK runs every 30 s
            health = docker("inspect", "--format", "{{.State.Health.Status}}", container)
            if health != "starting":
                break
            time.sleep(2)
    finally:
        if container:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    result = {
        "machine": machine_info(),
        "bundle": str(rel),
        "texts": len(texts),
        "same_label": sum(g == h for g, h in zip(got, host)),
        "image_mb": round(info["Size"] / 2**20),
        "user": info["Config"]["User"],
        "torch_in_image": torch,
        "ready_s": round(ready_s, 2),
        "docker_health": health,
        "base": a.python_image or "python:3.11-slim-bookworm",
    }
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["same_label"] == len(texts) and health == "healthy" and not torch
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
