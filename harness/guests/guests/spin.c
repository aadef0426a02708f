/*
 * spin: waits for timer ticks without ever exiting, so only the host's
 * forward-progress kick can get it out of its loop (a determinism hole
 * lunavm must count and report).
 *
 * Setup as in the `timer` guest: PIC pair remapped (ICW1 0x11, ICW2
 * 0x20/0x28, ICW3 4/2, ICW4 1), all lines masked but IRQ0, a handler on
 * vector 0x20 that counts ticks and sends a non-specific EOI (0x20 to port
 * 0x20), PIT channel 0 in mode 2 with divisor 1193182 / hz. Never touches
 * the local APIC.
 *
 * Options:
 *   hz=N     tick rate, default 1000 (19 <= N <= 596591, else exit 0x5f)
 *   ticks=T  ticks to wait for, default 3
 *
 * After `sti` the guest spins in a two-instruction loop (cmpl on the
 * volatile tick counter, jb) with no port I/O, MMIO or hlt: no exit at all
 * until T ticks have been counted. Then `cli`, IRQ0 masked, and
 *     spin: T ticks
 * and exit 0. Without timer interrupts it spins for good.
 */
#include "lunavm.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1
#define PIC_EOI 0x20
#define IRQ0_VECTOR 0x20

#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define PIT_FREQ 1193182u

static volatile uint32_t ticks;

static void irq0_handler(struct irq_frame *f)
{
	(void)f;
	ticks++;
	outb(PIC1_CMD, PIC_EOI);
}

int guest_main(const char *cmdline)
{
	uint64_t hz = cmdline_get_u64(cmdline, "hz", 1000);
	uint64_t want = cmdline_get_u64(cmdline, "ticks", 3);
	uint64_t divisor = hz ? PIT_FREQ / hz : 0;

	if (divisor < 2 || divisor > 0xffff) {
		printf("spin: bad hz %llu (19..596591)\n", (unsigned long long)hz);
		return 0x5f;
	}
	if (want > 0xffffffffull) {
		printf("spin: bad ticks %llu\n", (unsigned long long)want);
		return 0x5f;
	}

	/* PICs: vectors 0x20-0x2f, everything masked. */
	outb(PIC1_CMD, 0x11);
	outb(PIC2_CMD, 0x11);
	outb(PIC1_DATA, 0x20);
	outb(PIC2_DATA, 0x28);
	outb(PIC1_DATA, 4);
	outb(PIC2_DATA, 2);
	outb(PIC1_DATA, 1);
	outb(PIC2_DATA, 1);
	outb(PIC1_DATA, 0xff);
	outb(PIC2_DATA, 0xff);

	idt_set_handler(IRQ0_VECTOR, irq0_handler);
	outb(PIT_CMD, 0x34); /* channel 0, lobyte/hibyte, mode 2, binary */
	outb(PIT_CH0, (uint8_t)divisor);
	outb(PIT_CH0, (uint8_t)(divisor >> 8));
	outb(PIC1_DATA, 0xfe); /* unmask IRQ0 */

	sti();
	/* No exits in here: cmp against memory, branch back. */
	__asm__ volatile("1:\n\t"
			 "cmpl %1, %0\n\t"
			 "jb 1b"
			 :
			 : "m"(ticks), "r"((uint32_t)want)
			 : "memory", "cc");
	cli();
	outb(PIC1_DATA, 0xff);

	printf("spin: %llu ticks\n", (unsigned long long)want);
	return 0;
}
