/*
 * exits: the exit-rate benchmark. count=N (default 1000000) port-I/O exits,
 * each an `outb %al, $0x80`, in a three-instruction loop; then one line of
 * output and exit 0.
 */
#include "lunavm.h"

int guest_main(const char *cmdline)
{
	uint64_t n = cmdline_get_u64(cmdline, "count", 1000000);

	if (n) {
		uint64_t left = n;
		__asm__ volatile("1:\n\t"
				 "outb %%al, $0x80\n\t"
				 "dec %0\n\t"
				 "jnz 1b"
				 : "+r"(left)
				 : "a"(0)
				 : "memory");
	}
	printf("exits: done %llu\n", (unsigned long long)n);
	return 0;
}
