/*
 * hello: the smallest guest. Prints a greeting and its command line.
 * Options: status=N  exit with N instead of 0.
 */
#include "lunavm.h"

int guest_main(const char *cmdline)
{
	printf("Hello from lunavm guest 'hello'!\n");
	printf("cmdline: %s\n", cmdline);
	return (int)cmdline_get_u64(cmdline, "status", 0);
}
