/*
 * scribble: writes widely over memory and changes device state, so snapshot
 * tests can check that a restored machine ends exactly like an uninterrupted
 * one.
 *
 * Options: rounds=N (default 8).
 * Each round r (1..N):
 *   - rewrites one 8-byte word in each of 512 pages of an 8 MiB buffer, the
 *     page stride and the value depending on r and on the word's previous
 *     value, so the final memory depends on every round before it;
 *   - writes r to the POST port (0x80) and to the UART scratch register, and
 *     changes the UART divisor latch;
 *   - prints "scribble: round R sum S" (S sums the words written);
 *   - sends a ucall PRINT on even rounds.
 * Then prints "scribble: done" and exits 0.
 */
#include "lunavm.h"

#define PAGES 2048 /* 8 MiB */
#define PER_ROUND 512

static uint64_t buffer[PAGES * 512] __attribute__((aligned(4096)));

int guest_main(const char *cmdline)
{
	uint64_t rounds = cmdline_get_u64(cmdline, "rounds", 8);

	for (uint64_t r = 1; r <= rounds; r++) {
		uint64_t sum = 0;
		uint64_t stride = 1 + (r % 3);
		for (uint64_t i = 0; i < PER_ROUND; i++) {
			uint64_t page = (i * stride + r) % PAGES;
			uint64_t *w = &buffer[page * 512 + (r % 512)];
			*w = *w * 31 + r * 0x9e3779b97f4a7c15ull + i;
			sum += *w;
		}
		outb(0x80, (uint8_t)r);
		outb(0x3f8 + 7, (uint8_t)r);            /* UART scratch */
		outb(0x3f8 + 3, 0x80);                  /* DLAB on */
		outb(0x3f8 + 0, (uint8_t)(r + 1));      /* divisor low */
		outb(0x3f8 + 3, 0x03);                  /* DLAB off, 8N1 */
		printf("scribble: round %llu sum 0x%llx\n", (unsigned long long)r,
		       (unsigned long long)sum);
		if (r % 2 == 0)
			ucall_print("scribble round %llu", (unsigned long long)r);
	}
	printf("scribble: done\n");
	return 0;
}
