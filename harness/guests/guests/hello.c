/*
 * hello: the smallest guest. Prints a greeting and its command line.
 * Options: status=N  exit with N instead of 0.
 *          halt=1    halt with interrupts disabled instead of exiting, so
 *                    nothing can wake the machine (lunavm stops: halted).
 *          probe=1   read and write an unclaimed port (0x510) and unclaimed
 *                    MMIO (0xd0000000, in the MMIO hole) and print what the
 *                    reads returned (all-ones on lunavm).
 */
#include "lunavm.h"

int guest_main(const char *cmdline)
{
	printf("Hello from lunavm guest 'hello'!\n");
	printf("cmdline: %s\n", cmdline);
	if (cmdline_get_u64(cmdline, "probe", 0)) {
		outl(0x510, 0x12345678);
		uint32_t port = inl(0x510);
		mmio_write32(0xd0000000, 0x12345678);
		uint32_t mmio = mmio_read32(0xd0000000);
		printf("probe: port 0x510 reads 0x%x, mmio 0xd0000000 reads 0x%x\n",
		       port, mmio);
	}
	if (cmdline_get_u64(cmdline, "halt", 0))
		for (;;)
			__asm__ volatile("cli; hlt" : : : "memory");
	return (int)cmdline_get_u64(cmdline, "status", 0);
}
