/*
 * Xen PVH entry for 64-bit guests.
 *
 * The loader enters pvh_start32 in 32-bit protected mode, paging off, with
 * flat 32-bit CS/DS and EBX = physical address of struct hvm_start_info.
 * We rely on nothing else: load our own GDT, zero .bss, build page tables
 * in .bss that identity-map the first 4 GiB with 2 MiB pages (so the MMIO
 * hole 0xC0000000-0xFFFFFFFF is reachable), enable PAE, EFER.LME|NXE and
 * paging, far-jump to 64-bit code, switch to our stack and call
 * lunavm_start(LUNAVM_BOOT_PVH, 0, ebx), which runs guest_main() and exits.
 * SSE/AVX/XSAVE state is left alone (CR4.OSFXSR/OSXSAVE stay clear).
 */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define LUNAVM_BOOT_PVH 1

#define CR0_PE (1 << 0)
#define CR0_PG (1 << 31)
#define CR4_PAE (1 << 5)
#define MSR_EFER 0xc0000080
#define EFER_LME (1 << 8)
#define EFER_NXE (1 << 11)

#define SEL_CODE64 0x08
#define SEL_DATA 0x10
#define SEL_CODE32 0x18

#define STACK_SIZE 0x10000

/*
 * The PVH note. The descriptor is 8 bytes (the entry address zero-extended),
 * as in Linux's x86_64 vmlinux: loaders that read 4 bytes (the 32-bit entry)
 * and loaders that read a pointer-sized value both get the right address.
 * The note section must stay 4-byte aligned: QEMU rounds the name size up
 * to the PT_NOTE segment's alignment to find the descriptor.
 */
	.section .note.Xen, "a", @note
	.balign 4
	.long 2f - 1f		/* namesz */
	.long 4f - 3f		/* descsz */
	.long XEN_ELFNOTE_PHYS32_ENTRY
1:	.asciz "Xen"
2:	.balign 4
3:	.quad pvh_start32
4:	.balign 4

	.section .text.boot, "ax"
	.code32
	.globl pvh_start32, _start
	.type pvh_start32, @function
pvh_start32:
_start:				/* ELF entry: the same 32-bit PVH entry */
	cli
	cld
	lgdt gdt_desc
	ljmp $SEL_CODE32, $1f
1:	mov $SEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs

	/* Zero .bss (page tables, IDT, runtime state). EBX is preserved. */
	mov $__bss_start, %edi
	mov $__bss_end, %ecx
	sub %edi, %ecx
	shr $2, %ecx
	xor %eax, %eax
	rep stosl

	/* PML4[0] -> PDPT; PDPT[0..3] -> the four page directories. */
	mov $pdpt, %eax
	or $0x3, %eax
	mov %eax, pml4
	mov $pd, %eax
	or $0x3, %eax
	mov $pdpt, %edi
	mov $4, %ecx
2:	mov %eax, (%edi)
	add $0x1000, %eax
	add $8, %edi
	dec %ecx
	jnz 2b

	/* 2048 PDEs: 2 MiB pages, present | writable | PS, identity. */
	mov $pd, %edi
	mov $0x83, %eax
	mov $2048, %ecx
3:	mov %eax, (%edi)
	add $0x200000, %eax
	add $8, %edi
	dec %ecx
	jnz 3b

	mov $pml4, %eax
	mov %eax, %cr3
	mov %cr4, %eax
	or $CR4_PAE, %eax
	mov %eax, %cr4
	mov $MSR_EFER, %ecx
	rdmsr
	or $(EFER_LME | EFER_NXE), %eax
	wrmsr
	mov %cr0, %eax
	or $(CR0_PG | CR0_PE), %eax
	mov %eax, %cr0
	ljmp $SEL_CODE64, $start64

	.code64
start64:
	mov $SEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs
	mov $stack_top, %rsp
	xor %ebp, %ebp
	mov $LUNAVM_BOOT_PVH, %edi
	xor %esi, %esi
	mov %ebx, %edx
	call lunavm_start
	/* lunavm_start does not return; exit(0xff-ish) defensively. */
	mov $0x7f, %eax
	mov $0xf4, %dx
	outl %eax, %dx
5:	cli
	hlt
	jmp 5b
	.size pvh_start32, . - pvh_start32

	.section .rodata
	.balign 16
gdt:
	.quad 0				/* null */
	.quad 0x00af9a000000ffff	/* 0x08: 64-bit code, DPL 0 */
	.quad 0x00cf92000000ffff	/* 0x10: flat data */
	.quad 0x00cf9a000000ffff	/* 0x18: flat 32-bit code */
gdt_end:
	.balign 4
	.word 0
gdt_desc:
	.word gdt_end - gdt - 1
	.quad gdt			/* lgdt in 32-bit mode reads 4 bytes of base */

	.section .bss
	.balign 4096
	.globl lunavm_boot_pml4
lunavm_boot_pml4:
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4 * 4096

	.section .stack, "aw", @nobits
	.balign 16
stack_bottom:
	.skip STACK_SIZE
stack_top:

	.section .note.GNU-stack, "", @progbits
