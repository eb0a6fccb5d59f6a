#!/usr/bin/env bash
# Installs what Keel needs on a Debian machine, only where it is missing:
# the Debian packages (OpenBLAS, protobuf-c, protoc, pkg-config) and a Python
# virtual environment in .venv with the test and benchmark tools from PyPI.
# Safe to run again: it does nothing when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in libopenblas-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler pkg-config libsqlite3-dev python3-venv; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ "${KEEL_SKIP_VENV:-0}" != "1" ]; then
  stamp=.venv/.keel-requirements
  if [ ! -x .venv/bin/python ] || ! cmp -s scripts/requirements.txt "$stamp"; then
    echo "setup: creating Python environment in .venv"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements.txt
    cp scripts/requirements.txt "$stamp"
  fi
fi
