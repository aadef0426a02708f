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
/* Reports per call site (hashed into 256 slots) in this iteration. */
static uint8_t site_reports[256];

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
	for (size_t i = 0; i < sizeof(site_reports); i++)
		site_reports[i] = 0;
	cmp_budget = LUNAVM_SANCOV_MAX_CMPS;
}

/* Fibonacci hashing of the call site onto the map. */
static inline uint32_t pc_hash(uintptr_t pc)
{
	return (uint32_t)(((uint64_t)pc * 0x9e3779b97f4a7c15ull) >> 40);
}

static inline uint32_t map_index(uintptr_t pc)
{
	return pc_hash(pc) & (LUNAVM_SANCOV_MAP_SIZE - 1);
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
	/* A loop's compare would use up the budget: each site twice at most. */
	uint8_t *seen = &site_reports[pc_hash(pc) & (sizeof(site_reports) - 1)];
	if (*seen >= LUNAVM_SANCOV_MAX_PER_SITE)
		return;
	(*seen)++;
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

/*
 * cases[0] = number of cases, cases[1] = operand width in bits, then the
 * cases. Reports the operand against the nearest case below and above it
 * (nothing when it matches one): two reports however many cases there are.
 */
void __sanitizer_cov_trace_switch(uint64_t val, uint64_t *cases)
{
	uint64_t n = cases[0], below = 0, above = 0;
	uint32_t size = (uint32_t)(cases[1] / 8);
	int have_below = 0, have_above = 0;

	if (size < 2)
		return;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t c = cases[2 + i];

		if (c == val)
			return;
		if (c < val && (!have_below || c > below)) {
			below = c;
			have_below = 1;
		}
		if (c > val && (!have_above || c < above)) {
			above = c;
			have_above = 1;
		}
	}
	if (have_below)
		report(below, val, size, PC());
	if (have_above)
		report(above, val, size, PC());
}
