/*
 * IDT, exception dispatcher, expected faults.
 *
 * Every vector has an assembly stub (isr.S) that builds a struct irq_frame
 * and calls lunavm_irq_dispatch(). The dispatcher looks, in order, at:
 * an armed expect_fault() for this vector, a handler set with
 * idt_set_handler(), and otherwise reports the event and exits.
 */
#include "lunavm.h"

#define IDT_ENTRIES 256
#define GATE_INTERRUPT 0x8e /* present, DPL 0, interrupt gate */

#ifdef __x86_64__
struct idt_gate {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t ist;
	uint8_t type_attr;
	uint16_t off_mid;
	uint32_t off_hi;
	uint32_t zero;
};
_Static_assert(sizeof(struct idt_gate) == 16, "idt gate size");
#else
struct idt_gate {
	uint16_t off_lo;
	uint16_t sel;
	uint8_t zero;
	uint8_t type_attr;
	uint16_t off_hi;
};
_Static_assert(sizeof(struct idt_gate) == 8, "idt gate size");
#endif

static struct idt_gate idt[IDT_ENTRIES] __attribute__((aligned(16)));
static irq_handler_t handlers[IDT_ENTRIES];

/* Stub addresses, defined in isr.S. */
extern const uintptr_t lunavm_isr_stubs[IDT_ENTRIES];

static volatile int expected_vector = -1;
static volatile unsigned expected_skip;
static volatile int seen_vector = -1;
static volatile uint64_t seen_error;
static volatile uintptr_t seen_ip;
static volatile uintptr_t seen_cr2;

static uint16_t read_cs(void)
{
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	return cs;
}

void idt_init(void)
{
	uint16_t cs = read_cs();

	for (unsigned v = 0; v < IDT_ENTRIES; v++) {
		uintptr_t a = lunavm_isr_stubs[v];
		struct idt_gate *g = &idt[v];
		/* Keep a DPL chosen with idt_set_dpl() across re-initialisation. */
		uint8_t attr = g->type_attr ? g->type_attr : GATE_INTERRUPT;
		g->off_lo = (uint16_t)a;
		g->sel = cs;
		g->type_attr = attr;
#ifdef __x86_64__
		g->ist = 0;
		g->off_mid = (uint16_t)(a >> 16);
		g->off_hi = (uint32_t)(a >> 32);
		g->zero = 0;
#else
		g->zero = 0;
		g->off_hi = (uint16_t)(a >> 16);
#endif
	}
	lidt((uintptr_t)idt, sizeof(idt) - 1);
}

void idt_set_handler(unsigned vector, irq_handler_t fn)
{
	if (vector < IDT_ENTRIES)
		handlers[vector] = fn;
}

void idt_set_dpl(unsigned vector, unsigned dpl)
{
	if (vector < IDT_ENTRIES)
		idt[vector].type_attr =
			(uint8_t)((GATE_INTERRUPT & ~0x60) | ((dpl & 3) << 5));
}

void expect_fault(unsigned vector, unsigned skip_len)
{
	seen_vector = -1;
	seen_error = 0;
	seen_ip = 0;
	seen_cr2 = 0;
	expected_skip = skip_len;
	__asm__ volatile("" : : : "memory");
	expected_vector = (int)vector;
	__asm__ volatile("" : : : "memory");
}

int fault_taken(void)
{
	/* Asking ends the window: an expectation that did not fire is disarmed. */
	expected_vector = -1;
	__asm__ volatile("" : : : "memory");
	return seen_vector;
}
uint64_t fault_error_code(void) { return seen_error; }
uintptr_t fault_ip(void) { return seen_ip; }
uintptr_t fault_cr2(void) { return seen_cr2; }

static const char *const exception_names[32] = {
	"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
	"#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "RSV",
	"#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "RSV", "RSV",
	"RSV", "RSV", "RSV", "RSV", "#HV", "#VC", "#SX", "RSV",
};

void lunavm_irq_dispatch(struct irq_frame *f)
{
	unsigned v = (unsigned)f->vector;

	if (expected_vector >= 0 && (unsigned)expected_vector == v) {
		expected_vector = -1;
		seen_vector = (int)v;
		seen_error = f->error_code;
		seen_ip = f->ip;
		if (v == 14)
			seen_cr2 = read_cr2();
		f->ip += expected_skip;
		return;
	}
	if (v < IDT_ENTRIES && handlers[v]) {
		handlers[v](f);
		return;
	}

	if (v < 32)
		printf("lunavm: unexpected exception %u (%s) error=0x%llx rip=0x%llx",
		       v, exception_names[v], (unsigned long long)f->error_code,
		       (unsigned long long)f->ip);
	else
		printf("lunavm: unexpected interrupt %u rip=0x%llx", v,
		       (unsigned long long)f->ip);
	if (v == 14)
		printf(" cr2=0x%llx", (unsigned long long)read_cr2());
	printf("\n");
	guest_exit(v <= 14 ? LUNAVM_EXIT_EXCEPTION(v) : LUNAVM_EXIT_UNEXPECTED_IRQ);
}
