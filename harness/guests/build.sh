#!/bin/sh
# Build the lunavm test guests by hand: ./build.sh OUTDIR [NAME...]
#
# One gcc invocation per guest, exactly as harness/build.rs does it (see
# runtime/README.md, "Building a guest"). Guests and their boot protocol
# are listed in guests.txt (name<TAB>protocol<TAB>description).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR [NAME...]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
CC=${CC:-gcc}

# Flags shared by both architectures.
COMMON="-O2 -g -ffreestanding -fno-builtin -fno-pic -fno-pie -no-pie \
-nostdlib -nostartfiles -static -mno-red-zone -mgeneral-regs-only \
-fno-stack-protector -fno-asynchronous-unwind-tables -fcf-protection=none \
-Wall -Wextra -Werror -Iruntime \
-Wl,-T,runtime/guest.ld -Wl,--build-id=none -Wl,-z,noexecstack \
-Wl,-z,max-page-size=0x1000"

# Runtime sources, in a fixed order.
RUNTIME_C="runtime/idt.c runtime/serial.c runtime/start.c runtime/string.c runtime/ucall.c runtime/virtio.c"

cd "$here"
tab=$(printf '\t')
while IFS="$tab" read -r name proto _desc opts; do
	case "$name" in '' | '#'*) continue ;; esac
	if [ $# -gt 0 ]; then
		want=no
		for n in "$@"; do [ "$n" = "$name" ] && want=yes; done
		[ $want = yes ] || continue
	fi
	case "$proto" in
	pvh) arch="-m64" entry=runtime/pvh.S ;;
	multiboot) arch="-m32 -march=i686" entry=runtime/multiboot.S ;;
	*) echo "build.sh: $name: unknown protocol '$proto'" >&2; exit 1 ;;
	esac
	source=$name cflags="" extra=""
	for word in $opts; do
		case "$word" in
		source=*) source=${word#source=} ;;
		cflags=*) cflags="$cflags ${word#cflags=}" ;;
		runtime=*) extra="$extra ${word#runtime=}" ;;
		*) echo "build.sh: $name: unknown option '$word'" >&2; exit 1 ;;
		esac
	done
	input="guests/$source.c"
	set -x
	if [ -n "$cflags" ]; then
		# shellcheck disable=SC2086
		$CC $arch $COMMON $cflags -c "$input" -o "$out/$name.guest.o"
		input="$out/$name.guest.o"
	fi
	# shellcheck disable=SC2086
	$CC $arch $COMMON $RUNTIME_C $extra runtime/isr.S $entry "$input" \
		-o "$out/$name.elf"
	{ set +x; } 2>/dev/null
done < guests.txt
