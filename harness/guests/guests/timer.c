/*
 * timer: PIT interrupts through the 8259 PIC, for the determinism check.
 *
 * Setup (both modes): remaps the PIC pair (ICW1 0x11, ICW2 0x20/0x28, ICW3
 * 4/2, ICW4 1), masks every line but IRQ0 (master 0xfe, slave 0xff), routes
 * vector 0x20 to a handler that counts ticks and sends a non-specific EOI
 * (0x20 to port 0x20), and programs PIT channel 0 in mode 2 (rate
 * generator, lobyte/hibyte, binary: 0x34 to port 0x43) with the divisor
 * 1193182 / hz. Vector 0x27 (the master's spurious IRQ7) is counted and
 * otherwise ignored. Never touches the local APIC.
 *
 * Options:
 *   hz=N     tick rate, default 1000 (the divisor must come out 2..65535,
 *            so 19 <= N <= 596591; else exit 0x5f)
 *   mode=M   "compute" (default) or "hlt" (else exit 0x5f)
 *   work=W   compute: loop iterations, default 20000
 *   k=K      compute: one `outb %al, $0x80` every K iterations, default
 *            100 (0: no port exits in the loop, so in lunavm its virtual
 *            time only moves with forward-progress kicks)
 *   ticks=T  hlt: ticks to wait for, default 10
 *
 * mode=compute: `sti`, then W iterations of a 64-bit LCG; after every K-th
 * iteration one port exit (so virtual time advances without kicks); after
 * each iteration the tick count is compared with the last one seen, and the
 * first 16 ticks are recorded with the (0-based) iteration in which they
 * were first seen. Then `cli`, IRQ0 masked, and the output:
 *     timer: ticks T work W
 *     timer: tick N at iteration I        (one line per recorded tick,
 *                                          N = 1, 2, ... up to 16)
 * (I = W for a tick that arrived after the last iteration's check.)
 * The exact interleaving of ticks and iterations is what a determinism
 * check compares.
 *
 * Whether ticks were expected is decided by the PIT itself: right after
 * channel 0, channel 2 is started as a one-shot of 0xffff counts, about
 * 55 ms, longer than any channel-0 period (port 0x61: gate on, speaker
 * off; 0xb0 to port 0x43: channel 2, lobyte/hibyte, mode 0; 0xff, 0xff to
 * port 0x42), and after the loop OUT2 is read from port 0x61 bit 5. When it
 * is high (the one-shot expired) but no tick arrived, the guest prints
 *     timer: FAIL: no tick before PIT channel 2 expired
 * and exits 1; otherwise exit 0. There is no such check when port 0x61
 * reads 0xff before the setup (no port 0x61 device, e.g. QEMU's microvm
 * machine). With the defaults, lunavm's 1 us per exit gives the loop about
 * 0.2 ms of virtual time: no tick at 1000 Hz, and no check either.
 *
 * mode=hlt: `sti; hlt` (the sti shadow closes the race with the tick) until
 * T ticks have arrived, then `cli`, IRQ0 masked and
 *     timer: T ticks via hlt
 * Exit 0. With no timer at all this halts for good.
 *
 * Both modes print "timer: spurious S" before the other lines if S > 0
 * spurious IRQ7 interrupts arrived.
 */
#include "lunavm.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1
#define PIC_EOI 0x20
#define IRQ0_VECTOR 0x20
#define IRQ7_VECTOR 0x27

#define PIT_CH0 0x40
#define PIT_CH2 0x42
#define PIT_CMD 0x43
#define PORT_B 0x61 /* bit 0: channel 2 gate, 1: speaker data, 5: OUT2 */
#define PIT_FREQ 1193182u

#define MAX_RECORDED 16

static volatile uint32_t ticks;
static volatile uint32_t spurious;
static uint64_t tick_iteration[MAX_RECORDED];

static void irq0_handler(struct irq_frame *f)
{
	(void)f;
	ticks++;
	outb(PIC1_CMD, PIC_EOI);
}

static void irq7_handler(struct irq_frame *f)
{
	(void)f;
	spurious++; /* spurious: no EOI */
}

/* Remap both PICs to vectors 0x20-0x2f, everything masked. */
static void pic_init(void)
{
	outb(PIC1_CMD, 0x11); /* ICW1: edge, cascade, ICW4 needed */
	outb(PIC2_CMD, 0x11);
	outb(PIC1_DATA, 0x20); /* ICW2: vector base */
	outb(PIC2_DATA, 0x28);
	outb(PIC1_DATA, 4); /* ICW3: slave on IRQ2 */
	outb(PIC2_DATA, 2); /* ICW3: slave identity 2 */
	outb(PIC1_DATA, 1); /* ICW4: 8086 mode */
	outb(PIC2_DATA, 1);
	outb(PIC1_DATA, 0xff); /* OCW1: mask all */
	outb(PIC2_DATA, 0xff);
}

/* Channel 0, lobyte/hibyte, mode 2 (rate generator), binary. */
static void pit_start(uint16_t divisor)
{
	outb(PIT_CMD, 0x34);
	outb(PIT_CH0, (uint8_t)divisor);
	outb(PIT_CH0, (uint8_t)(divisor >> 8));
}

/* Channel 2: one-shot (mode 0) of count, gate on, speaker off. */
static void pit_oneshot2(uint16_t count)
{
	outb(PORT_B, (uint8_t)((inb(PORT_B) & ~0x02) | 0x01));
	outb(PIT_CMD, 0xb0);
	outb(PIT_CH2, (uint8_t)count);
	outb(PIT_CH2, (uint8_t)(count >> 8));
}

static void timer_stop(void)
{
	cli();
	outb(PIC1_DATA, 0xff);
}

static int run_compute(uint64_t work, uint64_t k, bool check)
{
	uint64_t x = 0x2545f4914f6cdd1dull, since = 0;
	uint32_t last = 0;

	sti();
	for (uint64_t i = 0; i < work; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		if (k && ++since == k) {
			since = 0;
			outb(0x80, (uint8_t)(x >> 56));
		}
		uint32_t t = ticks;
		if (t != last) {
			for (uint32_t n = last + 1; n <= t && n <= MAX_RECORDED; n++)
				tick_iteration[n - 1] = i;
			last = t;
		}
	}
	timer_stop();
	__asm__ volatile("" : : "r"(x)); /* keep the arithmetic */

	/* Ticks that came after the last check: "at iteration W". */
	uint32_t total = ticks;
	for (uint32_t n = last + 1; n <= total && n <= MAX_RECORDED; n++)
		tick_iteration[n - 1] = work;
	if (spurious)
		printf("timer: spurious %u\n", spurious);
	printf("timer: ticks %u work %llu\n", total, (unsigned long long)work);
	for (uint32_t n = 1; n <= total && n <= MAX_RECORDED; n++)
		printf("timer: tick %u at iteration %llu\n", n,
		       (unsigned long long)tick_iteration[n - 1]);

	if (total == 0 && check && (inb(PORT_B) & 0x20)) {
		printf("timer: FAIL: no tick before PIT channel 2 expired\n");
		return 1;
	}
	return 0;
}

static int run_hlt(uint64_t want)
{
	/* IF is 0 at each check: the tick cannot slip in before the hlt. */
	while (ticks < want)
		__asm__ volatile("sti\n\thlt\n\tcli" : : : "memory");
	timer_stop();
	if (spurious)
		printf("timer: spurious %u\n", spurious);
	printf("timer: %llu ticks via hlt\n", (unsigned long long)want);
	return 0;
}

int guest_main(const char *cmdline)
{
	uint64_t hz = cmdline_get_u64(cmdline, "hz", 1000);
	uint64_t work = cmdline_get_u64(cmdline, "work", 20000);
	uint64_t k = cmdline_get_u64(cmdline, "k", 100);
	uint64_t want = cmdline_get_u64(cmdline, "ticks", 10);
	char mode[16] = "compute";

	if (cmdline_get(cmdline, "mode", mode, sizeof(mode)) >= (int)sizeof(mode) ||
	    (strcmp(mode, "compute") && strcmp(mode, "hlt"))) {
		printf("timer: bad mode '%s' (compute or hlt)\n", mode);
		return 0x5f;
	}
	uint64_t divisor = hz ? PIT_FREQ / hz : 0;
	if (divisor < 2 || divisor > 0xffff) {
		printf("timer: bad hz %llu (19..596591)\n", (unsigned long long)hz);
		return 0x5f;
	}

	pic_init();
	idt_set_handler(IRQ0_VECTOR, irq0_handler);
	idt_set_handler(IRQ7_VECTOR, irq7_handler);
	pit_start((uint16_t)divisor);
	bool check = strcmp(mode, "hlt") && inb(PORT_B) != 0xff;
	if (check)
		pit_oneshot2(0xffff);
	outb(PIC1_DATA, 0xfe); /* unmask IRQ0 only */

	if (!strcmp(mode, "hlt"))
		return run_hlt(want);
	return run_compute(work, k, check);
}
