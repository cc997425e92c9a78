# syntax=docker/dockerfile:1
# ftexport-runtime on CPU: a slim Python image with ftexport-runtime[serve] only (onnxruntime,
# tokenizers, numpy and the HTTP server stack; no torch), run as a non-root user.
#
# Build from the repository root (see docker/README.md):
#   docker build -f docker/runtime-cpu.Dockerfile -t ftexport-runtime:cpu .
#   docker build -f docker/runtime-cpu.Dockerfile --build-arg BUNDLE=runs/quickstart/bundle -t sst2:cpu .
# Run with a bundle mounted (or baked in with BUNDLE above):
#   docker run --rm -p 8000:8000 -v "$PWD/runs/quickstart/bundle:/bundle:ro" ftexport-runtime:cpu

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY runtime/ /src/runtime/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir "/src/runtime[serve]"

FROM ${PYTHON_IMAGE}
# A bundle directory inside the build context to bake in; the default holds no bundle.
ARG BUNDLE=docker/no-bundle
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ftexport
COPY --from=build /opt/venv /opt/venv
# Owned by root and read-only for the server: a compromised process cannot rewrite its model.
COPY ${BUNDLE} /bundle
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# No curl in a slim image: the health check uses the image's own Python.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["ftexport-runtime", "serve", "/bundle", "--host", "0.0.0.0", "--port", "8000"]
