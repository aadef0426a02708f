/*
 * lunavm guest runtime: the one header a test guest includes.
 *
 * Freestanding (no libc), usable from 64-bit PVH guests (long mode) and from
 * 32-bit multiboot guests (protected mode, paging off). See README.md.
 */
#ifndef LUNAVM_H
#define LUNAVM_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ucall.h"

/* ------------------------------------------------------------------------ */
/* Entry point and exit                                                     */
/* ------------------------------------------------------------------------ */

/*
 * Written by the guest. Called by the runtime after the boot stub, with
 * serial and the IDT initialised; cmdline is never NULL ("" when absent).
 * The return value becomes the exit status (guest_exit).
 */
int guest_main(const char *cmdline);

/* isa-debug-exit port: status is written as a 32-bit outl. */
#define LUNAVM_DEBUG_EXIT_PORT 0xf4

/* Exit statuses used by the runtime itself (guest statuses stay below 0x60). */
#define LUNAVM_EXIT_ASSERT 0x6e      /* GUEST_ASSERT failed */
#define LUNAVM_EXIT_BAD_BOOT 0x6d    /* no valid PVH/multiboot magic */
#define LUNAVM_EXIT_PANIC 0x66       /* a guest's own panic function (fuzzme_panic) */
#define LUNAVM_EXIT_UNEXPECTED_IRQ 0x7f /* exception >= 15 or interrupt without handler */
#define LUNAVM_EXIT_EXCEPTION(v) (0x70 + (v)) /* unexpected exception v, 0 <= v <= 14 */

/* Write status to port 0xf4, then cli; hlt forever if nothing stopped us. */
__attribute__((noreturn)) void guest_exit(int status);

/* Boot information (one of them is non-NULL, depending on the protocol). */
#define XEN_HVM_START_MAGIC 0x336ec578u
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2badb002u

struct hvm_start_info {
	uint32_t magic;          /* XEN_HVM_START_MAGIC */
	uint32_t version;
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;  /* struct hvm_modlist_entry[nr_modules] */
	uint64_t cmdline_paddr;
	uint64_t rsdp_paddr;
	uint64_t memmap_paddr;   /* version >= 1: struct hvm_memmap_table_entry[] */
	uint32_t memmap_entries;
	uint32_t reserved;
};

struct hvm_modlist_entry {
	uint64_t paddr;
	uint64_t size;
	uint64_t cmdline_paddr;
	uint64_t reserved;
};

struct hvm_memmap_table_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type;
	uint32_t reserved;
};

struct multiboot_info {
	uint32_t flags;
	uint32_t mem_lower;      /* KiB, flags bit 0 */
	uint32_t mem_upper;      /* KiB, flags bit 0 */
	uint32_t boot_device;
	uint32_t cmdline;        /* flags bit 2 */
	uint32_t mods_count;     /* flags bit 3 */
	uint32_t mods_addr;
	uint32_t syms[4];
	uint32_t mmap_length;    /* flags bit 6 */
	uint32_t mmap_addr;
};

struct multiboot_module {
	uint32_t mod_start;
	uint32_t mod_end;
	uint32_t string;
	uint32_t reserved;
};

_Static_assert(sizeof(struct hvm_start_info) == 56, "hvm_start_info size");
_Static_assert(offsetof(struct hvm_start_info, cmdline_paddr) == 24, "cmdline offset");
_Static_assert(offsetof(struct multiboot_info, cmdline) == 16, "mb cmdline offset");
_Static_assert(offsetof(struct multiboot_info, mods_count) == 20, "mb mods offset");

extern const struct hvm_start_info *lunavm_pvh_info;   /* PVH boot */
extern const struct multiboot_info *lunavm_mb_info;    /* multiboot boot */

#ifdef __x86_64__
/* The boot page tables' PML4 (CR3 after boot): 0-4 GiB identity, 2 MiB pages. */
extern uint64_t lunavm_boot_pml4[512];
#endif

/* Linker symbols: first byte of the image, end of .bss, end of the image. */
extern char __image_start[], __bss_end[], __image_end[];

/* ------------------------------------------------------------------------ */
/* Port I/O and MMIO                                                        */
/* ------------------------------------------------------------------------ */

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}
static inline void outw(uint16_t port, uint16_t v)
{
	__asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port) : "memory");
}
static inline void outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}
static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}
static inline uint16_t inw(uint16_t port)
{
	uint16_t v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}
static inline uint32_t inl(uint16_t port)
{
	uint32_t v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
	return v;
}

/* MMIO: one access of exactly the given width (plain mov). */
static inline uint8_t mmio_read8(uintptr_t a) { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_read16(uintptr_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t mmio_read32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline void mmio_write8(uintptr_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void mmio_write16(uintptr_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void mmio_write32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
#ifdef __x86_64__
static inline uint64_t mmio_read64(uintptr_t a) { return *(volatile uint64_t *)a; }
static inline void mmio_write64(uintptr_t a, uint64_t v) { *(volatile uint64_t *)a = v; }
#else
/* 32-bit: two 32-bit accesses, low half first. */
static inline uint64_t mmio_read64(uintptr_t a)
{
	uint32_t lo = mmio_read32(a), hi = mmio_read32(a + 4);
	return ((uint64_t)hi << 32) | lo;
}
static inline void mmio_write64(uintptr_t a, uint64_t v)
{
	mmio_write32(a, (uint32_t)v);
	mmio_write32(a + 4, (uint32_t)(v >> 32));
}
#endif

/* ------------------------------------------------------------------------ */
/* CPU                                                                      */
/* ------------------------------------------------------------------------ */

struct cpuid_regs {
	uint32_t eax, ebx, ecx, edx;
};

static inline struct cpuid_regs cpuid(uint32_t leaf, uint32_t subleaf)
{
	struct cpuid_regs r;
	__asm__ volatile("cpuid"
			 : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx)
			 : "a"(leaf), "c"(subleaf));
	return r;
}

static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32))
			 : "memory");
}

#define LUNAVM_DEFINE_CR(n)                                                  \
	static inline uintptr_t read_cr##n(void)                             \
	{                                                                    \
		uintptr_t v;                                                 \
		__asm__ volatile("mov %%cr" #n ", %0" : "=r"(v));            \
		return v;                                                    \
	}                                                                    \
	static inline void write_cr##n(uintptr_t v)                          \
	{                                                                    \
		__asm__ volatile("mov %0, %%cr" #n : : "r"(v) : "memory");  \
	}
LUNAVM_DEFINE_CR(0)
LUNAVM_DEFINE_CR(2)
LUNAVM_DEFINE_CR(3)
LUNAVM_DEFINE_CR(4)
#undef LUNAVM_DEFINE_CR

static inline uintptr_t read_flags(void)
{
	uintptr_t f;
	__asm__ volatile("pushf\n\tpop %0" : "=r"(f) : : "memory");
	return f;
}

static inline void invlpg(uintptr_t va)
{
	__asm__ volatile("invlpg (%0)" : : "r"(va) : "memory");
}

static inline void cli(void) { __asm__ volatile("cli" : : : "memory"); }
static inline void sti(void) { __asm__ volatile("sti" : : : "memory"); }
static inline void hlt(void) { __asm__ volatile("hlt" : : : "memory"); }

/* Load IDTR directly (e.g. a zero-limit IDT to force a triple fault). */
static inline void lidt(uintptr_t base, uint16_t limit)
{
	struct __attribute__((packed)) {
		uint16_t limit;
		uintptr_t base;
	} d = { limit, base };
	__asm__ volatile("lidt %0" : : "m"(d) : "memory");
}

#define X86_CR0_PE (1u << 0)
#define X86_CR0_TS (1u << 3)
#define X86_CR0_PG (1u << 31)
#define X86_CR4_PAE (1u << 5)
#define X86_CR4_OSFXSR (1u << 9)
#define X86_CR4_OSXSAVE (1u << 18)
#define X86_RFLAGS_CF (1u << 0)
#define X86_RFLAGS_ZF (1u << 6)
#define X86_RFLAGS_IF (1u << 9)
#define X86_RFLAGS_AC (1u << 18)
#define MSR_EFER 0xc0000080u

/* Page table entry bits (64-bit PVH guests: 4-level paging). */
#define PTE_P (1ull << 0)
#define PTE_W (1ull << 1)
#define PTE_U (1ull << 2)
#define PTE_PS (1ull << 7)
#define PTE_NX (1ull << 63)
#define PTE_ADDR_MASK 0x000ffffffffff000ull

/* ------------------------------------------------------------------------ */
/* Interrupts and exceptions                                                */
/* ------------------------------------------------------------------------ */

/*
 * Saved state at an interrupt, as pushed by the runtime's stubs. A handler
 * may modify any field (ip, flags, general registers); iret restores them.
 */
#ifdef __x86_64__
struct irq_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector;
	uint64_t error_code;  /* 0 for vectors without one */
	uint64_t ip;          /* RIP: faulting instruction (faults) or next (traps) */
	uint64_t cs;
	uint64_t flags;       /* RFLAGS */
	uint64_t sp;          /* RSP (always saved in long mode) */
	uint64_t ss;
};
_Static_assert(sizeof(struct irq_frame) == 22 * 8, "irq_frame size");
#else
struct irq_frame {
	uint32_t edi, esi, ebp, esp_unused, ebx, edx, ecx, eax; /* pushal */
	uint32_t vector;
	uint32_t error_code;
	uint32_t ip;          /* EIP */
	uint32_t cs;
	uint32_t flags;       /* EFLAGS (no ESP/SS: same-privilege interrupt) */
};
_Static_assert(sizeof(struct irq_frame) == 13 * 4, "irq_frame size");
#endif

typedef void (*irq_handler_t)(struct irq_frame *frame);

/*
 * Fill and load the runtime's IDT: 256 interrupt gates (DPL 0, kernel CS),
 * each going through lunavm_irq_dispatch(). Done before guest_main();
 * calling it again reloads IDTR and keeps the registered handlers.
 */
void idt_init(void);
/* Route vector (0-255) to fn, or back to the default behaviour with NULL. */
void idt_set_handler(unsigned vector, irq_handler_t fn);
/* Gate DPL of a vector (0 by default; 3 lets CPL3 code use int n). */
void idt_set_dpl(unsigned vector, unsigned dpl);

/*
 * Expected faults: the next exception with this vector is recorded instead
 * of being fatal, and the saved IP is advanced by skip_len (use the length
 * of the faulting instruction for faults, 0 for traps such as #BP whose IP
 * already points past the instruction). One-shot; it takes precedence over
 * idt_set_handler().
 */
void expect_fault(unsigned vector, unsigned skip_len);
/*
 * The vector seen since expect_fault(), or -1. Calling it also disarms an
 * expectation that did not fire, so a missing fault cannot leak into later
 * code.
 */
int fault_taken(void);
uint64_t fault_error_code(void);
uintptr_t fault_ip(void);         /* saved IP before skip_len was applied */
uintptr_t fault_cr2(void);        /* CR2 when the vector was 14 */

/* C dispatcher called by the assembly stubs (runtime/isr.S). */
void lunavm_irq_dispatch(struct irq_frame *frame);

/* ------------------------------------------------------------------------ */
/* Serial (16550 at 0x3f8, 115200 8N1) and printf                          */
/* ------------------------------------------------------------------------ */

#define LUNAVM_COM1 0x3f8

void serial_init(void);
void serial_putc(char c);          /* bytes go out unchanged (no \n -> \r\n) */
void serial_puts(const char *s);   /* no newline appended */
void serial_write(const char *s, size_t len);
int serial_getc(void);             /* blocks, polling LSR */
int serial_trygetc(void);          /* -1 when no byte is waiting */

/*
 * Formats: %s %c %d %i %u %x %X %p %% with l/ll/z modifiers, the flags '0'
 * and '-' and a width (e.g. %08x, %-10s, %16llx). %p prints 0x and hex.
 */
__attribute__((format(printf, 1, 2))) int printf(const char *fmt, ...);
int vprintf(const char *fmt, va_list ap);
__attribute__((format(printf, 3, 4))) int snprintf(char *buf, size_t size,
						   const char *fmt, ...);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* ------------------------------------------------------------------------ */
/* Strings and the command line                                            */
/* ------------------------------------------------------------------------ */

size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *memmove(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/*
 * Parse an unsigned number: decimal, or hex with 0x. Returns true if the
 * whole of s[0..len) (len = strlen(s) when (size_t)-1) was a number.
 */
bool parse_u64(const char *s, size_t len, uint64_t *out);

/*
 * The command line is space-separated words, each "key=value" or "key".
 * cmdline_get copies the value of the first word with that key into buf
 * (NUL-terminated, truncated to len - 1) and returns the value's full
 * length; a bare "key" has the value "". Returns -1 when the key is absent.
 */
int cmdline_get(const char *cmdline, const char *key, char *buf, size_t len);
bool cmdline_has(const char *cmdline, const char *key);
/* The value as a number, or def when absent or not a number. */
uint64_t cmdline_get_u64(const char *cmdline, const char *key, uint64_t def);

#endif /* LUNAVM_H */
