/*
 * Runtime side of gcc's -fsanitize-coverage=trace-pc,trace-cmp (see
 * sancov.h). This file must itself be built without the flag.
 */
#include "lunavm.h"
#include "sancov.h"

_Static_assert((LUNAVM_SANCOV_MAP_SIZE & (LUNAVM_SANCOV_MAP_SIZE - 1)) == 0,
	       "LUNAVM_SANCOV_MAP_SIZE must be a power of two");

uint8_t lunavm_sancov_map[LUNAVM_SANCOV_MAP_SIZE] __attribute__((aligned(4096)));

/* One prepared CMP ucall, so a report is four stores and one `out`. */
static struct lunavm_ucall cmp_uc;
static volatile uint32_t cmp_budget;
static volatile int registered;

void sancov_register(void)
{
	ucall_init(&cmp_uc, UCALL_CMP);
	cmp_uc.nargs = 4;
	cmp_budget = LUNAVM_SANCOV_MAX_CMPS;
	registered = 1;
	ucall_cov_map(lunavm_sancov_map, sizeof(lunavm_sancov_map));
}

void sancov_reset(void)
{
	uint64_t *p = (uint64_t *)lunavm_sancov_map;

	for (size_t i = 0; i < sizeof(lunavm_sancov_map) / sizeof(*p); i++)
		p[i] = 0;
	cmp_budget = LUNAVM_SANCOV_MAX_CMPS;
}

/* Fibonacci hashing of the call site onto the map. */
static inline uint32_t map_index(uintptr_t pc)
{
	uint64_t h = (uint64_t)pc * 0x9e3779b97f4a7c15ull;

	return (uint32_t)(h >> 40) & (LUNAVM_SANCOV_MAP_SIZE - 1);
}

void __sanitizer_cov_trace_pc(void);
void __sanitizer_cov_trace_pc(void)
{
	uint8_t *c = &lunavm_sancov_map[map_index(
		(uintptr_t)__builtin_return_address(0))];

	if (*c != 0xff)
		(*c)++;
}

static void report(uint64_t a, uint64_t b, uint32_t size, uintptr_t pc)
{
	if (size < 2 || a == b || !registered || cmp_budget == 0)
		return;
	cmp_budget = cmp_budget - 1;
	cmp_uc.args[0] = a;
	cmp_uc.args[1] = b;
	cmp_uc.args[2] = size;
	cmp_uc.args[3] = pc;
	ucall_raw(UCALL_CMP, &cmp_uc);
}

#define PC() ((uintptr_t)__builtin_return_address(0))

/* gcc calls these; the prototypes only keep -Wmissing-declarations quiet. */
void __sanitizer_cov_trace_cmp1(uint8_t a, uint8_t b);
void __sanitizer_cov_trace_cmp2(uint16_t a, uint16_t b);
void __sanitizer_cov_trace_cmp4(uint32_t a, uint32_t b);
void __sanitizer_cov_trace_cmp8(uint64_t a, uint64_t b);
void __sanitizer_cov_trace_const_cmp1(uint8_t a, uint8_t b);
void __sanitizer_cov_trace_const_cmp2(uint16_t a, uint16_t b);
void __sanitizer_cov_trace_const_cmp4(uint32_t a, uint32_t b);
void __sanitizer_cov_trace_const_cmp8(uint64_t a, uint64_t b);
void __sanitizer_cov_trace_switch(uint64_t val, uint64_t *cases);

/* 1-byte comparisons are cheap to guess: never reported. */
void __sanitizer_cov_trace_cmp1(uint8_t a, uint8_t b) { (void)a; (void)b; }
void __sanitizer_cov_trace_const_cmp1(uint8_t a, uint8_t b) { (void)a; (void)b; }

void __sanitizer_cov_trace_cmp2(uint16_t a, uint16_t b) { report(a, b, 2, PC()); }
void __sanitizer_cov_trace_cmp4(uint32_t a, uint32_t b) { report(a, b, 4, PC()); }
void __sanitizer_cov_trace_cmp8(uint64_t a, uint64_t b) { report(a, b, 8, PC()); }
void __sanitizer_cov_trace_const_cmp2(uint16_t a, uint16_t b) { report(a, b, 2, PC()); }
void __sanitizer_cov_trace_const_cmp4(uint32_t a, uint32_t b) { report(a, b, 4, PC()); }
void __sanitizer_cov_trace_const_cmp8(uint64_t a, uint64_t b) { report(a, b, 8, PC()); }

/* cases[0] = number of cases, cases[1] = operand width in bits, then the cases. */
void __sanitizer_cov_trace_switch(uint64_t val, uint64_t *cases)
{
	uint64_t n = cases[0];
	uint32_t size = (uint32_t)(cases[1] / 8);

	if (size < 2)
		return;
	for (uint64_t i = 0; i < n; i++)
		report(cases[2 + i], val, size, PC());
}
