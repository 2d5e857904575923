#!/usr/bin/env bash
# Sets up fastconv on a fresh machine: Fashion-MNIST from Debian's package and a virtual
# environment in .venv with fastconv installed (editable) and the extras asked for.
#
#   bash scripts/setup.sh              # to train
#   bash scripts/setup.sh test,bench   # to run the tests and the benchmarks too
#
# Runs again harmlessly: what is already there is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  if command -v apt-get >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    return 1
  fi
}

# The data: Debian's package puts the four IDX files where fastconv looks for them.
if [ -z "${FASHION_MNIST_DIR:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
   && [ ! -d "$HOME/.keras/datasets/fashion-mnist" ]; then
  echo "setup: installing Debian's dataset-fashion-mnist"
  apt_install dataset-fashion-mnist \
    || echo "setup: no apt-get here; the first run downloads Fashion-MNIST with Keras" >&2
fi

# The environment: Debian's Python needs python3-venv (ensurepip) to make one.
if [ ! -x .venv/bin/python ]; then
  if ! "$python" -c "import ensurepip, venv" >/dev/null 2>&1; then
    echo "setup: installing python3-venv"
    apt_install python3-venv
  fi
  "$python" -m venv .venv
fi
echo "setup: installing fastconv${extras:+[$extras]} into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
# fastconv's fused conv op, compiled for this CPU now rather than on the first run; it needs a
# C++ compiler (where none can be had, this says why and the runs use TensorFlow's own ops).
if [ -z "${CXX:-}" ] && ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
  echo "setup: installing g++ for fastconv's fused conv op"
  apt_install g++ || echo "setup: no apt-get here; install a C++ compiler for the fused op" >&2
fi
.venv/bin/python -m fastconv.native || true
