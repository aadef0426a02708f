/*
 * Coverage and comparison feedback for guests built with gcc's
 * -fsanitize-coverage=trace-pc,trace-cmp (runtime side: sancov.c).
 *
 * Compile only the code under test with the flag (the runtime itself stays
 * uninstrumented) and link runtime/sancov.c, which implements the
 * __sanitizer_cov_* callbacks gcc inserts:
 *
 * - trace-pc: every basic block calls __sanitizer_cov_trace_pc(), which
 *   increments (saturating at 255) one byte of lunavm_sancov_map, indexed by
 *   a hash of the caller's address.
 * - trace-cmp: comparisons call __sanitizer_cov_trace_[const_]cmp{1,2,4,8}
 *   and switches __sanitizer_cov_trace_switch; sancov.c reports the operands
 *   with ucall CMP(a, b, size in bytes, pc) -- only for 2-, 4- and 8-byte
 *   operands that differ, at most LUNAVM_SANCOV_MAX_PER_SITE times per call
 *   site (so a loop's compare does not crowd out the rest) and
 *   LUNAVM_SANCOV_MAX_CMPS in all per fuzz iteration (each report is a VM
 *   exit). For const_cmp, a is the compile-time constant; for a switch,
 *   b is the operand and a the nearest case value below it, then above it.
 *
 * The guest calls sancov_register() once (ucall COV_MAP with the map's
 * address and size; CMP reports start after it) and sancov_reset() right
 * before its fuzz point, so a snapshot taken there holds an empty map and
 * full CMP budgets, and each iteration's map shows that iteration alone.
 */
#ifndef LUNAVM_SANCOV_H
#define LUNAVM_SANCOV_H

#include <stdint.h>

/* Size of the coverage byte map (a power of two). */
#ifndef LUNAVM_SANCOV_MAP_SIZE
#define LUNAVM_SANCOV_MAP_SIZE 8192
#endif

/* CMP ucalls sent per iteration at most. */
#ifndef LUNAVM_SANCOV_MAX_CMPS
#define LUNAVM_SANCOV_MAX_CMPS 64
#endif

/* CMP ucalls per call site and iteration at most (sites hashed into 256 slots). */
#ifndef LUNAVM_SANCOV_MAX_PER_SITE
#define LUNAVM_SANCOV_MAX_PER_SITE 2
#endif

/* The coverage byte map (page-aligned, in .bss). */
extern uint8_t lunavm_sancov_map[LUNAVM_SANCOV_MAP_SIZE];

/* Send ucall COV_MAP(lunavm_sancov_map, LUNAVM_SANCOV_MAP_SIZE); enables CMP. */
void sancov_register(void);

/* Clear the map and refill the CMP budget (call right before the fuzz point). */
void sancov_reset(void);

#endif /* LUNAVM_SANCOV_H */
