/*
 * dirty: the snapshot-restore benchmark's guest. Each round dirties a fixed
 * number of pages and then exits once, so a VMM that restores a snapshot
 * taken at one exit and runs to the next sees exactly that many pages
 * written in between.
 *
 * Options: pages=N (default 16, at most 4096), rounds=R (default 1000000).
 * The guest owns a static, page-aligned 16 MiB buffer (4096 pages) in .bss.
 * Round r (1..R) stores the 8-byte value r at the start of each of the
 * first N pages (stride 4096 bytes), then does one `outb %al, $0x80` (one
 * port-I/O exit per round). The stores and the exit are a single asm block
 * that keeps everything in registers, so a round writes no other memory
 * (no stack traffic). After R rounds it prints "dirty: done R" and exits 0.
 * Nothing is printed before the first round: the first port-0x80 exit
 * comes right after the runtime's UART setup.
 */
#include "lunavm.h"

#define BUFFER_PAGES 4096
#define PAGE_BYTES 4096

static uint8_t buffer[BUFFER_PAGES * PAGE_BYTES] __attribute__((aligned(4096)));

int guest_main(const char *cmdline)
{
	uint64_t pages = cmdline_get_u64(cmdline, "pages", 16);
	uint64_t rounds = cmdline_get_u64(cmdline, "rounds", 1000000);

	if (pages > BUFFER_PAGES)
		pages = BUFFER_PAGES;
	for (uint64_t r = 1; r <= rounds; r++) {
		uint64_t left = pages;
		uint8_t *p = buffer;

		__asm__ volatile("test %0, %0\n\t"
				 "jz 2f\n"
				 "1:\n\t"
				 "movq %2, (%1)\n\t"
				 "add $4096, %1\n\t"
				 "dec %0\n\t"
				 "jnz 1b\n"
				 "2:\n\t"
				 "outb %%al, $0x80"
				 : "+r"(left), "+r"(p)
				 : "r"(r), "a"((uint8_t)r)
				 : "memory", "cc");
	}
	printf("dirty: done %llu\n", (unsigned long long)rounds);
	return 0;
}
