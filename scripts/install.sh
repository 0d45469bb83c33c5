#!/usr/bin/env bash
# One install path for the README, .ci/run and the Dockerfiles.
#
#   scripts/install.sh [VENV_DIR|--system] [EXTRAS]
#
# VENV_DIR defaults to .venv; --system installs into the current interpreter
# (the Docker images). EXTRAS defaults to "dev" (tests and linters); pass "" for
# a runtime-only install.
#
# torch and torchvision are installed together from PyPI as a matched pair:
# PyPI's torchvision only imports next to PyPI's torch of the same release, so
# the pair is pinned here and never mixed with a separately installed torch.
# Override with FINESEARCH_TORCH_SPEC (e.g. "" to keep the torch of a CUDA base
# image). pip's cache (~/.cache/pip, or PIP_CACHE_DIR) is left on so a second
# install does not download the multi-GB CUDA wheels again.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:-.venv}"
extras="${2-dev}"
python="${PYTHON:-python3}"

if [ -z "${FINESEARCH_TORCH_SPEC+x}" ]; then
  case "$(uname -m)" in
    x86_64) FINESEARCH_TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" ;;
    aarch64|arm64) FINESEARCH_TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" ;;
    *) FINESEARCH_TORCH_SPEC="" ;;
  esac
fi

if [ "$target" = "--system" ]; then
  pip=("$python" -m pip)
else
  if [ ! -x "$target/bin/python" ]; then
    "$python" -m venv "$target"
  fi
  pip=("$target/bin/python" -m pip)
fi

spec="$here"
if [ -n "$extras" ]; then
  spec="$here[$extras]"
fi

# shellcheck disable=SC2086  # the torch spec is a list of requirements
"${pip[@]}" install --upgrade-strategy only-if-needed $FINESEARCH_TORCH_SPEC -e "$spec"
"${pip[@]}" check || true
echo "finesearch installed into ${target}"
