/*
 * nondet: reads the TSC at CPL3, where lunavm's guest code runs natively
 * (so the value comes from the host), and lets it change what the guest
 * does: a known determinism hole that lunavm's --repeat check must catch.
 *
 * User-mode environment (built once):
 *   - GDT of its own: 0x08 64-bit code DPL 0, 0x10 data DPL 0, 0x18 32-bit
 *     code DPL 0 (the runtime's three, same selectors), 0x20 data DPL 3,
 *     0x28 64-bit code DPL 3, 0x30 a 64-bit TSS whose RSP0 is the top of a
 *     16 KiB kernel stack (no I/O bitmap, IOPL 0: CPL3 port I/O would #GP).
 *   - Three 4 KiB pages mapped with the U bit at virtual 0x8000000000
 *     (PML4 entry 1, page tables of its own; the identity map stays
 *     supervisor-only): +0x0000 code (read-only, executable: a copy of the
 *     user routine), +0x1000 stack and +0x2000 result (writable, NX).
 *   - A #UD handler (vector 6) that accepts only the user routine's ud2
 *     (CS RPL 3, RIP at that ud2) and resumes the kernel by rewriting the
 *     frame: RIP = a CPL0 continuation, CS 0x08, SS 0x10, RSP = the kernel
 *     stack saved on entry, RFLAGS 0x2. Any other #UD exits 0x76.
 *
 * Each round enters CPL3 with iretq (CS 0x2b, SS 0x23, RFLAGS 0x2: IF
 * clear); the user routine executes rdtsc, stores EAX and EDX and its CS
 * selector to the result page, and executes ud2. Back at CPL0 the guest
 * checks the stored CS has RPL 3 (else "nondet: FAIL: ..." and exit 1),
 * prints
 *     nondet: tsc parity P                (P = bit 0 of the TSC, 0 or 1)
 * makes N = 1 + (TSC & 7) port exits (`outb %al, $0x80`) and prints
 *     nondet: made N exits
 * Exit 0 after all rounds.
 *
 * Options: rounds=R (default 4).
 */
#include "lunavm.h"

#define SEL_KERNEL_CS 0x08
#define SEL_KERNEL_DS 0x10
#define SEL_USER_DS (0x20 | 3)
#define SEL_USER_CS (0x28 | 3)
#define SEL_TSS 0x30

#define USER_BASE 0x8000000000 /* PML4 entry 1 */
#define USER_CODE_VA USER_BASE
#define USER_STACK_VA (USER_BASE + 0x1000)
#define USER_RESULT_VA (USER_BASE + 0x2000)

#define STR_(x) #x
#define STR(x) STR_(x)

/*
 * The user routine, copied to the user code page; position-independent.
 * Result page: +0 TSC low, +4 TSC high, +8 CS.
 */
__asm__(".section .rodata\n"
	".globl nondet_user_code, nondet_user_ud2, nondet_user_code_end\n"
	"nondet_user_code:\n\t"
	"rdtsc\n\t"
	"movabs $" STR(USER_RESULT_VA) ", %rdi\n\t"
	"mov %eax, 0(%rdi)\n\t"
	"mov %edx, 4(%rdi)\n\t"
	"mov %cs, %eax\n\t"
	"mov %eax, 8(%rdi)\n"
	"nondet_user_ud2:\n\t"
	"ud2\n"
	"nondet_user_code_end:\n\t"
	".previous");
extern const char nondet_user_code[], nondet_user_ud2[], nondet_user_code_end[];

/*
 * void nondet_enter_user(uintptr_t rip, uintptr_t rsp): saves the callee-
 * saved registers and RSP, then iretq to CPL3. The #UD handler sends the
 * CPU back to nondet_resume at CPL0 with RSP = nondet_kernel_rsp, which
 * restores them and returns to the caller.
 */
uint64_t nondet_kernel_rsp;
__asm__(".text\n"
	".globl nondet_enter_user, nondet_resume\n"
	"nondet_enter_user:\n\t"
	"push %rbx\n\t"
	"push %rbp\n\t"
	"push %r12\n\t"
	"push %r13\n\t"
	"push %r14\n\t"
	"push %r15\n\t"
	"mov %rsp, nondet_kernel_rsp(%rip)\n\t"
	"pushq $" STR(SEL_USER_DS) "\n\t"
	"push %rsi\n\t"
	"pushq $0x2\n\t"
	"pushq $" STR(SEL_USER_CS) "\n\t"
	"push %rdi\n\t"
	"iretq\n"
	"nondet_resume:\n\t"
	"mov $" STR(SEL_KERNEL_DS) ", %eax\n\t"
	"mov %eax, %ds\n\t"
	"mov %eax, %es\n\t"
	"pop %r15\n\t"
	"pop %r14\n\t"
	"pop %r13\n\t"
	"pop %r12\n\t"
	"pop %rbp\n\t"
	"pop %rbx\n\t"
	"ret");
void nondet_enter_user(uintptr_t rip, uintptr_t rsp);
extern const char nondet_resume[];

struct tss64 {
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iomap_base;
} __attribute__((packed));
_Static_assert(sizeof(struct tss64) == 104, "tss size");

static uint64_t gdt[8] __attribute__((aligned(16)));
static struct tss64 tss __attribute__((aligned(16)));
static uint8_t kernel_stack[16384] __attribute__((aligned(16)));

static uint64_t user_pdpt[512] __attribute__((aligned(4096)));
static uint64_t user_pd[512] __attribute__((aligned(4096)));
static uint64_t user_pt[512] __attribute__((aligned(4096)));
static uint8_t user_code_page[4096] __attribute__((aligned(4096)));
static uint8_t user_stack_page[4096] __attribute__((aligned(4096)));
static volatile uint32_t user_result_page[1024] __attribute__((aligned(4096)));

static volatile unsigned user_returns;

static void ud_handler(struct irq_frame *f)
{
	uintptr_t ud2_va = USER_CODE_VA + (uintptr_t)(nondet_user_ud2 - nondet_user_code);

	if ((f->cs & 3) != 3 || f->ip != ud2_va) {
		printf("nondet: unexpected #UD at rip 0x%llx cs 0x%llx\n",
		       (unsigned long long)f->ip, (unsigned long long)f->cs);
		guest_exit(LUNAVM_EXIT_EXCEPTION(6));
	}
	user_returns++;
	f->ip = (uintptr_t)nondet_resume;
	f->cs = SEL_KERNEL_CS;
	f->ss = SEL_KERNEL_DS;
	f->sp = nondet_kernel_rsp;
	f->flags = 0x2;
}

static void setup_gdt_tss(void)
{
	uint64_t base = (uintptr_t)&tss, limit = sizeof(tss) - 1;

	gdt[1] = 0x00af9a000000ffffull; /* 0x08: 64-bit code, DPL 0 */
	gdt[2] = 0x00cf92000000ffffull; /* 0x10: data, DPL 0 */
	gdt[3] = 0x00cf9a000000ffffull; /* 0x18: 32-bit code, DPL 0 */
	gdt[4] = 0x00cff2000000ffffull; /* 0x20: data, DPL 3 */
	gdt[5] = 0x00affa000000ffffull; /* 0x28: 64-bit code, DPL 3 */
	/* 0x30: available 64-bit TSS (type 9), present, DPL 0; 16 bytes. */
	gdt[6] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
		 ((limit >> 16 & 0xf) << 48) | ((base >> 24 & 0xff) << 56);
	gdt[7] = base >> 32;

	tss.rsp[0] = (uintptr_t)(kernel_stack + sizeof(kernel_stack));
	tss.iomap_base = sizeof(tss); /* no I/O permission bitmap */

	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} d = { sizeof(gdt) - 1, (uintptr_t)gdt };
	/* Same selectors as the runtime's GDT: CS 0x08 stays valid. */
	__asm__ volatile("lgdt %0\n\t"
			 "mov %1, %%ds\n\t"
			 "mov %1, %%es\n\t"
			 "mov %1, %%ss\n\t"
			 "ltr %w2"
			 :
			 : "m"(d), "r"(SEL_KERNEL_DS), "r"(SEL_TSS)
			 : "memory");
}

static void setup_user_pages(void)
{
	uint64_t *pml4 = (uint64_t *)(uintptr_t)(read_cr3() & PTE_ADDR_MASK);
	size_t len = (size_t)(nondet_user_code_end - nondet_user_code);

	memcpy(user_code_page, nondet_user_code, len);
	user_pt[0] = (uintptr_t)user_code_page | PTE_P | PTE_U;
	user_pt[1] = (uintptr_t)user_stack_page | PTE_P | PTE_W | PTE_U | PTE_NX;
	user_pt[2] = (uintptr_t)user_result_page | PTE_P | PTE_W | PTE_U | PTE_NX;
	user_pd[0] = (uintptr_t)user_pt | PTE_P | PTE_W | PTE_U;
	user_pdpt[0] = (uintptr_t)user_pd | PTE_P | PTE_W | PTE_U;
	pml4[(USER_BASE >> 39) & 511] = (uintptr_t)user_pdpt | PTE_P | PTE_W | PTE_U;
	write_cr3(read_cr3());
}

int guest_main(const char *cmdline)
{
	uint64_t rounds = cmdline_get_u64(cmdline, "rounds", 4);

	setup_gdt_tss();
	setup_user_pages();
	idt_set_handler(6, ud_handler);

	for (uint64_t r = 0; r < rounds; r++) {
		unsigned before = user_returns;

		user_result_page[0] = user_result_page[1] = user_result_page[2] = 0;
		nondet_enter_user(USER_CODE_VA, USER_STACK_VA + 0x1000);
		if (user_returns != before + 1 || (user_result_page[2] & 3) != 3) {
			printf("nondet: FAIL: user routine did not run at CPL3 "
			       "(cs 0x%x, %u returns)\n",
			       user_result_page[2], user_returns - before);
			return 1;
		}

		uint64_t tsc = ((uint64_t)user_result_page[1] << 32) | user_result_page[0];
		unsigned n = 1 + (unsigned)(tsc & 7);
		printf("nondet: tsc parity %u\n", (unsigned)(tsc & 1));
		for (unsigned i = 0; i < n; i++)
			outb(0x80, (uint8_t)i);
		printf("nondet: made %u exits\n", n);
	}
	return 0;
}
