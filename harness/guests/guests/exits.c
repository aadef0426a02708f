/*
 * exits: the exit-rate benchmark. count=N (default 1000000) port-I/O exits,
 * each an `outb %al, $0x80`, in a three-instruction loop; then one line of
 * output and exit 0.
 *
 * in=1 makes each exit an `inb $0x80, %al` instead and sums what the reads
 * returned, printed as "exits: sum S" (for hooks that supply the value).
 */
#include "lunavm.h"

int guest_main(const char *cmdline)
{
	uint64_t n = cmdline_get_u64(cmdline, "count", 1000000);
	bool in = cmdline_get_u64(cmdline, "in", 0) != 0;

	if (n && !in) {
		uint64_t left = n;
		__asm__ volatile("1:\n\t"
				 "outb %%al, $0x80\n\t"
				 "dec %0\n\t"
				 "jnz 1b"
				 : "+r"(left)
				 : "a"(0)
				 : "memory");
	} else if (n) {
		uint64_t left = n, sum = 0;
		__asm__ volatile("1:\n\t"
				 "inb $0x80, %%al\n\t"
				 "movzbq %%al, %%rdx\n\t"
				 "add %%rdx, %1\n\t"
				 "dec %0\n\t"
				 "jnz 1b"
				 : "+r"(left), "+r"(sum)
				 : "a"(0)
				 : "rdx", "memory", "cc");
		printf("exits: sum %llu\n", (unsigned long long)sum);
	}
	printf("exits: done %llu\n", (unsigned long long)n);
	return 0;
}
