#!/bin/sh
# `pip install` into the image's venv (first on PATH) under constraints.txt. Uses the wheel cache the
# host built (docker/build-wheels.sh) when the context had one, since the host's pip configuration
# does not exist inside docker build. Falls back to the index only when the cache lacks a requirement
# (e.g. the trainer built from a cache made without --training), and says so.
set -eu
install() { python -m pip install --no-cache-dir --disable-pip-version-check -c /src/constraints.txt "$@"; }
if ls /wheels/*.whl >/dev/null 2>&1; then
  install --no-index --find-links /wheels "$@" && exit 0
  echo "pip-install.sh: the wheel cache lacks a requirement above (the trainer's: docker/build-wheels.sh --training);" \
    "installing from the index" >&2
fi
install "$@"
