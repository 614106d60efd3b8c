# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target operator -t ghcr.io/rectrain/rectrain-operator:0.1.0 .
#   docker build --target trainer  -t ghcr.io/rectrain/rectrain-trainer:0.1.0 .
# The operator image is slim Python without torch; the trainer image starts from the official
# CUDA PyTorch runtime (torch, CUDA, cuDNN and NCCL included). Both run as uid 1000, and their
# final stages only copy a ready virtualenv: no compilers, no package caches.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
ARG VERSION=0.1.0

# ---------------------------------------------------------------- the rectrain wheel
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api/ api/
COPY operator/ operator/
COPY trainer/ trainer/
COPY localcluster/ localcluster/
COPY plugin/ plugin/
COPY sdk/ sdk/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---------------------------------------------------------------- operator virtualenv
FROM ${PYTHON_IMAGE} AS operator-build
COPY requirements/constraints.txt /tmp/constraints.txt
COPY --from=wheel /dist/ /dist/
RUN python -m venv /opt/rectrain \
 && /opt/rectrain/bin/pip install --no-cache-dir --disable-pip-version-check \
      -c /tmp/constraints.txt "$(ls /dist/rectrain-*.whl)[operator]" \
 && /opt/rectrain/bin/pip uninstall -y pip setuptools wheel \
 && find /opt/rectrain -name __pycache__ -prune -exec rm -rf {} +

# ---------------------------------------------------------------- operator image
FROM ${PYTHON_IMAGE} AS operator
ARG VERSION
LABEL org.opencontainers.image.title="rectrain-operator" \
      org.opencontainers.image.description="Kubernetes operator for distributed recommendation-model training (RecTrainJob)" \
      org.opencontainers.image.source="https://github.com/rectrain/rectrain" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=operator-build /opt/rectrain /opt/rectrain
ENV PATH=/opt/rectrain/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 1000:1000
EXPOSE 8080 8081
ENTRYPOINT ["rectrain-operator"]

# ---------------------------------------------------------------- trainer virtualenv
# On top of the base image's torch (system site packages): the CPU build's torch pin
# (torch==X+cpu) is dropped from the constraints, so pip finds the extra's torch==X satisfied by the
# base's X+cuNNN and installs only the rest.
FROM ${PYTORCH_IMAGE} AS trainer-build
COPY requirements/constraints.txt /tmp/constraints.txt
COPY --from=wheel /dist/ /dist/
RUN grep -v '^torch==' /tmp/constraints.txt > /tmp/constraints-cuda.txt \
 && python -m venv --system-site-packages /opt/rectrain \
 && /opt/rectrain/bin/pip install --no-cache-dir --disable-pip-version-check \
      -c /tmp/constraints-cuda.txt "$(ls /dist/rectrain-*.whl)[trainer]" \
 && /opt/rectrain/bin/python -c "import torch, torch.distributed as d; assert d.is_nccl_available(), 'no NCCL'; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())" \
 && /opt/rectrain/bin/pip uninstall -y pip setuptools wheel \
 && find /opt/rectrain -name __pycache__ -prune -exec rm -rf {} +

# ---------------------------------------------------------------- trainer image
FROM ${PYTORCH_IMAGE} AS trainer
ARG VERSION
LABEL org.opencontainers.image.title="rectrain-trainer" \
      org.opencontainers.image.description="DLRM-style recommendation-model trainer (PyTorch, CUDA, NCCL) for RecTrainJobs" \
      org.opencontainers.image.source="https://github.com/rectrain/rectrain" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=trainer-build /opt/rectrain /opt/rectrain
ENV PATH=/opt/rectrain/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 1000:1000
EXPOSE 29500 9400
ENTRYPOINT ["rectrain-train"]
