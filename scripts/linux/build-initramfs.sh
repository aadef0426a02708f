#!/usr/bin/env bash
# Build an uncompressed newc initramfs for lunavm's Linux guests.
#
#   scripts/linux/build-initramfs.sh [--kind idle|shell] [--init FILE] [--modules DIR] [OUTFILE]
#
# idle (default): /init is idle-init.c built with gcc -static -nostdlib; it makes no
#                 system call (kernel-mode scenarios need no guest user mode).
# shell:          busybox-static with every applet linked, /init = shell-init.sh
#                 (mounts proc/sys/devtmpfs/tmp, runs a shell on ttyS0).
# --init FILE replaces /init with FILE (a static program, or a script for shell).
# --modules DIR (shell): DIR's *.ko go to /lib/modules, and the shell's /init
#                 loads those named in DIR/load-order, in that order, first.
# Deterministic (mkcpio.py: sorted, mtime 0, uid 0) and cached: a run whose inputs
# hash to the key of the existing OUTFILE does nothing. Prints `initramfs=PATH`.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: build-initramfs.sh [--kind idle|shell] [--init FILE] [--modules DIR] [OUTFILE]

  --kind idle   /init is a static no-libc program that makes no system call (default)
  --kind shell  busybox-static; /init mounts proc, sysfs, devtmpfs, tmpfs and runs
                a shell on the console
  --init FILE   use FILE as /init instead
  --modules DIR (shell) put DIR's *.ko in /lib/modules; /init loads the modules
                named in DIR/load-order (one per line) in that order
  OUTFILE       default: $LUNAVM_CACHE/linux/out/initramfs-KIND.cpio

Environment: LUNAVM_CACHE (default ~/.cache/lunavm; the Linux files live in its linux/ folder).
USAGE
}

RECIPE=1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${LUNAVM_CACHE:-$HOME/.cache/lunavm}/linux
kind=idle
init=
modules=
out=

while [ $# -gt 0 ]; do
    case $1 in
        --kind) kind=${2:?--kind needs idle or shell}; shift ;;
        --kind=*) kind=${1#--kind=} ;;
        --init) init=${2:?--init needs a file}; shift ;;
        --init=*) init=${1#--init=} ;;
        --modules) modules=${2:?--modules needs a directory}; shift ;;
        --modules=*) modules=${1#--modules=} ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "build-initramfs.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *)
            if [ -n "$out" ]; then
                echo "build-initramfs.sh: only one OUTFILE may be given" >&2; exit 2
            fi
            out=$1 ;;
    esac
    shift
done

log() { echo "build-initramfs: $*" >&2; }
die() { echo "build-initramfs: error: $*" >&2; exit 1; }

case $kind in idle|shell) ;; *) die "unknown kind '$kind' (idle or shell)" ;; esac
if [ -n "$init" ]; then
    [ -r "$init" ] || die "cannot read the /init file $init"
    init=$(cd "$(dirname "$init")" && pwd)/$(basename "$init")
fi
if [ -n "$modules" ]; then
    [ "$kind" = shell ] || die "--modules needs --kind shell (its /init loads them)"
    [ -r "$modules/load-order" ] || die "no load-order file in $modules"
    modules=$(cd "$modules" && pwd)
    [ -n "$out" ] || die "--modules needs an OUTFILE (the default name is the plain shell initramfs)"
fi
[ -n "$out" ] || out=$cache/out/initramfs-$kind.cpio
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

# --- Tools ------------------------------------------------------------------------
need_pkgs=()
command -v python3 >/dev/null || need_pkgs+=(python3)
if [ "$kind" = idle ] && [ -z "$init" ]; then
    command -v gcc >/dev/null && command -v objdump >/dev/null || need_pkgs+=(build-essential)
fi
if [ "$kind" = shell ] && ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q ' installed'; then
    need_pkgs+=(busybox-static)
fi
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
fi

# --- Cache key --------------------------------------------------------------------
key=$( {
    echo "recipe=$RECIPE kind=$kind"
    sha256sum <"$here/mkcpio.py"
    if [ -n "$init" ]; then
        echo "init=custom"; sha256sum <"$init"
    elif [ "$kind" = idle ]; then
        echo "gcc=$(gcc -dumpfullversion)"; sha256sum <"$here/idle-init.c"
    else
        sha256sum <"$here/shell-init.sh"
    fi
    if [ "$kind" = shell ]; then
        echo "busybox=$(dpkg-query -W -f='${Version}' busybox-static)"
    fi
    if [ -n "$modules" ]; then
        (cd "$modules" && sha256sum load-order ./*.ko)
    fi
} | sha256sum | cut -c1-16)

if [ -s "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
    log "up to date, nothing to do ($kind, key $key)"
    echo "initramfs=$out"
    exit 0
fi

# --- Contents ---------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
spec=$work/spec
{
    echo "dir /dev 0755"
    echo "nod /dev/console 0600 c 5 1"
    echo "dir /proc 0755"
    echo "dir /sys 0755"
    echo "dir /root 0700"
    echo "dir /tmp 1777"
} >"$spec"

if [ -n "$init" ]; then
    echo "file /init 0755 $init" >>"$spec"
elif [ "$kind" = idle ]; then
    gcc -static -nostdlib -nostartfiles -ffreestanding -fno-pie -no-pie -O2 \
        -fno-asynchronous-unwind-tables -fno-stack-protector \
        -Wl,--build-id=none -Wl,-z,noexecstack -s \
        -o "$work/init" "$here/idle-init.c"
    # The point of this /init: not a single system call.
    # shellcheck disable=SC2016 # a literal $0x80
    if objdump -d "$work/init" | grep -Eq '\s(syscall|sysenter|int +\$0x80)\b'; then
        die "idle-init.c compiled to code containing a system call instruction"
    fi
    echo "file /init 0755 $work/init" >>"$spec"
else
    echo "file /init 0755 $here/shell-init.sh" >>"$spec"
fi

if [ "$kind" = shell ]; then
    {
        echo "dir /bin 0755"
        echo "dir /sbin 0755"
        echo "dir /usr 0755"
        echo "dir /usr/bin 0755"
        echo "dir /usr/sbin 0755"
        echo "dir /etc 0755"
        echo "file /bin/busybox 0755 /bin/busybox"
        /bin/busybox --list-full | while read -r applet; do
            [ "$applet" = bin/busybox ] && continue
            echo "slink /$applet 0777 /bin/busybox"
        done | sort -u
    } >>"$spec"
fi

if [ -n "$modules" ]; then
    echo "dir /lib 0755" >>"$spec"
    echo "dir /lib/modules 0755" >>"$spec"
    echo "file /lib/modules/load-order 0644 $modules/load-order" >>"$spec"
    while IFS= read -r m; do
        [ -r "$modules/$m.ko" ] || die "load-order names $m but $modules/$m.ko is missing"
        echo "file /lib/modules/$m.ko 0644 $modules/$m.ko" >>"$spec"
    done <"$modules/load-order"
fi

python3 "$here/mkcpio.py" "$spec" "$work/initramfs.cpio"
mv "$work/initramfs.cpio" "$out"
echo "$key" >"$out.key"
log "built $kind initramfs ($(stat -c %s "$out") bytes, key $key)"
echo "initramfs=$out"
