/*
 * mb_hello: a 32-bit multiboot v1 guest that stays in protected mode with
 * paging off. Prints the command line, mem_lower/mem_upper and, for each
 * module, its index, start, end and first bytes as text (up to 32 bytes,
 * stopping at NUL or newline); sends a 32-bit ucall PRINT; exits 0.
 */
#include "lunavm.h"

#define MB_INFO_MEM (1u << 0)
#define MB_INFO_MODS (1u << 3)

int guest_main(const char *cmdline)
{
	const struct multiboot_info *mi = lunavm_mb_info;

	printf("Hello from lunavm guest 'mb_hello' (multiboot)!\n");
	printf("cmdline: %s\n", cmdline);
	if (mi->flags & MB_INFO_MEM)
		printf("mem_lower: %u KiB\nmem_upper: %u KiB\n", mi->mem_lower,
		       mi->mem_upper);
	if (mi->flags & MB_INFO_MODS) {
		const struct multiboot_module *mods =
			(const struct multiboot_module *)(uintptr_t)mi->mods_addr;
		printf("modules: %u\n", mi->mods_count);
		for (uint32_t i = 0; i < mi->mods_count; i++) {
			const char *p = (const char *)(uintptr_t)mods[i].mod_start;
			uint32_t len = mods[i].mod_end - mods[i].mod_start;
			char text[33];
			uint32_t n = 0;

			while (n < 32 && n < len && p[n] && p[n] != '\n') {
				text[n] = (p[n] >= 0x20 && p[n] < 0x7f) ? p[n] : '.';
				n++;
			}
			text[n] = '\0';
			printf("module %u: start 0x%x end 0x%x: %s\n", i,
			       mods[i].mod_start, mods[i].mod_end, text);
		}
	}
	ucall_print("32-bit ucall");
	return 0;
}
