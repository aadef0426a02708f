/*
 * watch: a target for debugger tests (data watchpoints, breakpoints by name).
 * `watched` fills a page of its own (page-aligned, 4 KiB), so watching it
 * never touches the pages of code, stack or page tables. For each round
 * i = 1..rounds the guest calls bump(i), a noinline function that stores
 * i * 0x11 in watched.counter, then reads watched.input (initially 5) into a
 * sum. Then it prints "watch: counter 0x.., sum N" and exits 0.
 *
 * Options: rounds=N (default 3).
 */
#include "lunavm.h"

struct watched_page {
	uint64_t counter;
	uint64_t input;
	uint8_t pad[4096 - 16];
};

volatile struct watched_page watched __attribute__((aligned(4096))) = {
	.input = 5,
};

__attribute__((noinline, noipa)) void bump(uint64_t i)
{
	watched.counter = i * 0x11;
}

int guest_main(const char *cmdline)
{
	uint64_t rounds = cmdline_get_u64(cmdline, "rounds", 3);
	uint64_t sum = 0;
	for (uint64_t i = 1; i <= rounds; i++) {
		bump(i);
		sum += watched.input;
	}
	printf("watch: counter 0x%llx, sum %llu\n",
	       (unsigned long long)watched.counter, (unsigned long long)sum);
	return 0;
}
