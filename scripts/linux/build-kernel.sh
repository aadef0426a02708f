#!/usr/bin/env bash
# Build lunavm's test-suite Linux kernel from Debian's linux-source-6.1 package.
#
#   scripts/linux/build-kernel.sh [--acpi] [OUTDIR]
#
# Leaves bzImage, vmlinux (with DWARF5 debug info), System.map and config in OUTDIR
# (default: $LUNAVM_CACHE/linux/out/lunavm, .../lunavm-acpi with --acpi) and prints
# their paths on stdout, one `name=path` line each; progress goes to stderr.
# Cached: the key is a hash of the source package version and the configuration
# fragment(s); a run whose key matches the last build does nothing.
# More: scripts/linux/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: build-kernel.sh [--acpi] [--jobs N] [OUTDIR]

Builds the lunavm test-suite kernel from Debian's linux-source-6.1 (installed with
apt-get when missing; needs root for that) and leaves bzImage, vmlinux, System.map
and config in OUTDIR.

  --acpi      the ACPI configuration: lunavm.config + lunavm-acpi.config
  --jobs N    parallel make jobs (default: nproc)
  OUTDIR      where the outputs go (default: $LUNAVM_CACHE/linux/out/lunavm[-acpi])

Environment: LUNAVM_CACHE (default ~/.cache/lunavm); its linux/ folder holds the
unpacked source, the build trees and the default outputs.
EOF
}

# Bump when the way the kernel is built changes (not the fragments: they are hashed).
RECIPE=1
SRC_PKG=linux-source-6.1
TARBALL=/usr/src/linux-source-6.1.tar.xz

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${LUNAVM_CACHE:-$HOME/.cache/lunavm}/linux
acpi=0
jobs=$(nproc)
outdir=

while [ $# -gt 0 ]; do
    case $1 in
        --acpi) acpi=1 ;;
        --jobs) jobs=${2:?--jobs needs a number}; shift ;;
        --jobs=*) jobs=${1#--jobs=} ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "build-kernel.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *)
            if [ -n "$outdir" ]; then
                echo "build-kernel.sh: only one OUTDIR may be given" >&2; exit 2
            fi
            outdir=$1 ;;
    esac
    shift
done

log() { echo "build-kernel: $*" >&2; }
die() { echo "build-kernel: error: $*" >&2; exit 1; }

fragments=("$here/lunavm.config")
name=lunavm
if [ "$acpi" = 1 ]; then
    fragments+=("$here/lunavm-acpi.config")
    name=lunavm-acpi
fi
for f in "${fragments[@]}"; do
    [ -r "$f" ] || die "cannot read the configuration fragment $f"
done

# --- Tools and the source package -----------------------------------------------
need_pkgs=()
command -v gcc >/dev/null && command -v make >/dev/null || need_pkgs+=(build-essential)
command -v bc >/dev/null || need_pkgs+=(bc)
command -v bison >/dev/null || need_pkgs+=(bison)
command -v flex >/dev/null || need_pkgs+=(flex)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v cpio >/dev/null || need_pkgs+=(cpio)
[ -e /usr/include/gelf.h ] || need_pkgs+=(libelf-dev)
[ -e /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
[ -r "$TARBALL" ] || need_pkgs+=("$SRC_PKG")
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
    [ -r "$TARBALL" ] || die "$SRC_PKG is installed but $TARBALL is missing"
fi
version=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) ||
    die "cannot read the version of $SRC_PKG (dpkg-query failed)"

# --- Cache key --------------------------------------------------------------------
key=$( {
    echo "recipe=$RECIPE"
    echo "package=$SRC_PKG $version"
    for f in "${fragments[@]}"; do echo "fragment=$(basename "$f")"; cat "$f"; done
} | sha256sum | cut -c1-16)

[ -n "$outdir" ] || outdir=$cache/out/$name
mkdir -p "$cache" "$outdir"
outdir=$(cd "$outdir" && pwd)

outputs=(bzImage vmlinux System.map config)
print_outputs() {
    log "kernel $name (key $key, $SRC_PKG $version) is in $outdir"
    for o in "${outputs[@]}"; do echo "$o=$outdir/$o"; done
}
up_to_date() {
    local dir=$1 o
    [ "$(cat "$dir/.lunavm-key" 2>/dev/null)" = "$key" ] || return 1
    for o in "${outputs[@]}"; do [ -s "$dir/$o" ] || return 1; done
}

if up_to_date "$outdir"; then
    log "up to date, nothing to do"
    print_outputs
    exit 0
fi

# One build at a time per cache (CI and a developer may share one).
exec 9>"$cache/.lock"
flock 9
if up_to_date "$outdir"; then
    log "up to date (built by a concurrent run)"
    print_outputs
    exit 0
fi

# --- Source tree (unpacked once per package version, shared by both configs) ----
srcroot=$cache/src/$version
src=$srcroot/linux-source-6.1
if [ ! -e "$srcroot/.unpacked" ]; then
    log "unpacking $TARBALL ($SRC_PKG $version) into $srcroot"
    rm -rf "$srcroot"
    mkdir -p "$srcroot.tmp"
    tar -xJf "$TARBALL" -C "$srcroot.tmp"
    mv "$srcroot.tmp" "$srcroot"
    touch "$srcroot/.unpacked"
fi
[ -e "$src/Makefile" ] || die "unexpected layout in $TARBALL: no linux-source-6.1/Makefile"
# Drop trees of other package versions: they can never match a key again.
for d in "$cache"/src/*; do
    [ "$d" = "$srcroot" ] || { [ -e "$d" ] && log "removing stale source $d" && rm -rf "$d"; } || true
done

# --- Configure and build (out of tree, one build tree per configuration name) ---
# The tree's path stays the same when the fragment changes, so kbuild rebuilds only
# what the changed options touch; its .lunavm-key says which key it was built for.
build=$cache/build/$name
mkdir -p "$build"
if [ "$(cat "$build/.lunavm-key" 2>/dev/null)" != "$key" ]; then
    rm -f "$build/.lunavm-key" "$build/.lunavm-built"
fi

# Reproducible banner: no build date/user/host/count in the kernel's version string.
kmake() {
    make -C "$src" O="$build" ARCH=x86_64 \
        KBUILD_BUILD_TIMESTAMP="$SRC_PKG $version" KBUILD_BUILD_VERSION=1 \
        KBUILD_BUILD_USER=lunavm KBUILD_BUILD_HOST=lunavm "$@"
}

if [ ! -e "$build/.lunavm-built" ]; then
    # Merge the fragments, the last assignment of a symbol winning.
    merged=$build/lunavm-fragment.config
    cat "${fragments[@]}" | awk '
        /^CONFIG_[A-Za-z0-9_]+=/ { sym = substr($0, 1, index($0, "=") - 1) }
        /^# CONFIG_[A-Za-z0-9_]+ is not set$/ { sym = $2 }
        sym != "" { if (!(sym in line)) order[n++] = sym; line[sym] = $0; sym = "" }
        END { for (i = 0; i < n; i++) print line[order[i]] }' >"$merged"

    log "configuring: make allnoconfig with KCONFIG_ALLCONFIG=${fragments[*]##*/}"
    kmake -s KCONFIG_ALLCONFIG="$merged" allnoconfig >&2

    # Every requested value must be in the result: Kconfig drops what it cannot
    # satisfy without a word.
    bad=0
    while IFS= read -r want; do
        case $want in
            CONFIG_*=*) sym=${want%%=*} ;;
            "# CONFIG_"*) sym=${want#\# }; sym=${sym%% *} ;;
        esac
        got=$(grep -E "^($sym=|# $sym is not set)" "$build/.config" || true)
        if [ "$got" != "$want" ]; then
            # An option that is off may also be absent (its dependencies are off).
            if [ -z "$got" ] && [ "${want#\# }" != "$want" ]; then continue; fi
            echo "build-kernel: requested '$want' but the configuration has '${got:-nothing}'" >&2
            bad=1
        fi
    done <"$merged"
    [ "$bad" = 0 ] || die "the fragment does not hold in $SRC_PKG $version (see above); fix ${fragments[*]}"

    log "building with $jobs jobs in $build"
    start=$(date +%s)
    kmake -j"$jobs" bzImage >&2
    secs=$(( $(date +%s) - start ))
    log "built in ${secs}s"
    {
        echo "key=$key"
        echo "package=$SRC_PKG $version"
        echo "fragments=${fragments[*]##*/}"
        echo "build_seconds=$secs"
        echo "jobs=$jobs"
        echo "gcc=$(gcc -dumpfullversion)"
        echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    } >"$build/lunavm-build-info"
    echo "$key" >"$build/.lunavm-key"
    touch "$build/.lunavm-built"
fi

rm -f "$outdir/.lunavm-key"
cp "$build/arch/x86/boot/bzImage" "$outdir/bzImage"
cp "$build/vmlinux" "$outdir/vmlinux"
cp "$build/System.map" "$outdir/System.map"
cp "$build/.config" "$outdir/config"
cp "$build/lunavm-build-info" "$outdir/build-info"
echo "$key" >"$outdir/.lunavm-key"
print_outputs
