# syntax=docker/dockerfile:1
# The ftexport toolchain on an NVIDIA GPU: train, merge, distill, export (ONNX, TensorRT),
# quantize, validate, bench, pack. CUDA 13 + cuDNN 9 runtime image with ftexport[gpu,trt]:
# onnxruntime-gpu 1.27+, TensorRT 11 (tensorrt-cu13), cuda-bindings 13.x; the host needs an r580+
# driver (docs/tensorrt.md, "Versions that fit together"). For r535-r579 drivers, the CUDA 12
# combination: --build-arg CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04
#               --build-arg FTEXPORT_EXTRAS=gpu-cu12,trt-cu12
# (torch brings its own CUDA libraries; onnxruntime-gpu and TensorRT use the image's.)
#
# Build from the repository root (see docker/README.md):
#   docker build -f docker/train.Dockerfile -t ftexport-train .
# Run a recipe on the current folder (models and data come from local paths: no network):
#   docker run --rm --gpus all --shm-size 8g -v "$PWD:/workspace" ftexport-train \
#     ftexport run recipes/quickstart.yaml

ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE}
# Extras instead of gpu,trt: gpu-cu12,trt-cu12 for the CUDA 12 combination (with a CUDA 12 base).
ARG FTEXPORT_EXTRAS=
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/workspace/.cache/huggingface \
    FTEXPORT_TRT_CACHE=/workspace/.cache/ftexport/tensorrt
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY ftexport/ ftexport/
COPY recipes/ recipes/
# The ftexport-runtime dependency is this repository's runtime/. onnxruntime (a core dependency)
# and onnxruntime-gpu (the gpu extra) write the same package: remove the CPU one and lay the GPU
# one down again, whole. pip's TensorRT libraries (site-packages/tensorrt_libs) are on no loader
# path, and ONNX Runtime's TensorRT provider links them by soname (libnvinfer.so.11): put that
# folder in ld.so.conf (the runtime also loads them itself before a TensorRT session).
RUN python3 -m venv /opt/venv \
 && if [ -z "${FTEXPORT_EXTRAS}" ]; then pip install --no-cache-dir --extra-index-url https://pypi.nvidia.com /src/runtime "/src[gpu,trt]"; \
    else pip install --no-cache-dir --extra-index-url https://pypi.nvidia.com /src/runtime "/src[${FTEXPORT_EXTRAS}]"; fi \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir --no-deps --force-reinstall \
      "onnxruntime-gpu==$(python -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))')" \
 && python -c "import importlib.util as u, os; s = u.find_spec('tensorrt_libs'); print(os.path.dirname(s.origin) if s else '')" \
      > /etc/ld.so.conf.d/tensorrt-pip.conf \
 && ldconfig \
 && useradd --create-home --uid 10001 --user-group --shell /bin/bash ftexport \
 && mkdir -p /workspace \
 && chown ftexport:ftexport /workspace
USER 10001:10001
WORKDIR /workspace
CMD ["ftexport", "--help"]
