#!/bin/sh
# `pip install` into the image's venv (first on PATH) under constraints.txt, from the wheel cache the
# host built (docker/build-wheels.sh) when the context has one: the host's pip configuration does not
# exist inside docker build. Falls back to the index, saying so, when the cache lacks a requirement
# (a cache older than constraints.txt, or the trainer's, which needs build-wheels.sh --training).
set -eu
pip_install() { python -m pip install --no-cache-dir --disable-pip-version-check -c /src/constraints.txt "$@"; }
if ls /wheels/*.whl >/dev/null 2>&1; then
  pip_install --no-index --find-links /wheels "$@" && exit 0
  echo "pip-install.sh: not all in the wheel cache (rerun docker/build-wheels.sh, with --training for" \
    "the trainer); installing from the index" >&2
fi
pip_install "$@"
