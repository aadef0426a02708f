/*
 * poke: a target for Lua scenario tests. Before each step the guest stops at
 * a ucall SYNC whose args[0] is the step id (extra args as listed), so a
 * script can read or change memory, registers, MSRs, inject events, attach
 * port/MMIO devices, feed serial input or set breakpoints; after the SYNC
 * returns the guest prints what it sees. Nobody has to do anything: a plain
 * run (or QEMU, where ucalls are dropped) goes through every step and
 * exits 0, printing the untouched values.
 *
 * Protocol (one SYNC per step, in this order; "SYNC(a, b, c)" means
 * args[0] = a, args[1] = b, args[2] = c and nargs = the number of args):
 *
 *  1. SYNC(1, &buf, 256). buf is a static char[256] holding "poke buffer".
 *     After: "buf: %s\n" (buf as a C string, at most 256 bytes even if the
 *     script removed the NUL) and "buf[200]: 0x%02x\n" (initially 0x00).
 *  2. SYNC(2, &value). value is a static volatile uint64_t,
 *     0x1122334455667788. After: "value: 0x%016llx\n".
 *  3. SYNC(3, 0xffff800000200000, physical address of alias_page).
 *     The 4 KiB page at virtual 0xffff800000200000 (PML4 entry 256, page
 *     tables of this guest's own, 4 KiB PTE present+writable) maps the
 *     static, page-aligned alias_page (physical = virtual: identity map),
 *     which holds "alias page". After: "alias: %s\n", read through the HIGH
 *     virtual address (at most 4096 bytes).
 *  4. SYNC(4), sent from one asm block that first sets RBX = 0 and R12 = 0
 *     and copies RBX and R12 right after the `out`. After:
 *     "rbx: 0x%llx r12: 0x%llx\n" (0x0 and 0x0 when untouched).
 *  5. wrmsr(0x174 IA32_SYSENTER_CS, 0x10), then SYNC(5). After: rdmsr(0x174)
 *     and "msr 0x174: 0x%llx\n".
 *  6. A handler for vector 0x40 counts interrupts; expect_fault(#UD, skip 0)
 *     is armed (an injected #UD is recorded, RIP is not moved); sti, SYNC(6),
 *     cli. After: "interrupt 0x40: %d\n" (the count) and "exception: %d\n"
 *     (the vector recorded by expect_fault, 6 for #UD, or -1).
 *  7. v = inl(0x600); prints "port 0x600: 0x%x\n"; outl(0x600, 0xcafe);
 *     outw(0x602, 0x1234); then SYNC(7).
 *  8. m = mmio_read32(0xd0000000); prints "mmio 0xd0000000: 0x%x\n";
 *     mmio_write32(0xd0000004, 0xbeef); then SYNC(8).
 *  9. SYNC(9), then prints "input? \n". With the option input=1 it then reads
 *     serial bytes (polling LSR) until '\n' (not stored) or 63 bytes and
 *     prints "got: %s\n"; without it, it prints "got: (skipped)\n".
 * 10. SYNC(10, address of poke_target), then calls poke_target(), a noinline
 *     function whose address is its entry; it prints "target called\n".
 *
 * Then "poke: done\n", ucall DONE(0) and exit status 0.
 *
 * Options: input=1 (step 9 reads a line from the serial port).
 */
#include "lunavm.h"

#define ALIAS_VA 0xffff800000200000ull /* PML4 256, PDPT 0, PD 1, PT 0 */

static char buf[256] = "poke buffer";
static volatile uint64_t value = 0x1122334455667788ull;
static char alias_page[4096] __attribute__((aligned(4096))) = "alias page";

/* Page tables for ALIAS_VA, hooked into the boot PML4. */
static uint64_t alias_pdpt[512] __attribute__((aligned(4096)));
static uint64_t alias_pd[512] __attribute__((aligned(4096)));
static uint64_t alias_pt[512] __attribute__((aligned(4096)));

static volatile int irq40_count;

/* Print prefix, at most max bytes of s (up to its NUL), then a newline. */
static void print_bounded(const char *prefix, const volatile char *s, size_t max)
{
	size_t n = 0;

	serial_puts(prefix);
	while (n < max && s[n])
		serial_putc(s[n++]);
	serial_putc('\n');
}

static void irq40_handler(struct irq_frame *f)
{
	(void)f;
	irq40_count++;
}

static __attribute__((noinline, noipa)) void poke_target(void)
{
	printf("target called\n");
}

static void step_memory(void)
{
	ucall(UCALL_SYNC, 3, 1, (uintptr_t)buf, sizeof(buf));
	print_bounded("buf: ", buf, sizeof(buf));
	printf("buf[200]: 0x%02x\n", (unsigned)(unsigned char)buf[200]);

	ucall(UCALL_SYNC, 2, 2, (uintptr_t)&value);
	printf("value: 0x%016llx\n", (unsigned long long)value);
}

static void step_alias(void)
{
	uint64_t *pml4 = (uint64_t *)(uintptr_t)(read_cr3() & PTE_ADDR_MASK);

	alias_pt[(ALIAS_VA >> 12) & 511] = (uintptr_t)alias_page | PTE_P | PTE_W;
	alias_pd[(ALIAS_VA >> 21) & 511] = (uintptr_t)alias_pt | PTE_P | PTE_W;
	alias_pdpt[(ALIAS_VA >> 30) & 511] = (uintptr_t)alias_pd | PTE_P | PTE_W;
	pml4[(ALIAS_VA >> 39) & 511] = (uintptr_t)alias_pdpt | PTE_P | PTE_W;
	invlpg(ALIAS_VA);

	ucall(UCALL_SYNC, 3, 3, ALIAS_VA, (uintptr_t)alias_page);
	print_bounded("alias: ", (const volatile char *)(uintptr_t)ALIAS_VA,
		      sizeof(alias_page));
}

static void step_registers(void)
{
	struct lunavm_ucall uc;
	uint64_t rbx, r12;

	ucall_init(&uc, UCALL_SYNC);
	uc.nargs = 1;
	uc.args[0] = 4;
	__asm__ volatile("mov $0, %%rbx\n\t"
			 "mov $0, %%r12\n\t"
			 "outl %%eax, %%dx\n\t"
			 "mov %%rbx, %0\n\t"
			 "mov %%r12, %1"
			 : "=r"(rbx), "=r"(r12)
			 : "a"((uint32_t)UCALL_SYNC), "d"((uint16_t)LUNAVM_UCALL_PORT),
			   "D"(&uc)
			 : "rbx", "r12", "memory");
	printf("rbx: 0x%llx r12: 0x%llx\n", (unsigned long long)rbx,
	       (unsigned long long)r12);
}

static void step_msr(void)
{
	wrmsr(0x174, 0x10); /* IA32_SYSENTER_CS */
	ucall(UCALL_SYNC, 1, 5);
	printf("msr 0x174: 0x%llx\n", (unsigned long long)rdmsr(0x174));
}

static void step_injection(void)
{
	idt_set_handler(0x40, irq40_handler);
	/* An injected #UD arrives with RIP at the next instruction: skip 0. */
	expect_fault(6, 0);
	sti();
	ucall(UCALL_SYNC, 1, 6);
	cli();
	int ex = fault_taken();
	printf("interrupt 0x40: %d\n", irq40_count);
	printf("exception: %d\n", ex);
}

static void step_devices(void)
{
	uint32_t v = inl(0x600);
	printf("port 0x600: 0x%x\n", v);
	outl(0x600, 0xcafe);
	outw(0x602, 0x1234);
	ucall(UCALL_SYNC, 1, 7);

	uint32_t m = mmio_read32(0xd0000000);
	printf("mmio 0xd0000000: 0x%x\n", m);
	mmio_write32(0xd0000004, 0xbeef);
	ucall(UCALL_SYNC, 1, 8);
}

static void step_input(bool read_input)
{
	char line[64];
	size_t n = 0;

	ucall(UCALL_SYNC, 1, 9);
	printf("input? \n");
	if (!read_input) {
		printf("got: (skipped)\n");
		return;
	}
	while (n < sizeof(line) - 1) {
		int c = serial_getc();
		if (c == '\n')
			break;
		line[n++] = (char)c;
	}
	line[n] = '\0';
	printf("got: %s\n", line);
}

int guest_main(const char *cmdline)
{
	bool read_input = cmdline_get_u64(cmdline, "input", 0) != 0;

	step_memory();          /* 1, 2 */
	step_alias();           /* 3 */
	step_registers();       /* 4 */
	step_msr();             /* 5 */
	step_injection();       /* 6 */
	step_devices();         /* 7, 8 */
	step_input(read_input); /* 9 */

	ucall(UCALL_SYNC, 2, 10, (uintptr_t)poke_target);
	poke_target();

	printf("poke: done\n");
	ucall_done(0);
}
