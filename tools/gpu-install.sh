#!/usr/bin/env bash
# Developer tool, run ON the GPU machine from the project root once every piece staged by
# tools/gpu-stage.sh has arrived. Two environments, to test both package sets:
#   .gpu/site   transformers 4.57.6 + optimum + onnxruntime-gpu (export, quantize, ORT CUDA)
#   .gpu/extra-site  only what the image lacks (pydantic): training on the image's transformers 5
set -euo pipefail
bash .gpu/install-on-device.sh
name=$(cat .gpu/model/NAME); cat .gpu/model/piece.* > ".gpu/$name"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .gpu/site .gpu/extra/*.whl ".gpu/$name"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .gpu/extra-site .gpu/extra/*.whl ".gpu/$name"
echo "installed: $(ls .gpu/site | wc -l) entries in .gpu/site, $(ls .gpu/extra-site | wc -l) in .gpu/extra-site"
