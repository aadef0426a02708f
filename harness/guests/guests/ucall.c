/*
 * ucall: sends every ucall command once.
 *
 * PRINT("hello via ucall"), SYNC(1), COV_MAP(64-byte map), CMP(0x1234,
 * 0x1234, 4, pc), FUZZ_POINT(64-byte buffer, 64), a serial line, then
 * DONE(0) and guest_exit(0). PRINT and SYNC use a struct on the stack,
 * COV_MAP one in .bss, so the harness's address translation sees both.
 *
 * Option assert=1: after the PRINT, GUEST_ASSERT_EQ(1 + 1, 3) fails instead
 * (UCALL_ASSERT; under QEMU the guest exits with LUNAVM_EXIT_ASSERT).
 */
#include "lunavm.h"

static struct lunavm_ucall bss_uc;
static uint8_t cov_map[64];
static uint8_t fuzz_buf[64];

int guest_main(const char *cmdline)
{
	ucall_print("hello via ucall");
	if (cmdline_get_u64(cmdline, "assert", 0))
		GUEST_ASSERT_EQ(1 + 1, 3);

	ucall_sync(1);

	ucall_init(&bss_uc, UCALL_COV_MAP);
	bss_uc.nargs = 2;
	bss_uc.args[0] = (uintptr_t)cov_map;
	bss_uc.args[1] = sizeof(cov_map);
	ucall_send(&bss_uc);

	uintptr_t pc;
	__asm__ volatile("lea 0(%%rip), %0" : "=r"(pc));
	ucall_cmp(0x1234, 0x1234, 4, pc);

	ucall_fuzz_point(fuzz_buf, sizeof(fuzz_buf));

	printf("ucall: all commands sent\n");
	ucall_done(0);
}
