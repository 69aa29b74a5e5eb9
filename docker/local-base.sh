#!/usr/bin/env bash
# A base image for the Dockerfile built from Debian's packages alone, for machines that reach a package
# mirror and PyPI but no image registry (the Dockerfile's default base, pytorch/pytorch, is on Docker Hub):
#
#   sudo docker/local-base.sh [TAG] [TORCH_SPEC]       # default: alexnet-base:cpu, the lock's torch
#   docker build --build-arg BASE=alexnet-base:cpu -t alexnet-repro .
#   docker compose up --no-build
#
# Debian bookworm (Python 3.11) by debootstrap, a virtualenv at /opt/venv on PATH holding the CPU build
# of torch: the version requirements.lock pins, which the Makefile and CI test with. Needs root, debootstrap and a Docker engine.
set -euo pipefail
tag=${1:-alexnet-base:cpu}
torch_spec=${2:-$(sed -n 's/^# torch: //p' "$(dirname "$0")/../requirements.lock")}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,libgomp1 bookworm "$root" "$mirror"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The host's CA bundle, so that pip inside trusts what the host trusts (e.g. a TLS-inspecting proxy).
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# torch's wheel comes through the host's pip and its configuration (point it at a CPU build, e.g. PyTorch's
# CPU index, or the CUDA build comes); its dependencies come from PyPI inside the image.
chroot "$root" python3 -m venv /opt/venv
pip download -q --no-deps --only-binary=:all: --python-version 3.11 -d "$root/tmp/wheels" "$torch_spec"
chroot "$root" sh -c '/opt/venv/bin/pip install -q --no-cache-dir /tmp/wheels/*.whl'
rm -rf "$root/tmp/wheels" "$root/var/cache/apt/archives"/*.deb
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV PIP_CERT=$PIP_CERT" --change 'CMD ["python"]' - "$tag"
docker run --rm "$tag" python -c "import torch; print('base image $tag: torch', torch.__version__)"
