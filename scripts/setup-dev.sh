#!/usr/bin/env bash
# Installs everything the tests and benchmarks need: Debian packages for the real services the
# tests start (Docker engine, registry, htpasswd, a static busybox and debootstrap for local base
# images; PostgreSQL for the team store's tests; chromium and its driver for the serve page's
# browser test) and a virtual environment with faceops and its test extras. Safe to run again: it
# only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(docker.io docker-registry apache2-utils busybox-static debootstrap postgresql chromium chromium-driver)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then
    echo "warning: cannot install ${missing[*]} (not root, no sudo); tests that need them will skip" >&2
  else
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test]'
