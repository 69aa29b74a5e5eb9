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
# Base: PyTorch's official CUDA 13.0 runtime image, pinned by tag. Its torch is 2.13.0, the version
# requirements.lock pins (and so the Makefile and CI test with). CUDA 13 needs an NVIDIA driver >= 580.
# For CUDA 12 drivers (525-570), build from the CUDA 12 image: DALI's build follows the image's torch.
#
#   docker compose build --build-arg BASE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
ARG BASE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime
FROM ${BASE}
# DALI's build: empty picks the one for the image's torch (its CUDA major: tools/dali_build.py), as
# `make install` does; 12 or 13 forces one (README "Installing").
ARG DALI_CUDA=

# .git stays out of the build context, so runs record the revision given here instead:
#   docker compose build --build-arg GIT_REVISION=$(git rev-parse HEAD)
ARG GIT_REVISION=unknown
ENV PYTHONUNBUFFERED=1 GIT_REVISION=${GIT_REVISION}
WORKDIR /workspace
COPY --chown=1000:1000 . /workspace

# The same steps as `make install` (Makefile), less its torch step: the image's torch is the CUDA build
# and stays. requirements.lock first (hash-checked, --no-deps: pip resolves nothing, so it never touches
# torch), then the DALI build for that torch from its lock, then the project itself, then the check that
# the environment holds the lock's versions and torch the lock's pin. With the [dev] tools in the lock
# the image runs the test suite too: `docker run --rm alexnet-repro pytest -q`.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip install -q --upgrade pip \
 && python -m pip install -q --require-hashes --no-deps -r requirements.lock \
 && DALI_CUDA="$DALI_CUDA" python -m tools.dali_build --install \
 && python -m pip install -q --no-deps -e . \
 && python -m tools.requirements check \
 && python -c "import torch, nvidia.dali; print('torch', torch.__version__, 'DALI', nvidia.dali.__version__)"

# A non-root user, uid 1000 (an Ubuntu 24.04 base already has one, named ubuntu). The mount points are
# created here, owned by it, so that compose's named volumes start out writable by it; a host folder
# mounted instead (SHARDS_DIR, RUNS_DIR) must be writable by uid 1000.
RUN (getent passwd 1000 >/dev/null || useradd --create-home --uid 1000 --user-group app) \
 && mkdir -p /data /shards /runs \
 && chown 1000:1000 /data /shards /runs
USER 1000:1000

CMD ["alexnet-prep", "--help"]
