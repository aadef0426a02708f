#!/usr/bin/env bash
# Boot a kernel + initramfs under QEMU (TCG by default) until a console marker
# appears, and report how long that took: lunavm's reference point for the Linux
# boot benchmark, and a check of the kernel/initramfs that needs no lunavm.
#
#   scripts/linux/qemu-boot.sh [options] [-- extra qemu arguments]
#
# Exits 0 when the marker appeared, 1 when QEMU stopped or the timeout passed first.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: qemu-boot.sh [options] [-- extra qemu arguments]

  --kernel FILE    bzImage, or vmlinux (PVH entry)   default: $LUNAVM_CACHE/linux/out/lunavm/bzImage
  --initrd FILE    default: $LUNAVM_CACHE/linux/out/initramfs-idle.cpio
  --append STR     kernel command line  default: "console=ttyS0 nolapic noapic panic=-1"
  --machine M      QEMU machine (pc, or microvm,... for virtio-mmio devices)  default: pc
  --accel A        tcg or kvm           default: tcg
  --marker STR     console text to wait for  default: "Run /init as init process"
  --timeout S      seconds              default: 120
  --log FILE       console log          default: a temporary file, printed at the end
  --tail N         console lines to print at the end  default: 15
USAGE
}

cache=${LUNAVM_CACHE:-$HOME/.cache/lunavm}/linux
kernel=$cache/out/lunavm/bzImage
initrd=$cache/out/initramfs-idle.cpio
append="console=ttyS0 nolapic noapic panic=-1"
machine=pc
accel=tcg
marker="Run /init as init process"
timeout=120
log=
tailn=15
extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --kernel) kernel=$2; shift ;;
        --initrd) initrd=$2; shift ;;
        --append) append=$2; shift ;;
        --machine) machine=$2; shift ;;
        --accel) accel=$2; shift ;;
        --marker) marker=$2; shift ;;
        --timeout) timeout=$2; shift ;;
        --log) log=$2; shift ;;
        --tail) tailn=$2; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "qemu-boot.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

command -v qemu-system-x86_64 >/dev/null ||
    { echo "qemu-boot.sh: qemu-system-x86_64 missing — apt-get install qemu-system-x86" >&2; exit 1; }
[ -n "$log" ] || log=$(mktemp /tmp/lunavm-qemu-boot.XXXXXX.log)
: >"$log"

initrd_args=()
[ -z "$initrd" ] || initrd_args=(-initrd "$initrd")
start=$(date +%s%N)
qemu-system-x86_64 -accel "$accel" -M "$machine" -m 256M -display none -no-reboot \
    -monitor none -serial "file:$log" -kernel "$kernel" "${initrd_args[@]}" \
    -append "$append" "${extra[@]}" </dev/null >"$log.qemu" 2>&1 &
qpid=$!
trap 'kill "$qpid" 2>/dev/null || true' EXIT

result=timeout
deadline=$(( start + timeout * 1000000000 ))
while :; do
    if grep -qF -- "$marker" "$log"; then result=marker; break; fi
    if ! kill -0 "$qpid" 2>/dev/null; then
        grep -qF -- "$marker" "$log" && result=marker || result=exited
        break
    fi
    [ "$(date +%s%N)" -lt "$deadline" ] || break
    sleep 0.02
done
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
kill "$qpid" 2>/dev/null || true
wait "$qpid" 2>/dev/null || true

tail -n "$tailn" "$log" | sed 's/^/  | /'
[ "$result" = marker ] || cat "$log.qemu" >&2 || true
rm -f "$log.qemu"
secs=$(printf '%d.%03d' $((elapsed / 1000)) $((elapsed % 1000)))
case $result in
    marker) echo "qemu-boot: \"$marker\" after ${secs}s (QEMU $accel, $machine; log $log)" ;;
    exited) echo "qemu-boot: QEMU stopped after ${secs}s without \"$marker\" (log $log)"; exit 1 ;;
    timeout) echo "qemu-boot: no \"$marker\" within ${timeout}s (log $log)"; exit 1 ;;
esac
