#!/usr/bin/env bash
# Fetch Debian's stock cloud kernel (linux-image-*-cloud-amd64-unsigned),
# unmodified, from the configured Debian archive, and unpack its vmlinuz,
# System.map and config into the cache, with the modules the ACPI disk needs
# (virtio_mmio, virtio_blk and what they depend on) and a busybox shell
# initramfs that loads them: the proof that distribution kernels boot under
# lunavm and find their devices through ACPI.
#
#   scripts/linux/fetch-cloud-kernel.sh [--print]
#
# The package is the one Debian's `linux-image-cloud-amd64` metapackage
# currently depends on. Cached: when that version is already unpacked, nothing
# is fetched. Prints `kernel=PATH` (the bzImage), `system_map=PATH`,
# `modules=DIR` (the .ko files and their load order), `initramfs=PATH` and
# `version=VERSION`, and writes them to out/cloud/current in the cache too.
# Needs apt-get and dpkg-deb (Debian/Ubuntu hosts).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${LUNAVM_CACHE:-$HOME/.cache/lunavm}/linux
log() { echo "fetch-cloud-kernel: $*" >&2; }
die() { echo "fetch-cloud-kernel: error: $*" >&2; exit 1; }

# The modules the initramfs loads (their dependencies are added, in order).
WANTED=(virtio_mmio virtio_blk)

case ${1:-} in
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    ''|--print) ;;
    *) die "unknown argument $1 (see --help)" ;;
esac

command -v apt-cache >/dev/null && command -v dpkg-deb >/dev/null \
    || die "needs apt-cache, apt-get and dpkg-deb (a Debian host)"

# The version the package lists name now (sets image, pkg, version, dir, modules).
resolve() {
    image=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}')
    pkg=$image-unsigned
    version=${image#linux-image-}
    dir=$cache/out/cloud/$version
    modules=$dir/modules
    [ -n "$image" ]
}
if ! resolve; then
    log "no linux-image-cloud-amd64 in the package lists: apt-get update"
    apt-get update -qq >/dev/null 2>&1 || true
    resolve || die "no linux-image-cloud-amd64 in the package lists, even after apt-get update"
fi

if [ -f "$dir/boot/vmlinuz-$version" ] && [ -s "$modules/load-order" ]; then
    log "up to date, nothing to do ($pkg)"
else
    command -v modinfo >/dev/null || die "needs modinfo (Debian package kmod)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    log "downloading $pkg"
    if ! (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
        # Stale package lists: the archive may have moved on to a newer
        # kernel, which the refreshed lists name.
        log "download failed: apt-get update, then the version the lists name"
        apt-get update -qq >/dev/null 2>&1 || true
        resolve || die "no linux-image-cloud-amd64 in the package lists after apt-get update"
        (cd "$tmp" && apt-get download -qq "$pkg") || die "cannot download $pkg"
    fi
    mkdir -p "$dir"
    dpkg-deb --fsys-tarfile "$tmp"/"$pkg"_*.deb | tar -x -C "$dir" ./boot
    dpkg-deb --fsys-tarfile "$tmp"/"$pkg"_*.deb | tar -x -C "$tmp" "./lib/modules/$version/kernel"
    tree=$tmp/lib/modules/$version/kernel

    # Each wanted module after the modules it depends on (modinfo's
    # `depends`, which is what depmod would write to modules.dep).
    declare -A path=() done=()
    while IFS= read -r ko; do
        name=$(basename "$ko" .ko)
        path[${name//-/_}]=$ko
    done < <(find "$tree" -name '*.ko')
    order=()
    visit() {
        local m=${1//-/_} dep
        [ -n "${done[$m]:-}" ] && return 0
        [ -n "${path[$m]:-}" ] || die "module $m is not in $pkg (built in?)"
        done[$m]=1
        for dep in $(modinfo -F depends "${path[$m]}" | tr ',' ' '); do
            visit "$dep"
        done
        order+=("$m")
    }
    for m in "${WANTED[@]}"; do visit "$m"; done
    rm -rf "$modules"
    mkdir -p "$modules"
    for m in "${order[@]}"; do
        cp "${path[$m]}" "$modules/$m.ko"
        echo "$m" >>"$modules/load-order"
    done
    log "modules in load order: ${order[*]}"
fi

initramfs=$("$here/build-initramfs.sh" --kind shell --modules "$modules" "$dir/initramfs-shell.cpio" \
    | sed -n 's/^initramfs=//p')
# What lunavm.linux's cloud_files() reads: the version fetched last.
{
    echo "kernel=$dir/boot/vmlinuz-$version"
    echo "system_map=$dir/boot/System.map-$version"
    echo "modules=$modules"
    echo "initramfs=$initramfs"
    echo "version=$version"
} | tee "$cache/out/cloud/current"
