#!/usr/bin/env bash
# Fetch Debian's stock cloud kernel (linux-image-*-cloud-amd64-unsigned),
# unmodified, from the configured Debian archive, and unpack its vmlinuz,
# System.map and config into the cache: the proof that distribution kernels
# boot under lunavm.
#
#   scripts/linux/fetch-cloud-kernel.sh [--print]
#
# The package is the one Debian's `linux-image-cloud-amd64` metapackage
# currently depends on. Cached: when that version is already unpacked, nothing
# is fetched. Prints `kernel=PATH` (the bzImage), `system_map=PATH`,
# `version=VERSION`. Needs apt-get and dpkg-deb (Debian/Ubuntu hosts).
set -euo pipefail

cache=${LUNAVM_CACHE:-$HOME/.cache/lunavm}/linux
log() { echo "fetch-cloud-kernel: $*" >&2; }
die() { echo "fetch-cloud-kernel: error: $*" >&2; exit 1; }

case ${1:-} in
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    ''|--print) ;;
    *) die "unknown argument $1 (see --help)" ;;
esac

command -v apt-cache >/dev/null && command -v dpkg-deb >/dev/null \
    || die "needs apt-cache, apt-get and dpkg-deb (a Debian host)"

image=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}')
[ -n "$image" ] || die "no linux-image-cloud-amd64 in the package lists (apt-get update?)"
pkg=$image-unsigned
version=${image#linux-image-}
dir=$cache/out/cloud/$version
if [ -f "$dir/boot/vmlinuz-$version" ]; then
    log "up to date, nothing to do ($pkg)"
else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    log "downloading $pkg"
    (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) \
        || { apt-get update -qq >/dev/null 2>&1 && (cd "$tmp" && apt-get download -qq "$pkg"); } \
        || die "cannot download $pkg"
    mkdir -p "$dir"
    # Only /boot: the modules are not needed for the milestone ("Run /init").
    dpkg-deb --fsys-tarfile "$tmp"/"$pkg"_*.deb | tar -x -C "$dir" ./boot
fi
echo "kernel=$dir/boot/vmlinuz-$version"
echo "system_map=$dir/boot/System.map-$version"
echo "version=$version"
