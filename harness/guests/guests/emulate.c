/*
 * emulate: runs each instruction of lunavm's completion table at CPL0 and
 * checks its architectural result. On this machine's KVM most of them fail
 * in KVM's instruction emulator and lunavm completes them; under QEMU TCG
 * they run natively. The guest must pass either way.
 *
 * Options:
 *   only=NAME   run one check: int3 intn fwait cmpxchg16b xgetbv rdrand
 *               rdseed clac badenc
 *   osxsave=1   set CR4.OSXSAVE first (when CPUID reports XSAVE), so
 *               xgetbv is expected to work instead of raising #UD
 *
 * A feature that CPUID does not enumerate may raise #UD (QEMU TCG, lunavm's
 * completion) or execute anyway (hardware in a VM: hiding a CPUID bit does
 * not remove the instruction); both pass, and the output says which.
 *
 * Output: one line per check, "emulate: NAME ok" or "emulate: NAME FAIL: why",
 * plus informational lines "emulate: NAME: ..." (rdrand/rdseed values, so a
 * harness test can check they are deterministic for a given seed). The exit
 * status is the number of failed checks; 0x5f for an unknown only= name.
 */
#include "lunavm.h"

#define UD_VECTOR 6
#define BP_VECTOR 3

static int checks, failures;

__attribute__((format(printf, 2, 3))) static void fail(const char *name,
						       const char *fmt, ...)
{
	va_list ap;

	printf("emulate: %s FAIL: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	failures++;
}

static void ok(const char *name)
{
	printf("emulate: %s ok\n", name);
}

/*
 * After the first execution of an instruction whose feature CPUID does not
 * enumerate (armed with expect_fault(#UD)): true when it raised #UD, which
 * is then reported; false when it executed, and the check goes on.
 */
static bool took_ud(const char *name, bool armed, uintptr_t insn)
{
	if (!armed)
		return false;
	int v = fault_taken();
	if (v == UD_VECTOR) {
		if (fault_ip() != insn)
			fail(name, "#UD at 0x%lx, expected 0x%lx",
			     (unsigned long)fault_ip(), (unsigned long)insn);
		else
			printf("emulate: %s ok (#UD, not enumerated)\n", name);
		return true;
	}
	printf("emulate: %s: not enumerated in CPUID, executed anyway\n", name);
	return false;
}

/* ---- int3 ---- */

static void check_int3(void)
{
	const char *name = "int3";
	uintptr_t after;

	expect_fault(BP_VECTOR, 0); /* trap: RIP already points past int3 */
	__asm__ volatile("mov $1f, %0\n\t"
			 "int3\n"
			 "1:"
			 : "=r"(after)
			 :
			 : "memory");
	int v = fault_taken();
	if (v != BP_VECTOR)
		fail(name, "no #BP (vector %d)", v);
	else if (fault_ip() != after)
		fail(name, "#BP saved RIP 0x%lx, expected 0x%lx",
		     (unsigned long)fault_ip(), (unsigned long)after);
	else
		ok(name);
}

/* ---- int n ---- */

static volatile int intn_vector = -1;
static volatile uintptr_t intn_ip;

static void intn_handler(struct irq_frame *f)
{
	intn_vector = (int)f->vector;
	intn_ip = f->ip;
	f->rax = 0x1000 + f->vector; /* proves iretq restores from the frame */
}

#define INT_N(vec, after, rax)                         \
	__asm__ volatile("mov $1f, %1\n\t"             \
			 "int %2\n"                    \
			 "1:"                          \
			 : "+a"(rax), "=&r"(after)     \
			 : "i"(vec)                    \
			 : "memory")

static void check_one_intn(unsigned vec, uintptr_t after, uint64_t rax)
{
	char name[16];

	snprintf(name, sizeof(name), "intn 0x%x", vec);
	if (intn_vector != (int)vec)
		fail(name, "handler did not run (vector %d)", intn_vector);
	else if (intn_ip != after)
		fail(name, "saved RIP 0x%lx, expected 0x%lx", (unsigned long)intn_ip,
		     (unsigned long)after);
	else if (rax != 0x1000 + vec)
		fail(name, "RAX 0x%lx after iretq, expected 0x%x", (unsigned long)rax,
		     0x1000 + vec);
	else
		ok(name);
}

static void check_intn(void)
{
	uintptr_t after;
	uint64_t rax;

	idt_set_handler(0x80, intn_handler);
	idt_set_handler(0x21, intn_handler);

	intn_vector = -1;
	rax = 0;
	INT_N(0x80, after, rax);
	check_one_intn(0x80, after, rax);

	intn_vector = -1;
	rax = 0;
	INT_N(0x21, after, rax);
	check_one_intn(0x21, after, rax);

	idt_set_handler(0x80, NULL);
	idt_set_handler(0x21, NULL);
}

/* ---- fwait ---- */

static void check_fwait(void)
{
	uint64_t marker = 0;

	/* No x87 exception is pending, so fwait just continues. */
	__asm__ volatile(".byte 0x9b\n\t" /* fwait */
			 "mov $0x9b, %0"
			 : "=r"(marker)
			 :
			 : "memory");
	if (marker != 0x9b)
		fail("fwait", "did not continue");
	else
		ok("fwait");
}

/* ---- cmpxchg16b ---- */

static struct {
	uint64_t lo, hi;
} __attribute__((aligned(16))) m16;

/* lock cmpxchg16b (%rdi): f0 48 0f c7 0f, 5 bytes. */
#define CMPXCHG16B_LEN 5

static uint8_t cmpxchg16b(uint64_t *rax, uint64_t *rdx, uint64_t rbx, uint64_t rcx,
			  uintptr_t *insn)
{
	uint8_t zf;

	__asm__ volatile("mov $1f, %3\n"
			 "1:\tlock cmpxchg16b (%%rdi)\n\t"
			 "setz %2"
			 : "+a"(*rax), "+d"(*rdx), "=q"(zf), "=&r"(*insn)
			 : "D"(&m16), "b"(rbx), "c"(rcx)
			 : "memory", "cc");
	return zf;
}

static void check_cmpxchg16b(void)
{
	const char *name = "cmpxchg16b";
	bool armed = !(cpuid(1, 0).ecx & (1u << 13)); /* CX16 */
	uint64_t rax, rdx;
	uintptr_t insn;
	uint8_t zf;

	/* Equal: memory replaced by RCX:RBX, ZF=1. */
	m16.lo = 0x1111111111111111ull;
	m16.hi = 0x2222222222222222ull;
	rax = 0x1111111111111111ull;
	rdx = 0x2222222222222222ull;
	if (armed)
		expect_fault(UD_VECTOR, CMPXCHG16B_LEN);
	zf = cmpxchg16b(&rax, &rdx, 0x3333333333333333ull, 0x4444444444444444ull,
			&insn);
	if (took_ud(name, armed, insn))
		return;
	if (!zf || m16.lo != 0x3333333333333333ull || m16.hi != 0x4444444444444444ull ||
	    rax != 0x1111111111111111ull || rdx != 0x2222222222222222ull) {
		fail(name, "equal case: zf=%u mem=%lx:%lx rdx:rax=%lx:%lx", zf,
		     (unsigned long)m16.hi, (unsigned long)m16.lo, (unsigned long)rdx,
		     (unsigned long)rax);
		return;
	}

	/* Unequal: RDX:RAX loaded from memory, memory unchanged, ZF=0. */
	m16.lo = 0x5555555555555555ull;
	m16.hi = 0x6666666666666666ull;
	rax = 1;
	rdx = 2;
	zf = cmpxchg16b(&rax, &rdx, 3, 4, &insn);
	if (zf || m16.lo != 0x5555555555555555ull || m16.hi != 0x6666666666666666ull ||
	    rax != 0x5555555555555555ull || rdx != 0x6666666666666666ull) {
		fail(name, "unequal case: zf=%u mem=%lx:%lx rdx:rax=%lx:%lx", zf,
		     (unsigned long)m16.hi, (unsigned long)m16.lo, (unsigned long)rdx,
		     (unsigned long)rax);
		return;
	}
	ok(name);
}

/* ---- xgetbv ---- */

static void check_xgetbv(const char *cmdline)
{
	const char *name = "xgetbv";
	struct cpuid_regs l1 = cpuid(1, 0);

	if (cmdline_get_u64(cmdline, "osxsave", 0) && (l1.ecx & (1u << 26))) {
		write_cr4(read_cr4() | X86_CR4_OSXSAVE);
		l1 = cpuid(1, 0);
	}
	bool osxsave = l1.ecx & (1u << 27);
	printf("emulate: xgetbv: cpuid.osxsave=%d cr4.osxsave=%d\n", osxsave ? 1 : 0,
	       (read_cr4() & X86_CR4_OSXSAVE) ? 1 : 0);

	uint32_t lo = 0, hi = 0;
	uintptr_t insn;
	if (!osxsave)
		expect_fault(UD_VECTOR, 3); /* xgetbv: 0f 01 d0 */
	__asm__ volatile("mov $1f, %2\n"
			 "1:\txgetbv"
			 : "+a"(lo), "+d"(hi), "=&r"(insn)
			 : "c"(0)
			 : "memory");
	if (took_ud(name, !osxsave, insn))
		return;

	uint64_t xcr0 = ((uint64_t)hi << 32) | lo;
	struct cpuid_regs d = cpuid(0xd, 0);
	uint64_t supported = ((uint64_t)d.edx << 32) | d.eax;
	printf("emulate: xgetbv: xcr0=0x%lx supported=0x%lx\n", (unsigned long)xcr0,
	       (unsigned long)supported);
	if (!(xcr0 & 1))
		fail(name, "XCR0 bit 0 (x87) clear: 0x%lx", (unsigned long)xcr0);
	else if (supported && (xcr0 & ~supported))
		fail(name, "XCR0 0x%lx has bits outside CPUID.0xD 0x%lx",
		     (unsigned long)xcr0, (unsigned long)supported);
	else
		ok(name);
}

/* ---- rdrand / rdseed ---- */

/* rdrand %rax: 48 0f c7 f0; rdseed %rax: 48 0f c7 f8. 4 bytes each. */
#define RDRAND_LEN 4

static bool rdrand64(uint64_t *v, uintptr_t *insn)
{
	uint8_t cf;
	__asm__ volatile("mov $1f, %2\n"
			 "1:\trdrand %%rax\n\t"
			 "setc %1"
			 : "=a"(*v), "=q"(cf), "=&r"(*insn)
			 :
			 : "memory", "cc");
	return cf;
}

static bool rdseed64(uint64_t *v, uintptr_t *insn)
{
	uint8_t cf;
	__asm__ volatile("mov $1f, %2\n"
			 "1:\trdseed %%rax\n\t"
			 "setc %1"
			 : "=a"(*v), "=q"(cf), "=&r"(*insn)
			 :
			 : "memory", "cc");
	return cf;
}

static void check_random(const char *name, bool present,
			 bool (*fn)(uint64_t *, uintptr_t *))
{
	uint64_t v[2] = { 0, 0 };
	uintptr_t insn;

	/* Hardware may transiently return CF=0: retry, as the SDM says. */
	for (int i = 0; i < 2; i++) {
		int tries = 0;
		bool armed = !present && i == 0;
		if (armed)
			expect_fault(UD_VECTOR, RDRAND_LEN);
		bool cf = fn(&v[i], &insn);
		if (took_ud(name, armed, insn))
			return;
		while (!cf && ++tries < 100)
			cf = fn(&v[i], &insn);
		if (!cf) {
			fail(name, "CF=0 on every try");
			return;
		}
	}
	printf("emulate: %s: 0x%016lx 0x%016lx\n", name, (unsigned long)v[0],
	       (unsigned long)v[1]);
	if (v[0] == v[1])
		fail(name, "two values are equal");
	else
		ok(name);
}

/* ---- clac / stac ---- */

static void check_clac(void)
{
	const char *name = "clac";

	if (!(cpuid(7, 0).ebx & (1u << 20))) { /* SMAP */
		uintptr_t insn;
		expect_fault(UD_VECTOR, 3); /* clac: 0f 01 ca */
		__asm__ volatile("mov $1f, %0\n1:\tclac" : "=r"(insn) : : "memory", "cc");
		if (took_ud(name, true, insn))
			return;
	}

	uintptr_t set, clear;
	__asm__ volatile("stac\n\t"
			 "pushf\n\t"
			 "pop %0\n\t"
			 "clac\n\t"
			 "pushf\n\t"
			 "pop %1"
			 : "=r"(set), "=r"(clear)
			 :
			 : "memory", "cc");
	if (!(set & X86_RFLAGS_AC))
		fail(name, "stac left AC clear (rflags 0x%lx)", (unsigned long)set);
	else if (clear & X86_RFLAGS_AC)
		fail(name, "clac left AC set (rflags 0x%lx)", (unsigned long)clear);
	else
		ok(name);
}

/* ---- an invalid encoding: movbe with a register operand ---- */

/*
 * MOVBE (0f 38 f0 /r) only takes a memory operand; the register form
 * (mod = 11) is undefined and raises #UD on hardware. KVM's emulator fails on
 * it here, and lunavm injects the #UD hardware would raise.
 */
static void check_badenc(void)
{
	const char *name = "badenc";

	expect_fault(UD_VECTOR, 4);
	__asm__ volatile(".byte 0x0f, 0x38, 0xf0, 0xc0" : : : "memory", "cc");
	int seen = fault_taken();
	if (seen != UD_VECTOR)
		fail(name, "expected #UD, saw %d", seen);
	else
		ok(name);
}

/* ---- driver ---- */

static const char *const names[] = {
	"int3", "intn", "fwait", "cmpxchg16b", "xgetbv", "rdrand", "rdseed", "clac",
	"badenc",
};

static void run(const char *name, const char *cmdline)
{
	checks++;
	if (!strcmp(name, "int3"))
		check_int3();
	else if (!strcmp(name, "intn"))
		check_intn();
	else if (!strcmp(name, "fwait"))
		check_fwait();
	else if (!strcmp(name, "cmpxchg16b"))
		check_cmpxchg16b();
	else if (!strcmp(name, "xgetbv"))
		check_xgetbv(cmdline);
	else if (!strcmp(name, "rdrand"))
		check_random(name, cpuid(1, 0).ecx & (1u << 30), rdrand64);
	else if (!strcmp(name, "rdseed"))
		check_random(name, cpuid(7, 0).ebx & (1u << 18), rdseed64);
	else if (!strcmp(name, "clac"))
		check_clac();
	else if (!strcmp(name, "badenc"))
		check_badenc();
}

int guest_main(const char *cmdline)
{
	char only[16];
	bool one = cmdline_get(cmdline, "only", only, sizeof(only)) >= 0;
	bool found = false;

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (one && strcmp(only, names[i]))
			continue;
		found = true;
		run(names[i], cmdline);
	}
	if (!found) {
		printf("emulate: unknown check '%s'\n", only);
		return 0x5f;
	}
	printf("emulate: %d checks, %d failed\n", checks, failures);
	return failures;
}
