/*
 * faults: exception delivery through the runtime's IDT.
 *
 * 1. Maps virtual 4 GiB (outside the boot identity map) through page tables
 *    of its own with the 4 KiB page not present, and reads it: the #PF
 *    handler records CR2 and the error code, maps the page onto a buffer in
 *    .bss and returns, so the read is retried and sees the buffer.
 * 2. int3 with its own #BP handler.
 * 3. triple=1: loads an IDT with limit 0 and executes ud2. #UD cannot be
 *    delivered, nor the #GP and #DF that follow: the CPU triple-faults (a
 *    shutdown). The guest never exits normally in that case.
 *
 * Exit status: 0 on success, 1 on a failed check.
 */
#include "lunavm.h"

#define FAULT_VA 0x100000000ull /* 4 GiB: PDPT entry 4, empty after boot */
#define MAGIC 0x6c756e61766d2121ull

static uint64_t pd_hi[512] __attribute__((aligned(4096)));
static uint64_t pt_hi[512] __attribute__((aligned(4096)));
/* Accessed through two addresses: volatile, so gcc cannot reorder them. */
static volatile uint64_t victim[512] __attribute__((aligned(4096)));

static volatile int pf_count;
static volatile uint64_t pf_cr2, pf_error;

static void pf_handler(struct irq_frame *f)
{
	uint64_t cr2 = read_cr2();

	if (pf_count++ || (cr2 & ~0xfffull) != FAULT_VA) {
		printf("faults: unexpected #PF at 0x%lx error 0x%lx rip 0x%lx\n",
		       (unsigned long)cr2, (unsigned long)f->error_code,
		       (unsigned long)f->ip);
		guest_exit(LUNAVM_EXIT_EXCEPTION(14));
	}
	pf_cr2 = cr2;
	pf_error = f->error_code;
	pt_hi[0] = (uintptr_t)victim | PTE_P | PTE_W | PTE_NX;
	invlpg(FAULT_VA);
}

static volatile int bp_count;
static volatile uintptr_t bp_ip;

static void bp_handler(struct irq_frame *f)
{
	bp_count++;
	bp_ip = f->ip;
}

static int check_page_fault(void)
{
	uint64_t *pml4 = (uint64_t *)(uintptr_t)(read_cr3() & PTE_ADDR_MASK);
	uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[0] & PTE_ADDR_MASK);

	pdpt[4] = (uintptr_t)pd_hi | PTE_P | PTE_W;
	pd_hi[0] = (uintptr_t)pt_hi | PTE_P | PTE_W;
	pt_hi[0] = 0; /* not present */
	write_cr3(read_cr3());

	victim[0] = MAGIC;
	idt_set_handler(14, pf_handler);
	uint64_t v = *(volatile uint64_t *)(uintptr_t)FAULT_VA;
	idt_set_handler(14, NULL);

	if (pf_count != 1) {
		printf("faults: FAIL: %d page faults, expected 1\n", pf_count);
		return 1;
	}
	if (pf_cr2 != FAULT_VA || pf_error != 0) {
		printf("faults: FAIL: cr2 0x%lx error 0x%lx, expected 0x%llx and 0\n",
		       (unsigned long)pf_cr2, (unsigned long)pf_error, FAULT_VA);
		return 1;
	}
	if (v != MAGIC) {
		printf("faults: FAIL: read 0x%lx through the new mapping\n",
		       (unsigned long)v);
		return 1;
	}
	/* Now mapped: a write through it lands in the buffer, without a fault. */
	*(volatile uint64_t *)(uintptr_t)(FAULT_VA + 8) = ~MAGIC;
	if (victim[1] != ~MAGIC || pf_count != 1) {
		printf("faults: FAIL: write through the new mapping\n");
		return 1;
	}
	printf("faults: page fault at 0x%lx handled\n", (unsigned long)pf_cr2);
	return 0;
}

static int check_int3(void)
{
	uintptr_t after;

	idt_set_handler(3, bp_handler);
	__asm__ volatile("mov $1f, %0\n\t"
			 "int3\n"
			 "1:"
			 : "=r"(after)
			 :
			 : "memory");
	idt_set_handler(3, NULL);
	if (bp_count != 1 || bp_ip != after) {
		printf("faults: FAIL: int3: %d traps, rip 0x%lx, expected 0x%lx\n",
		       bp_count, (unsigned long)bp_ip, (unsigned long)after);
		return 1;
	}
	printf("faults: int3 handled\n");
	return 0;
}

int guest_main(const char *cmdline)
{
	idt_init();
	if (check_page_fault() || check_int3())
		return 1;
	if (cmdline_get_u64(cmdline, "triple", 0)) {
		printf("faults: triple fault next\n");
		lidt(0, 0);
		__asm__ volatile("ud2" : : : "memory");
		printf("faults: FAIL: still running after the triple fault\n");
		return 1;
	}
	return 0;
}
