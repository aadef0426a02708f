/*
 * usermode: the transitions between user mode (CPL3) and the kernel that an
 * operating system relies on, each checked and reported on its own line:
 *
 *   usermode: sysret: ok|FAIL ...     sysretq from CPL0 lands at CPL3
 *   usermode: syscall: ok|FAIL ...    syscall from CPL3 enters LSTAR at CPL0
 *                                     (CS/SS from STAR, RFLAGS masked by
 *                                     SFMASK, RCX/R11 saved, RSP unchanged),
 *                                     and sysretq returns to CPL3
 *   usermode: syscall-iret: ok|FAIL   the same syscall, returned with iretq
 *   usermode: int80: ok|FAIL ...      int $0x80 from CPL3 through a DPL 3 gate
 *   usermode: N failed
 *
 * and exits with the number of failed checks. `only=NAME` (sysret, syscall,
 * syscall-iret, int80) runs one check; `rounds=R` repeats the syscall checks
 * R times (default 1).
 *
 * On a host that gets a transition wrong the guest sees it and says so: a
 * syscall that stays at CPL3 faults (#PF) fetching the supervisor-only entry
 * code at LSTAR, and the #PF handler recognises that fault (CS RPL 3, RIP =
 * LSTAR); an int $0x80 that raises #UD is recognised by the #UD handler.
 *
 * Environment: a GDT with Linux's selectors (kernel CS 0x10, SS 0x18; user
 * CS32 0x23, SS 0x2b, CS 0x33; the runtime's CS 0x08 stays for the IDT
 * gates; TSS 0x40), because a host that runs user mode natively may put its
 * own (Linux's) user selectors in CS and SS whatever the guest's STAR says
 * (measured on software-nested KVM: SYSRET with STAR[63:48] = 0x18 left CS
 * 0x33). User code, stack and result pages at 0x8000000000, as in nondet.
 * STAR = 0x0023_0010 << 32 (SYSCALL: CS 0x10, SS 0x18; SYSRET: SS 0x2b,
 * CS 0x33), SFMASK = TF |
 * IF | DF | AC (0x40700, as Linux masks them), EFER.SCE set. User code
 * starts with RFLAGS = CF | DF | IF | bit 1 (0x603); PIC and PIT are left
 * unprogrammed, so no interrupt arrives.
 */
#include "lunavm.h"

#define SEL_KERNEL_CS 0x08 /* the runtime's: IDT gates and um_resume */
#define SEL_SYSCALL_CS 0x10 /* Linux's __KERNEL_CS */
#define SEL_KERNEL_DS 0x18 /* Linux's __KERNEL_DS */
#define SEL_USER_DS (0x28 | 3) /* Linux's __USER_DS */
#define SEL_USER_CS (0x30 | 3) /* Linux's __USER_CS */
#define SEL_TSS 0x40

#define USER_BASE 0x8000000000 /* PML4 entry 1 */
#define USER_CODE_VA USER_BASE
#define USER_STACK_VA (USER_BASE + 0x1000)
#define USER_RESULT_VA (USER_BASE + 0x2000)
#define USER_STACK_TOP (USER_STACK_VA + 0x1000)

#define MSR_STAR 0xc0000081u
#define MSR_LSTAR 0xc0000082u
#define MSR_SFMASK 0xc0000084u
#define EFER_SCE 1u

#define USER_RFLAGS 0x603ull /* CF | bit 1 | IF | DF */
#define SFMASK_BITS 0x40700ull /* TF | IF | DF | AC */
#define SYSCALL_RESULT 0x5ca11ull
#define INT80_RESULT 0x8080ull

#define STR_(x) #x
#define STR(x) STR_(x)

/*
 * The user routines, copied to the user code page; position-independent.
 * Each leaves its observations in the result page and ends with ud2, which
 * the #UD handler turns into a return to the kernel.
 * Result page: +0 RAX after the call, +8 CS, +16 RFLAGS, +24 RSP.
 */
__asm__(".section .rodata\n"
	".globl um_user_code, um_user_end\n"
	".globl um_user_plain, um_user_syscall, um_user_syscall_ret\n"
	".globl um_user_int80, um_user_int80_insn, um_user_ud2_a, um_user_ud2_b, um_user_ud2_c\n"
	"um_user_code:\n"
	/* Reached by sysretq from CPL0. */
	"um_user_plain:\n\t"
	"movabs $" STR(USER_RESULT_VA) ", %rdi\n\t"
	"mov %cs, %eax\n\t"
	"mov %rax, 8(%rdi)\n\t"
	"pushfq\n\t"
	"pop %rax\n\t"
	"mov %rax, 16(%rdi)\n\t"
	"mov %rsp, 24(%rdi)\n"
	"um_user_ud2_a:\n\t"
	"ud2\n"
	/* syscall with RAX = 0x1234 (the entry code sets RAX). */
	"um_user_syscall:\n\t"
	"mov $0x1234, %eax\n\t"
	"syscall\n"
	"um_user_syscall_ret:\n\t"
	"movabs $" STR(USER_RESULT_VA) ", %rdi\n\t"
	"mov %rax, 0(%rdi)\n\t"
	"mov %cs, %eax\n\t"
	"mov %rax, 8(%rdi)\n\t"
	"pushfq\n\t"
	"pop %rax\n\t"
	"mov %rax, 16(%rdi)\n\t"
	"mov %rsp, 24(%rdi)\n"
	"um_user_ud2_b:\n\t"
	"ud2\n"
	/* int $0x80 with RAX = 0x80 (the handler sets RAX). */
	"um_user_int80:\n\t"
	"mov $0x80, %eax\n"
	"um_user_int80_insn:\n\t"
	"int $0x80\n\t"
	"movabs $" STR(USER_RESULT_VA) ", %rdi\n\t"
	"mov %rax, 0(%rdi)\n\t"
	"mov %cs, %eax\n\t"
	"mov %rax, 8(%rdi)\n"
	"um_user_ud2_c:\n\t"
	"ud2\n"
	"um_user_end:\n\t"
	".previous");
extern const char um_user_code[], um_user_end[], um_user_plain[], um_user_syscall[],
	um_user_syscall_ret[], um_user_int80[], um_user_int80_insn[], um_user_ud2_a[],
	um_user_ud2_b[], um_user_ud2_c[];

#define USER_VA(sym) (USER_CODE_VA + (uintptr_t)((sym) - um_user_code))

/*
 * The syscall entry (LSTAR). Records CS, SS, RFLAGS, RCX, R11 and RSP as it
 * finds them, switches to its own stack, sets RAX and returns with sysretq
 * (um_return_iret = 0) or an iretq frame built from RCX, R11 and the user
 * RSP (um_return_iret = 1).
 */
uint64_t um_entry_cs, um_entry_ss, um_entry_rflags, um_entry_rcx, um_entry_r11,
	um_entry_rsp, um_entry_count, um_return_iret;
uint8_t um_entry_stack[4096] __attribute__((aligned(16)));
__asm__(".text\n"
	".globl um_syscall_entry\n"
	".balign 16\n"
	"um_syscall_entry:\n\t"
	"mov %rsp, um_entry_rsp(%rip)\n\t"
	"lea um_entry_stack+4096(%rip), %rsp\n\t"
	"pushfq\n\t"
	"popq um_entry_rflags(%rip)\n\t"
	"mov %rcx, um_entry_rcx(%rip)\n\t"
	"mov %r11, um_entry_r11(%rip)\n\t"
	"xor %eax, %eax\n\t"
	"mov %cs, %eax\n\t"
	"mov %rax, um_entry_cs(%rip)\n\t"
	"mov %ss, %eax\n\t"
	"mov %rax, um_entry_ss(%rip)\n\t"
	"incq um_entry_count(%rip)\n\t"
	"mov $" STR(SYSCALL_RESULT) ", %eax\n\t"
	"cmpq $0, um_return_iret(%rip)\n\t"
	"jne 1f\n\t"
	"mov um_entry_rsp(%rip), %rsp\n\t"
	"sysretq\n"
	"1:\n\t"
	"pushq $" STR(SEL_USER_DS) "\n\t"
	"pushq um_entry_rsp(%rip)\n\t"
	"push %r11\n\t"
	"pushq $" STR(SEL_USER_CS) "\n\t"
	"push %rcx\n\t"
	"iretq\n");
extern const char um_syscall_entry[];

/*
 * um_enter_user(rip, rsp): saves the callee-saved registers and RSP, then
 * enters CPL3 with iretq (RFLAGS USER_RFLAGS). um_sysret_user(rip, rsp) does
 * the same with sysretq (RCX = rip, R11 = USER_RFLAGS). Both come back to
 * their caller when a handler sends the CPU to um_resume.
 */
uint64_t um_kernel_rsp;
__asm__(".text\n"
	".globl um_enter_user, um_sysret_user, um_resume\n"
	"um_enter_user:\n\t"
	"push %rbx\n\t"
	"push %rbp\n\t"
	"push %r12\n\t"
	"push %r13\n\t"
	"push %r14\n\t"
	"push %r15\n\t"
	"mov %rsp, um_kernel_rsp(%rip)\n\t"
	"pushq $" STR(SEL_USER_DS) "\n\t"
	"push %rsi\n\t"
	"pushq $" STR(USER_RFLAGS) "\n\t"
	"pushq $" STR(SEL_USER_CS) "\n\t"
	"push %rdi\n\t"
	"iretq\n"
	"um_sysret_user:\n\t"
	"push %rbx\n\t"
	"push %rbp\n\t"
	"push %r12\n\t"
	"push %r13\n\t"
	"push %r14\n\t"
	"push %r15\n\t"
	"mov %rsp, um_kernel_rsp(%rip)\n\t"
	"mov %rdi, %rcx\n\t"
	"mov $" STR(USER_RFLAGS) ", %r11d\n\t"
	"mov %rsi, %rsp\n\t"
	"sysretq\n"
	"um_resume:\n\t"
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
void um_enter_user(uintptr_t rip, uintptr_t rsp);
void um_sysret_user(uintptr_t rip, uintptr_t rsp);
extern const char um_resume[];

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

static uint64_t gdt[10] __attribute__((aligned(16)));
static struct tss64 tss __attribute__((aligned(16)));
static uint8_t kernel_stack[16384] __attribute__((aligned(16)));

static uint64_t user_pdpt[512] __attribute__((aligned(4096)));
static uint64_t user_pd[512] __attribute__((aligned(4096)));
static uint64_t user_pt[512] __attribute__((aligned(4096)));
static uint8_t user_code_page[4096] __attribute__((aligned(4096)));
static uint8_t user_stack_page[4096] __attribute__((aligned(4096)));
static volatile uint64_t user_result[512] __attribute__((aligned(4096)));

/* What the handlers saw. */
static volatile unsigned ud_returns;
static volatile int syscall_stayed_cpl3;
static volatile int int80_ud;
static volatile uint64_t int80_cs, int80_count;

/* Back to um_resume at CPL0. */
static void resume_kernel(struct irq_frame *f)
{
	f->ip = (uintptr_t)um_resume;
	f->cs = SEL_KERNEL_CS;
	f->ss = SEL_KERNEL_DS;
	f->sp = um_kernel_rsp;
	f->flags = 0x2;
}

static void ud_handler(struct irq_frame *f)
{
	if ((f->cs & 3) == 3 &&
	    (f->ip == USER_VA(um_user_ud2_a) || f->ip == USER_VA(um_user_ud2_b) ||
	     f->ip == USER_VA(um_user_ud2_c))) {
		ud_returns++;
		resume_kernel(f);
		return;
	}
	if ((f->cs & 3) == 3 && f->ip == USER_VA(um_user_int80_insn)) {
		int80_ud = 1;
		resume_kernel(f);
		return;
	}
	printf("usermode: unexpected #UD at rip 0x%llx cs 0x%llx\n",
	       (unsigned long long)f->ip, (unsigned long long)f->cs);
	guest_exit(LUNAVM_EXIT_EXCEPTION(6));
}

static void pf_handler(struct irq_frame *f)
{
	if ((f->cs & 3) == 3 && f->ip == (uintptr_t)um_syscall_entry) {
		syscall_stayed_cpl3 = 1;
		resume_kernel(f);
		return;
	}
	printf("usermode: unexpected #PF at rip 0x%llx cs 0x%llx cr2 0x%llx error 0x%llx\n",
	       (unsigned long long)f->ip, (unsigned long long)f->cs,
	       (unsigned long long)read_cr2(), (unsigned long long)f->error_code);
	guest_exit(LUNAVM_EXIT_EXCEPTION(14));
}

static void int80_handler(struct irq_frame *f)
{
	int80_cs = f->cs;
	int80_count++;
	f->rax = INT80_RESULT;
}

static void setup_gdt_tss(void)
{
	uint64_t base = (uintptr_t)&tss, limit = sizeof(tss) - 1;

	gdt[1] = 0x00af9a000000ffffull; /* 0x08: 64-bit code, DPL 0 */
	gdt[2] = 0x00af9a000000ffffull; /* 0x10: 64-bit code, DPL 0 */
	gdt[3] = 0x00cf92000000ffffull; /* 0x18: data, DPL 0 */
	gdt[4] = 0x00cffa000000ffffull; /* 0x20: 32-bit code, DPL 3 */
	gdt[5] = 0x00cff2000000ffffull; /* 0x28: data, DPL 3 */
	gdt[6] = 0x00affa000000ffffull; /* 0x30: 64-bit code, DPL 3 */
	gdt[8] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
		 ((limit >> 16 & 0xf) << 48) | ((base >> 24 & 0xff) << 56);
	gdt[9] = base >> 32;

	tss.rsp[0] = (uintptr_t)(kernel_stack + sizeof(kernel_stack));
	tss.iomap_base = sizeof(tss);

	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} d = { sizeof(gdt) - 1, (uintptr_t)gdt };
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
	size_t len = (size_t)(um_user_end - um_user_code);

	memcpy(user_code_page, um_user_code, len);
	user_pt[0] = (uintptr_t)user_code_page | PTE_P | PTE_U;
	user_pt[1] = (uintptr_t)user_stack_page | PTE_P | PTE_W | PTE_U | PTE_NX;
	user_pt[2] = (uintptr_t)user_result | PTE_P | PTE_W | PTE_U | PTE_NX;
	user_pd[0] = (uintptr_t)user_pt | PTE_P | PTE_W | PTE_U;
	user_pdpt[0] = (uintptr_t)user_pd | PTE_P | PTE_W | PTE_U;
	pml4[(USER_BASE >> 39) & 511] = (uintptr_t)user_pdpt | PTE_P | PTE_W | PTE_U;
	write_cr3(read_cr3());
}

static void clear_result(void)
{
	for (int i = 0; i < 4; i++)
		user_result[i] = 0;
}

static int check_sysret(void)
{
	unsigned before = ud_returns;

	clear_result();
	um_sysret_user(USER_VA(um_user_plain), USER_STACK_TOP - 64);
	if (ud_returns != before + 1 || user_result[1] != SEL_USER_CS ||
	    user_result[3] != USER_STACK_TOP - 64 ||
	    (user_result[2] & ~0x10000ull) != USER_RFLAGS) {
		printf("usermode: sysret: FAIL: cs 0x%llx rflags 0x%llx rsp 0x%llx (%u returns)\n",
		       (unsigned long long)user_result[1], (unsigned long long)user_result[2],
		       (unsigned long long)user_result[3], ud_returns - before);
		return 1;
	}
	printf("usermode: sysret: ok (cs 0x%llx, rflags 0x%llx)\n",
	       (unsigned long long)user_result[1], (unsigned long long)user_result[2]);
	return 0;
}

static int check_syscall(int iret)
{
	const char *name = iret ? "syscall-iret" : "syscall";
	uint64_t rsp = USER_STACK_TOP - 128, count = um_entry_count;
	unsigned before = ud_returns;

	clear_result();
	um_return_iret = (uint64_t)iret;
	um_entry_cs = um_entry_ss = um_entry_rflags = um_entry_rcx = um_entry_r11 = 0;
	syscall_stayed_cpl3 = 0;
	um_enter_user(USER_VA(um_user_syscall), rsp);
	if (syscall_stayed_cpl3) {
		printf("usermode: %s: FAIL: syscall stayed at CPL3 (#PF at LSTAR)\n", name);
		return 1;
	}
	int bad = um_entry_count != count + 1 || um_entry_cs != SEL_SYSCALL_CS ||
		  um_entry_ss != SEL_KERNEL_DS ||
		  um_entry_rflags != (USER_RFLAGS & ~SFMASK_BITS) ||
		  um_entry_rcx != USER_VA(um_user_syscall_ret) || um_entry_r11 != USER_RFLAGS ||
		  um_entry_rsp != rsp;
	bad |= ud_returns != before + 1 || user_result[0] != SYSCALL_RESULT ||
	       user_result[1] != SEL_USER_CS || user_result[2] != USER_RFLAGS ||
	       user_result[3] != rsp;
	if (bad) {
		printf("usermode: %s: FAIL: entry cs 0x%llx ss 0x%llx rflags 0x%llx rcx 0x%llx "
		       "r11 0x%llx rsp 0x%llx; back in user mode rax 0x%llx cs 0x%llx "
		       "rflags 0x%llx rsp 0x%llx\n",
		       name, (unsigned long long)um_entry_cs, (unsigned long long)um_entry_ss,
		       (unsigned long long)um_entry_rflags, (unsigned long long)um_entry_rcx,
		       (unsigned long long)um_entry_r11, (unsigned long long)um_entry_rsp,
		       (unsigned long long)user_result[0], (unsigned long long)user_result[1],
		       (unsigned long long)user_result[2], (unsigned long long)user_result[3]);
		return 1;
	}
	printf("usermode: %s: ok (entry cs 0x%llx ss 0x%llx rflags 0x%llx)\n", name,
	       (unsigned long long)um_entry_cs, (unsigned long long)um_entry_ss,
	       (unsigned long long)um_entry_rflags);
	return 0;
}

static int check_int80(void)
{
	uint64_t count = int80_count;

	clear_result();
	int80_ud = 0;
	um_enter_user(USER_VA(um_user_int80), USER_STACK_TOP - 64);
	if (int80_ud) {
		printf("usermode: int80: FAIL: int $0x80 raised #UD\n");
		return 1;
	}
	if (int80_count != count + 1 || (int80_cs & 3) != 3 || user_result[0] != INT80_RESULT ||
	    user_result[1] != SEL_USER_CS) {
		printf("usermode: int80: FAIL: handler saw cs 0x%llx (%llu calls); back in user "
		       "mode rax 0x%llx cs 0x%llx\n",
		       (unsigned long long)int80_cs, (unsigned long long)(int80_count - count),
		       (unsigned long long)user_result[0], (unsigned long long)user_result[1]);
		return 1;
	}
	printf("usermode: int80: ok\n");
	return 0;
}

static bool selected(const char *cmdline, const char *name)
{
	char only[32];

	return cmdline_get(cmdline, "only", only, sizeof(only)) < 0 || strcmp(only, name) == 0;
}

int guest_main(const char *cmdline)
{
	uint64_t rounds = cmdline_get_u64(cmdline, "rounds", 1);
	int failed = 0;

	setup_gdt_tss();
	setup_user_pages();
	idt_set_handler(6, ud_handler);
	idt_set_handler(14, pf_handler);
	idt_set_handler(0x80, int80_handler);
	idt_set_dpl(0x80, 3);
	idt_init();

	wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SCE);
	wrmsr(MSR_STAR, (0x23ull << 48) | ((uint64_t)SEL_SYSCALL_CS << 32));
	wrmsr(MSR_LSTAR, (uintptr_t)um_syscall_entry);
	wrmsr(MSR_SFMASK, SFMASK_BITS);

	if (selected(cmdline, "sysret"))
		failed += check_sysret();
	for (uint64_t r = 0; r < rounds; r++) {
		if (selected(cmdline, "syscall"))
			failed += check_syscall(0);
		if (selected(cmdline, "syscall-iret"))
			failed += check_syscall(1);
	}
	if (selected(cmdline, "int80"))
		failed += check_int80();
	printf("usermode: %d failed\n", failed);
	return failed;
}
