#!/usr/bin/env bash
# Set up a fresh machine (`tools/dev.sh setup`) or set up and run the demo (`tools/dev.sh demo`).
# Installs the system libraries napari needs (Debian/Ubuntu, when run as root), a virtual environment
# in .venv with the CPU build of torch first (so nothing pulls a multi-GB CUDA build), then the package.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-setup}"

system_packages() {
  local pkgs="xvfb xauth libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-icccm4
    libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
    libxcb-shape0 libxcb-cursor0 libxcb-xkb1 libfontconfig1 libdbus-1-3"
  local missing="" p
  for p in $pkgs; do  # every one: Qt aborts naming the wrong library when any xcb one is missing
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "warning: cannot install system packages (need root + apt); napari and its tests need:$missing" >&2
  fi
}

python_env() {
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -e ".[testing]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, napari_cryospin" # fail loudly if the install did not work
}

case "$what" in
  demo)
    python_env
    .venv/bin/cryospin demo --out runs/demo  # runs/ is in .gitignore
    ;;
  setup)
    system_packages
    python_env
    ;;
  *)
    echo "usage: tools/dev.sh setup|demo" >&2
    exit 2
    ;;
esac
