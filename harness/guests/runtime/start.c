/*
 * C side of the boot stubs (pvh.S, multiboot.S): find the command line,
 * initialise serial and the IDT, run guest_main(), exit with its status.
 */
#include "lunavm.h"

/* Boot protocol codes passed by the stubs. */
#define LUNAVM_BOOT_PVH 1
#define LUNAVM_BOOT_MULTIBOOT 2

const struct hvm_start_info *lunavm_pvh_info;
const struct multiboot_info *lunavm_mb_info;

void lunavm_start(uint32_t proto, uint32_t magic, uint32_t info);

void lunavm_start(uint32_t proto, uint32_t magic, uint32_t info)
{
	const char *cmdline = "";

	serial_init();
	idt_init();

	if (proto == LUNAVM_BOOT_PVH) {
		const struct hvm_start_info *si =
			(const struct hvm_start_info *)(uintptr_t)info;
		if (!si || si->magic != XEN_HVM_START_MAGIC) {
			printf("lunavm: bad PVH start info at 0x%x\n", (unsigned)info);
			guest_exit(LUNAVM_EXIT_BAD_BOOT);
		}
		lunavm_pvh_info = si;
		if (si->cmdline_paddr)
			cmdline = (const char *)(uintptr_t)si->cmdline_paddr;
	} else if (proto == LUNAVM_BOOT_MULTIBOOT) {
		const struct multiboot_info *mi =
			(const struct multiboot_info *)(uintptr_t)info;
		if (magic != MULTIBOOT_BOOTLOADER_MAGIC || !mi) {
			printf("lunavm: bad multiboot magic 0x%x\n", (unsigned)magic);
			guest_exit(LUNAVM_EXIT_BAD_BOOT);
		}
		lunavm_mb_info = mi;
		if ((mi->flags & (1u << 2)) && mi->cmdline)
			cmdline = (const char *)(uintptr_t)mi->cmdline;
	}

	guest_exit(guest_main(cmdline));
}

void guest_exit(int status)
{
	outl(LUNAVM_DEBUG_EXIT_PORT, (uint32_t)status);
	for (;;)
		__asm__ volatile("cli; hlt" : : : "memory");
}
