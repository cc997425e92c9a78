# syntax=docker/dockerfile:1
# ftexport-runtime on an NVIDIA GPU: CUDA 13 + cuDNN 9 runtime image (what onnxruntime-gpu
# from PyPI is built for, 1.27 on; the host needs an r580+ driver) with ftexport-runtime[gpu,serve],
# run as a non-root user. TensorRT too (the bundle's engines, ONNX Runtime's TensorRT provider):
#   --build-arg RUNTIME_EXTRAS=trt
# The CUDA 12 combination (r535-r579 drivers; docs/tensorrt.md in the repository):
#   --build-arg CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04 --build-arg RUNTIME_EXTRAS=gpu-cu12
#
# Build from the repository root (see docker/README.md):
#   docker build -f docker/runtime-gpu.Dockerfile -t ftexport-runtime:gpu .
# Run (needs the NVIDIA Container Toolkit on the host):
#   docker run --rm --gpus all -p 8000:8000 -v "$PWD/runs/quickstart/bundle:/bundle:ro" ftexport-runtime:gpu

ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
# Extras instead of gpu (with serve): trt (TensorRT 11, CUDA 13), or gpu-cu12 / trt-cu12 on a CUDA 12 base.
ARG RUNTIME_EXTRAS=
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY runtime/ /src/runtime/
# The runtime depends on onnxruntime and its gpu extra adds onnxruntime-gpu: both write the
# same `onnxruntime` package, so remove the CPU one and lay the GPU one down again, whole.
RUN python3 -m venv /opt/venv \
 && if [ -z "${RUNTIME_EXTRAS}" ]; then /opt/venv/bin/pip install --no-cache-dir "/src/runtime[gpu,serve]"; \
    else /opt/venv/bin/pip install --no-cache-dir "/src/runtime[${RUNTIME_EXTRAS},serve]"; fi \
 && /opt/venv/bin/pip uninstall -y onnxruntime \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps --force-reinstall \
      "onnxruntime-gpu==$(/opt/venv/bin/python -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))')"

FROM ${CUDA_IMAGE}
ARG BUNDLE=docker/no-bundle
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FTEXPORT_TRT_CACHE=/cache/tensorrt
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ftexport \
 && mkdir -p /cache/tensorrt \
 && chown -R 10001:10001 /cache
COPY --from=build /opt/venv /opt/venv
# With TensorRT installed: its pip libraries on the loader path (ONNX Runtime's TensorRT provider
# links libnvinfer.so.N by soname); an empty file otherwise. ONNX Runtime's TensorRT provider keeps
# its engines in /cache/tensorrt: mount a volume there (-v trt-cache:/cache) so a restart reuses them.
RUN /opt/venv/bin/python -c "import importlib.util as u, os; s = u.find_spec('tensorrt_libs'); print(os.path.dirname(s.origin) if s else '')" \
      > /etc/ld.so.conf.d/tensorrt-pip.conf \
 && ldconfig
COPY ${BUNDLE} /bundle
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
# --backend cuda refuses to start if ONNX Runtime would fall back to the CPU.
CMD ["ftexport-runtime", "serve", "/bundle", "--backend", "cuda", "--host", "0.0.0.0", "--port", "8000"]
