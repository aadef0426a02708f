/*
 * hello: the smallest guest. Prints a greeting and its command line.
 * Options: status=N  exit with N instead of 0.
 *          halt=1    halt with interrupts disabled instead of exiting, so
 *                    nothing can wake the machine (lunavm stops: halted).
 */
#include "lunavm.h"

int guest_main(const char *cmdline)
{
	printf("Hello from lunavm guest 'hello'!\n");
	printf("cmdline: %s\n", cmdline);
	if (cmdline_get_u64(cmdline, "halt", 0))
		for (;;)
			__asm__ volatile("cli; hlt" : : : "memory");
	return (int)cmdline_get_u64(cmdline, "status", 0);
}
