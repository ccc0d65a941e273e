#!/bin/sh
# install-deps.sh [PIP_REQUIREMENT ...]: the dependency layer of both training images, run once at
# build time from the folder it was copied to. It installs
#   - the system libraries the wheels load but do not bundle: libgomp1 (MXNet's OpenMP) and
#     libquadmath0 (needed by the libgfortran.so.3 that MXNet bundles);
#   - Python 3.11 with venv from the distribution when the base lacks it (Debian 12, Ubuntu 22.04+);
#   - /opt/venv with requirements.txt and the arguments (the MXNet wheel, the CUDA libraries), then
#     requirements-nodeps.txt without dependencies: insightface requires the GUI opencv-python,
#     which would share the `cv2` package with opencv-python-headless and need libGL;
#   - a loader path to NVIDIA's libraries when they came from PyPI (nvidia/*/lib in the venv).
# $PIP_OPTIONS (the build argument) is passed to every pip install: --index-url for a mirror, --cert.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
packages="libgomp1 libquadmath0"
python3.11 -c 'import ensurepip' 2>/dev/null || packages="$packages python3.11 python3.11-venv"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086 # one word per package
apt-get install -y -q --no-install-recommends $packages
rm -rf /var/lib/apt/lists/*

python3.11 -m venv /opt/venv
# shellcheck disable=SC2086 # PIP_OPTIONS holds several options
/opt/venv/bin/python -m pip install ${PIP_OPTIONS:-} -r "$here/requirements.txt" "$@"
# shellcheck disable=SC2086
/opt/venv/bin/python -m pip install ${PIP_OPTIONS:-} --no-deps -r "$here/requirements-nodeps.txt"

nvidia=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia
if [ -d "$nvidia" ]; then
    ls -d "$nvidia"/*/lib > /etc/ld.so.conf.d/faceops-nvidia.conf
    ldconfig
fi
