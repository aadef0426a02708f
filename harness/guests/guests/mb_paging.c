/*
 * mb_paging: a 32-bit multiboot guest for address-translation tests in the
 * 32-bit paging modes.
 *
 * Option mode=off|32|pae (default 32):
 *   off  paging stays off.
 *   32   classic 2-level 32-bit paging with CR4.PSE: one page directory of
 *        1024 4 MiB PDEs (present, writable) identity-maps 0-4 GiB, except
 *        that the PDE for 0xC0400000 (in the MMIO hole, unused) points to a
 *        page table whose entry 0 maps the 4 KiB alias_page.
 *   pae  PAE paging (CR4.PAE): 4 PDPTEs, 4 page directories of 2 MiB PDEs
 *        identity-mapping 0-4 GiB, except that the 2 MiB region at
 *        0xC0400000 is a page table whose entry 0 maps alias_page (4 KiB).
 * The tables are static and page-aligned (.bss); CR3 points at the page
 * directory (32) or the PDPT (pae). NX is not used (EFER.NXE stays clear).
 *
 * alias_page is static, page-aligned and holds "mb alias page". The alias
 * virtual address is 0xC0400000 (mode=off: the physical address of
 * alias_page, since there is no translation).
 *
 * Protocol: one ucall SYNC, sent with paging in the chosen mode (EDI = the
 * struct's address on the identity-mapped stack):
 *   SYNC(1, alias VA, physical address of alias_page, CR3)
 *     (args[0] = 1, args[1..3] as listed, nargs 4)
 * After it returns: "mb_paging: mode %s: %s\n" with the mode name (off, 32
 * or pae) and the C string read through the alias VA (at most 4096 bytes).
 * Then exit status 0.
 *
 * Failures: an unknown mode prints "mb_paging: unknown mode ..." and exits
 * 0x5f. If setting CR0.PG raises #GP (hosts whose KVM refuses paging outside
 * long mode, such as software-nested kvm_pvm: there mode=32 and mode=pae
 * cannot run), it prints "mb_paging: mode %s: #GP on setting CR0.PG, paging
 * refused (eip 0x...)" and exits 0x5e from the #GP handler, without sending
 * the SYNC.
 */
#include "lunavm.h"

#define ALIAS_VA 0xC0400000u

#define CR4_PSE (1u << 4)
#define PG_P 0x001u
#define PG_W 0x002u
#define PG_PS 0x080u

static char alias_page[4096] __attribute__((aligned(4096))) = "mb alias page";

/* mode=32: page directory and one page table (4-byte entries). */
static uint32_t pd32[1024] __attribute__((aligned(4096)));
static uint32_t pt32[1024] __attribute__((aligned(4096)));

/* mode=pae: PDPT (4 entries, 32-byte aligned), 4 directories, one table. */
static uint64_t pae_pdpt[4] __attribute__((aligned(32)));
static uint64_t pae_pd[4][512] __attribute__((aligned(4096)));
static uint64_t pae_pt[512] __attribute__((aligned(4096)));

static const char *mode_name = "32";

/*
 * #GP while setting CR0.PG: some KVM hosts (software-nested kvm_pvm) refuse
 * paging outside long mode. Report and exit from the handler itself: on such
 * hosts returning with iretd is an emulation failure as well.
 */
static void pg_gp_handler(struct irq_frame *f)
{
	printf("mb_paging: mode %s: #GP on setting CR0.PG, paging refused (eip 0x%x)\n",
	       mode_name, f->ip);
	guest_exit(0x5e);
}

static void enable_pg(void)
{
	idt_set_handler(13, pg_gp_handler);
	write_cr0(read_cr0() | X86_CR0_PG);
	idt_set_handler(13, NULL);
}

static void enable_paging32(void)
{
	for (uint32_t i = 0; i < 1024; i++)
		pd32[i] = (i << 22) | PG_PS | PG_W | PG_P;
	pt32[(ALIAS_VA >> 12) & 1023] = (uint32_t)(uintptr_t)alias_page | PG_W | PG_P;
	pd32[ALIAS_VA >> 22] = (uint32_t)(uintptr_t)pt32 | PG_W | PG_P;

	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((uintptr_t)pd32);
	enable_pg();
}

static void enable_paging_pae(void)
{
	for (uint32_t i = 0; i < 4; i++) {
		for (uint32_t j = 0; j < 512; j++)
			pae_pd[i][j] = ((uint64_t)(i * 512 + j) << 21) | PG_PS | PG_W | PG_P;
		/* PDPTEs: R/W and U/S are reserved in PAE mode, only P is set. */
		pae_pdpt[i] = (uint32_t)(uintptr_t)pae_pd[i] | PG_P;
	}
	pae_pt[(ALIAS_VA >> 12) & 511] = (uint32_t)(uintptr_t)alias_page | PG_W | PG_P;
	pae_pd[ALIAS_VA >> 30][(ALIAS_VA >> 21) & 511] =
		(uint32_t)(uintptr_t)pae_pt | PG_W | PG_P;

	write_cr4(read_cr4() | X86_CR4_PAE);
	write_cr3((uintptr_t)pae_pdpt);
	enable_pg();
}

int guest_main(const char *cmdline)
{
	char mode[8] = "32";
	uintptr_t alias_va = ALIAS_VA;

	if (cmdline_get(cmdline, "mode", mode, sizeof(mode)) >= (int)sizeof(mode)) {
		printf("mb_paging: unknown mode (too long)\n");
		return 0x5f;
	}
	mode_name = mode;
	if (!strcmp(mode, "off")) {
		alias_va = (uintptr_t)alias_page;
	} else if (!strcmp(mode, "32")) {
		enable_paging32();
	} else if (!strcmp(mode, "pae")) {
		enable_paging_pae();
	} else {
		printf("mb_paging: unknown mode %s\n", mode);
		return 0x5f;
	}

	ucall(UCALL_SYNC, 4, 1, alias_va, (uintptr_t)alias_page, read_cr3());

	const volatile char *s = (const volatile char *)alias_va;
	printf("mb_paging: mode %s: ", mode);
	for (size_t n = 0; n < sizeof(alias_page) && s[n]; n++)
		serial_putc(s[n]);
	serial_putc('\n');
	return 0;
}
