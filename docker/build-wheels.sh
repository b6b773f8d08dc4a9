#!/usr/bin/env bash
# Fill .wheels/ with wheels of the images' third-party requirements (and setuptools, to build ours),
# resolved by the host's pip configuration (mirror, find-links), which docker build cannot see.
# The images install from it with --no-index when it is present, so they build without PyPI.
# Our own distributions are left out: images build them from the source in the context, never stale.
# Usage: docker/build-wheels.sh [--training]   (adds the trainer's: torch's CPU build, scikit-learn...)
#   env: PYTHON (default: .venv/bin/python, else python3), WHEELS (default: .wheels)
set -euo pipefail
cd "$(dirname "$0")/.."

reqs=(./proto ./server ./client "setuptools>=69")
for arg in "$@"; do
  case "$arg" in
    # +cpu pins torch's CPU build: PyPI's torch==2.13.0 is a multi-GB CUDA build.
    --training) reqs+=(./training "torch==2.13.0+cpu") ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
wheels="${WHEELS:-.wheels}"

"$python" -m pip wheel -q --disable-pip-version-check --wheel-dir "$wheels" --find-links "$wheels" \
  -c constraints.txt "${reqs[@]}"
rm -f "$wheels"/vaeserve_*.whl
echo "$wheels: $(ls "$wheels" | wc -l) wheels, $(du -sh "$wheels" | cut -f1)"
