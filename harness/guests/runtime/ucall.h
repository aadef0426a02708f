/*
 * lunavm ucall ABI: how a guest talks to the harness.
 *
 * The guest executes a 32-bit `out` (outl %eax, %dx) to port 0x1000 with the
 * command number in EAX and the guest-virtual address of a struct
 * lunavm_ucall in RDI (64-bit) or EDI (32-bit), 0 when there is none. The
 * harness translates the address through the vCPU's page tables. The struct
 * layout is fixed and identical in 32- and 64-bit builds.
 *
 * Under QEMU port 0x1000 is unclaimed and the write is dropped: every helper
 * here returns normally, and ucall_done() falls back to guest_exit().
 */
#ifndef LUNAVM_UCALL_H
#define LUNAVM_UCALL_H

#include <stddef.h>
#include <stdint.h>

#define LUNAVM_UCALL_PORT 0x1000
#define LUNAVM_UCALL_MAGIC 0x4c55434cu /* "LCUL" little-endian */
#define LUNAVM_UCALL_VERSION 1
#define LUNAVM_UCALL_MAX_ARGS 6
#define LUNAVM_UCALL_MSG_SIZE 256

enum lunavm_ucall_cmd {
	UCALL_DONE = 1,       /* args[0] = status; ends the test */
	UCALL_ASSERT = 2,     /* msg = "file:line: expr", args = line, left, right */
	UCALL_PRINT = 3,      /* msg = one line of text */
	UCALL_SYNC = 4,       /* args[0] = sync point id */
	UCALL_FUZZ_POINT = 5, /* args[0] = input buffer address, args[1] = capacity */
	UCALL_COV_MAP = 6,    /* args[0] = coverage byte map address, args[1] = size */
	UCALL_CMP = 7,        /* args = a, b, size in bytes, pc */
};

struct lunavm_ucall {     /* 320 bytes */
	uint32_t magic;       /* LUNAVM_UCALL_MAGIC */
	uint16_t version;     /* LUNAVM_UCALL_VERSION */
	uint16_t cmd;         /* same as EAX */
	uint32_t nargs;       /* number of valid args, <= 6 */
	uint32_t msg_len;     /* bytes used in msg, excluding NUL, <= 255 */
	uint64_t args[LUNAVM_UCALL_MAX_ARGS];
	char msg[LUNAVM_UCALL_MSG_SIZE]; /* NUL-terminated */
};

_Static_assert(sizeof(struct lunavm_ucall) == 320, "ucall struct size");
_Static_assert(offsetof(struct lunavm_ucall, magic) == 0, "ucall magic offset");
_Static_assert(offsetof(struct lunavm_ucall, version) == 4, "ucall version offset");
_Static_assert(offsetof(struct lunavm_ucall, cmd) == 6, "ucall cmd offset");
_Static_assert(offsetof(struct lunavm_ucall, nargs) == 8, "ucall nargs offset");
_Static_assert(offsetof(struct lunavm_ucall, msg_len) == 12, "ucall msg_len offset");
_Static_assert(offsetof(struct lunavm_ucall, args) == 16, "ucall args offset");
_Static_assert(offsetof(struct lunavm_ucall, msg) == 64, "ucall msg offset");

/* The raw port write: EAX = cmd, RDI/EDI = address of the struct (or 0). */
static inline void ucall_raw(uint32_t cmd, const volatile struct lunavm_ucall *uc)
{
	__asm__ volatile("outl %%eax, %%dx"
			 :
			 : "a"(cmd), "Nd"((uint16_t)LUNAVM_UCALL_PORT), "D"(uc)
			 : "memory");
}

/* Fill magic/version/cmd, clear the rest. */
void ucall_init(struct lunavm_ucall *uc, uint32_t cmd);
/* Send a filled-in struct (any storage: stack, .bss, heap). */
void ucall_send(struct lunavm_ucall *uc);
/* Build a struct on the stack with nargs arguments and send it. */
void ucall_array(uint32_t cmd, uint32_t nargs, const uint64_t *args);

/*
 * ucall(cmd, nargs, args...): every argument is converted to uint64_t (cast
 * pointers through uintptr_t first).
 */
#define ucall(cmd, nargs, ...) \
	ucall_array((cmd), (nargs), (const uint64_t[]){ 0, ##__VA_ARGS__ } + 1)

/* DONE(status), then guest_exit(status) so the guest also ends under QEMU. */
__attribute__((noreturn)) void ucall_done(int status);
/* PRINT: printf-style into msg (truncated to 255 bytes). */
__attribute__((format(printf, 1, 2))) void ucall_print(const char *fmt, ...);
void ucall_sync(uint64_t id);
void ucall_fuzz_point(void *buf, uint64_t capacity);
void ucall_cov_map(void *map, uint64_t size);
void ucall_cmp(uint64_t a, uint64_t b, uint32_t size, uint64_t pc);

/*
 * Failed assertion: prints it on serial, sends UCALL_ASSERT (the harness stops
 * the run there), and exits with LUNAVM_EXIT_ASSERT if the harness did not.
 */
__attribute__((noreturn)) void lunavm_assert_fail(const char *file, uint32_t line,
						  const char *expr, uint64_t left,
						  uint64_t right);

/*
 * The file as given to gcc (build from harness/guests with relative paths,
 * as build.sh and build.rs do, and it is "guests/NAME.c"). Define
 * LUNAVM_FILE as __FILE_NAME__ before including this for base names only.
 */
#ifndef LUNAVM_FILE
#define LUNAVM_FILE __FILE__
#endif

#define GUEST_ASSERT(cond)                                                \
	do {                                                              \
		if (!(cond))                                              \
			lunavm_assert_fail(LUNAVM_FILE, __LINE__, #cond, 0, 0); \
	} while (0)

/* Both sides are converted to uint64_t (cast pointers through uintptr_t). */
#define GUEST_ASSERT_EQ(a, b)                                               \
	do {                                                                \
		uint64_t __lunavm_a = (uint64_t)(a);                        \
		uint64_t __lunavm_b = (uint64_t)(b);                        \
		if (__lunavm_a != __lunavm_b)                               \
			lunavm_assert_fail(LUNAVM_FILE, __LINE__, #a " == " #b, \
					   __lunavm_a, __lunavm_b);         \
	} while (0)

#endif /* LUNAVM_UCALL_H */
