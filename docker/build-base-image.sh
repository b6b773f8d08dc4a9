#!/usr/bin/env bash
# Build a local Python 3.11 base image (stand-in for python:3.11-slim) from Debian
# bookworm packages, for hosts that can reach an apt mirror but no image registry.
# Usage: build-base-image.sh [--force] [TAG]
#   env: BASE_TAG (default vaeserve-base:3.11-bookworm), DEBIAN_MIRROR (default: host's
#        apt sources, else http://deb.debian.org/debian), TMPDIR (work dir parent)
set -euo pipefail

force=0 tag="${BASE_TAG:-vaeserve-base:3.11-bookworm}"
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    -*) echo "unknown option: $arg" >&2; exit 2 ;;
    *) tag="$arg" ;;
  esac
done

docker info >/dev/null 2>&1 || { echo "error: docker daemon not reachable" >&2; exit 1; }
# The test suite builds once and reuses by tag, so an existing tag is success.
if [[ $force -eq 0 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "image $tag already exists; skipping (use --force to rebuild)"; exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }

# Use the same mirror as the host (it is the one known to be reachable); accepts
# one-line sources.list and deb822 .sources files, skipping security/other suites.
host_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue; sed -E 's/\[[^]]*\]//' "$f" | awk '$1=="deb" && $3=="bookworm" {print $2; exit}'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue; awk 'BEGIN{RS=""}
      /(^|\n)Types:[^\n]*deb([ \n]|$)/ && /(^|\n)Suites:[^\n]*[: ]bookworm([ \n]|$)/ {
        if (match($0, /(^|\n)URIs:[ ]*[^ \n]+/)) { s=substr($0,RSTART,RLENGTH); sub(/.*URIs:[ ]*/,"",s); print s; exit } }' "$f"
  done
}
mirror="${DEBIAN_MIRROR:-$(host_mirror | head -n1 || true)}"
mirror="${mirror:-http://deb.debian.org/debian}"

work="$(mktemp -d "${TMPDIR:-/var/tmp}/vaeserve-base.XXXXXX")"
root="$work/rootfs"
cleanup() {
  if [[ -n ${bs_pid:-} ]]; then pkill -P "$bs_pid"; kill "$bs_pid"; wait "$bs_pid"; fi 2>/dev/null || true
  # debootstrap may leave proc/sys/dev mounts behind on failure: unmount them
  # first so rm can never descend into the host's /proc or /sys.
  awk -v r="$root" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP  # turn signals into a normal exit so cleanup runs

t=$SECONDS
stage() { echo "==> [$((SECONDS - t))s] $*"; t=$SECONDS; }

echo "==> debootstrap bookworm from $mirror"
# minbase + Depends only (debootstrap ignores Recommends): no compilers, no python3-dev.
# Run in background + wait: bash defers traps until a foreground child exits.
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$root" "$mirror" & bs_pid=$!
wait "$bs_pid"; bs_pid=
stage "debootstrap done"

# Host CA bundle: lets pip verify TLS behind an intercepting proxy (Debian's pip
# uses /etc/ssl/certs/ca-certificates.crt instead of certifi's bundle).
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# python:3.11-slim has /usr/local/bin/python; bookworm's python3 is already 3.11.
ln -sf /usr/bin/python3.11 "$root/usr/local/bin/python"
# Containers are the isolation boundary, so allow plain `pip install` like the
# official image does (PEP 668 marker would otherwise refuse it).
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
# Keep derived images slim too: no docs/man/locale files on later apt-get installs.
printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
  'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
  'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' > "$root/etc/dpkg/dpkg.cfg.d/slim"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*/ "$root"/var/log/* "$root"/tmp/* \
  "$root"/etc/hostname "$root"/etc/resolv.conf
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
pyver="$(chroot "$root" python3 -c 'import platform; print(platform.python_version())')"
[[ $pyver == 3.11.* ]] || { echo "error: expected python 3.11, got $pyver" >&2; exit 1; }
stage "customised rootfs (python $pyver, $(du -sh --one-file-system "$root" | cut -f1))"

tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "ENV PYTHON_VERSION=$pyver" \
  --change 'CMD ["python3"]' \
  --message "debootstrap bookworm minbase + python3 $pyver from $mirror" \
  - "$tag" >/dev/null
stage "imported $tag ($(docker image inspect -f '{{.Size}}' "$tag" | numfmt --to=iec))"
