# syntax=docker/dockerfile:1
# The ftexport toolchain on an NVIDIA GPU: train, merge, distill, export (ONNX, TensorRT),
# quantize, validate, bench, pack. CUDA 13 + cuDNN 9 runtime image with ftexport[gpu,trt]
# (torch brings its own CUDA libraries; onnxruntime-gpu and TensorRT use the image's).
#
# Build from the repository root (see docker/README.md):
#   docker build -f docker/train.Dockerfile -t ftexport-train .
# Run a recipe on the current folder (models and data come from local paths: no network):
#   docker run --rm --gpus all --shm-size 8g -v "$PWD:/workspace" ftexport-train \
#     ftexport run recipes/quickstart.yaml

ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/workspace/.cache/huggingface
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY ftexport/ ftexport/
COPY recipes/ recipes/
# TensorRT's wheels come from NVIDIA's index. The ftexport-runtime dependency is this
# repository's runtime/. onnxruntime (a core dependency) and onnxruntime-gpu (the gpu extra)
# write the same package: remove the CPU one and lay the GPU one down again, whole.
RUN python3 -m venv /opt/venv \
 && pip install --no-cache-dir --extra-index-url https://pypi.nvidia.com /src/runtime "/src[gpu,trt]" \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir --no-deps --force-reinstall \
      "onnxruntime-gpu==$(python -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))')" \
 && useradd --create-home --uid 10001 --user-group --shell /bin/bash ftexport \
 && mkdir -p /workspace \
 && chown ftexport:ftexport /workspace
USER 10001:10001
WORKDIR /workspace
CMD ["ftexport", "--help"]
