# The image of `docker compose up` (docker-compose.yml runs prep -> train -> report, and TensorBoard):
#
#   docker compose up                                          # the embedded sample, end to end (CPU)
#   ILSVRC_DIR=/data/ILSVRC2012 EPOCHS=90 docker compose -f docker-compose.yml -f docker-compose.gpu.yml up
#
# Needs BuildKit (the cache mount below): the default from Docker 23, DOCKER_BUILDKIT=1 on 20.10. No
# `# syntax=` line: it would fetch the Dockerfile frontend from Docker Hub at every build, which fails
# on machines without registry access; the frontend built into BuildKit reads everything used here.
# Without registry access, build the base image with docker/local-base.sh and pass it as BASE.
#
# Base: PyTorch's official CUDA 13.0 runtime image, pinned by tag. Its torch is 2.13.0, the version the
# Makefile (and so CI) tests with; DALI is nvidia-dali-cuda130, the build pyproject.toml names. CUDA 13
# needs an NVIDIA driver >= 580. For CUDA 12 (older drivers), build from the CUDA 12 image with DALI's
# CUDA 12 build instead:
#
#   docker compose build --build-arg BASE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime \
#                        --build-arg DALI=nvidia-dali-cuda120
ARG BASE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
FROM ${BASE}
ARG DALI=nvidia-dali-cuda130

# .git stays out of the build context, so runs record the revision given here instead:
#   docker compose build --build-arg GIT_REVISION=$(git rev-parse HEAD)
ARG GIT_REVISION=unknown
ENV PYTHONUNBUFFERED=1 GIT_REVISION=${GIT_REVISION}
WORKDIR /workspace
COPY --chown=1000:1000 . /workspace

# The same steps as `make install` (Makefile), less its `pip install torch==...`: the image's torch is the
# CUDA build, and installing the project keeps it. pyproject.toml asks for torch>=2.4, which 2.13.0+cu130
# satisfies, and pip's default upgrade strategy (only-if-needed) leaves a satisfied requirement alone.
# Checked with `pip install --dry-run --report` in a venv holding torch 2.13.0+cpu while PyPI offered
# 2.15.0: the only package pip would install was alexnet-repro. With the [dev] extras the image runs the
# test suite too: `docker run --rm alexnet-repro pytest -q`.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip install -q --upgrade pip \
 && python -m pip install -q -e ".[dev]" \
 && if [ "$DALI" != nvidia-dali-cuda130 ]; then \
        python -m pip uninstall -q -y nvidia-dali-cuda130 && python -m pip install -q "$DALI"; \
    fi \
 && python -c "import torch, nvidia.dali; print('torch', torch.__version__, 'DALI', nvidia.dali.__version__)"

# A non-root user, uid 1000 (an Ubuntu 24.04 base already has one, named ubuntu). The mount points are
# created here, owned by it, so that compose's named volumes start out writable by it; a host folder
# mounted instead (SHARDS_DIR, RUNS_DIR) must be writable by uid 1000.
RUN (getent passwd 1000 >/dev/null || useradd --create-home --uid 1000 --user-group app) \
 && mkdir -p /data /shards /runs \
 && chown 1000:1000 /data /shards /runs
USER 1000:1000

CMD ["alexnet-prep", "--help"]
