#!/usr/bin/env bash
# Build the root-disk image of lunavm's Linux kernel-mode scenarios: a small ext2
# file system whose /init is the idle init (idle-init.c: no system calls), for a
# kernel booted with `root=/dev/vda` and the image as its virtio disk.
#
#   scripts/linux/build-rootfs.sh [OUTFILE]
#
# Contents: /init, /dev, /proc, /sys, /tmp, /root, and /etc/lunavm-rootfs (a
# one-line marker). Made with mke2fs -d (no root, no loop mount), with a fixed
# UUID, hash seed and timestamps: byte-for-byte reproducible. Cached: a run whose
# inputs hash to the key of the existing OUTFILE does nothing. Prints `rootfs=PATH`.
set -euo pipefail

RECIPE=1
SIZE_KB=2048
UUID=4c554e41-564d-4000-8000-726f6f746673
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${LUNAVM_CACHE:-$HOME/.cache/lunavm}/linux

case ${1:-} in
    -h|--help)
        echo "Usage: build-rootfs.sh [OUTFILE]   (default: \$LUNAVM_CACHE/linux/out/rootfs-idle.ext2)"
        exit 0 ;;
    -*) echo "build-rootfs.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac
out=${1:-$cache/out/rootfs-idle.ext2}
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

log() { echo "build-rootfs: $*" >&2; }
die() { echo "build-rootfs: error: $*" >&2; exit 1; }

# --- Tools ------------------------------------------------------------------------
mke2fs=$(command -v mke2fs || echo /sbin/mke2fs)
need_pkgs=()
[ -x "$mke2fs" ] || need_pkgs+=(e2fsprogs)
command -v gcc >/dev/null && command -v objdump >/dev/null || need_pkgs+=(build-essential)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        die "missing packages: ${need_pkgs[*]} — run: sudo apt-get install ${need_pkgs[*]}"
    fi
    log "installing ${need_pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2; then
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >&2
    fi
    mke2fs=$(command -v mke2fs || echo /sbin/mke2fs)
fi

# --- Cache key --------------------------------------------------------------------
key=$( {
    echo "recipe=$RECIPE size=$SIZE_KB uuid=$UUID"
    echo "gcc=$(gcc -dumpfullversion)"
    "$mke2fs" -V 2>&1 | head -1
    sha256sum <"$here/idle-init.c"
} | sha256sum | cut -c1-16)

if [ -s "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
    log "up to date, nothing to do (key $key)"
    echo "rootfs=$out"
    exit 0
fi

# --- Contents ---------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{dev,proc,sys,tmp,root,etc}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
gcc -static -nostdlib -nostartfiles -ffreestanding -fno-pie -no-pie -O2 \
    -fno-asynchronous-unwind-tables -fno-stack-protector \
    -Wl,--build-id=none -Wl,-z,noexecstack -s \
    -o "$root/init" "$here/idle-init.c"
# shellcheck disable=SC2016 # a literal $0x80
if objdump -d "$root/init" | grep -Eq '\s(syscall|sysenter|int +\$0x80)\b'; then
    die "idle-init.c compiled to code containing a system call instruction"
fi
chmod 0755 "$root/init"
echo "lunavm root file system (scripts/linux/build-rootfs.sh)" >"$root/etc/lunavm-rootfs"
find "$root" -exec touch -h -d @0 {} +

# Fixed UUID, directory hash seed and times (E2FSPROGS_FAKE_TIME is mke2fs's
# own clock override), files owned by root whoever runs this.
E2FSPROGS_FAKE_TIME=1 "$mke2fs" -q -F -t ext2 -b 1024 -N 64 -m 0 -L lunavm-root \
    -U "$UUID" -E "root_owner=0:0,hash_seed=$UUID" -d "$root" \
    "$work/rootfs.ext2" "$SIZE_KB" >/dev/null
# mke2fs 1.47.0 stamps the ctime of the files -d copies with the real clock:
# set every inode's times to 0 with debugfs.
( cd "$root" && find . -mindepth 1 ) | sed 's|^\.||' | {
    for f in / /lost+found $(cat); do
        for field in atime ctime mtime; do echo "sif $f $field 0"; done
    done
} >"$work/times.debugfs"
debugfs -w -f "$work/times.debugfs" "$work/rootfs.ext2" >/dev/null 2>&1 \
    || die "debugfs could not reset the file times"
mv "$work/rootfs.ext2" "$out"
echo "$key" >"$out.key"
log "built the root disk ($(stat -c %s "$out") bytes, key $key)"
echo "rootfs=$out"
