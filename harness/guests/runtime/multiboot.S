/*
 * Multiboot v1 entry for 32-bit guests (built with gcc -m32).
 *
 * The guest stays in 32-bit protected mode with paging off. The loader
 * enters mb_start with EAX = 0x2BADB002 and EBX = physical address of the
 * multiboot info. We load our own GDT (flat code 0x08, flat data 0x10),
 * zero .bss, switch to our stack and call
 * lunavm_start(LUNAVM_BOOT_MULTIBOOT, eax, ebx).
 */

#define MB_MAGIC 0x1badb002
#define MB_FLAGS 0x3		/* page-align modules | memory info */
#define LUNAVM_BOOT_MULTIBOOT 2

#define SEL_CODE 0x08
#define SEL_DATA 0x10

#define STACK_SIZE 0x10000

	/* Placed first in the image by guest.ld: within the first 8 KiB. */
	.section .multiboot, "a"
	.balign 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.section .text.boot, "ax"
	.code32
	.globl mb_start, _start
	.type mb_start, @function
mb_start:
_start:				/* ELF entry */
	cli
	cld
	mov %eax, %esi			/* boot magic */
	lgdt gdt_desc
	ljmp $SEL_CODE, $1f
1:	mov $SEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs

	/* Zero .bss. ESI and EBX are preserved. */
	mov $__bss_start, %edi
	mov $__bss_end, %ecx
	sub %edi, %ecx
	shr $2, %ecx
	xor %eax, %eax
	rep stosl

	mov $stack_top, %esp
	xor %ebp, %ebp
	push %ebx			/* info */
	push %esi			/* magic */
	push $LUNAVM_BOOT_MULTIBOOT
	call lunavm_start
	mov $0x7f, %eax
	mov $0xf4, %dx
	outl %eax, %dx
2:	cli
	hlt
	jmp 2b
	.size mb_start, . - mb_start

	.section .rodata
	.balign 16
gdt:
	.quad 0				/* null */
	.quad 0x00cf9a000000ffff	/* 0x08: flat 32-bit code */
	.quad 0x00cf92000000ffff	/* 0x10: flat data */
gdt_end:
	.balign 4
	.word 0
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt

	.section .stack, "aw", @nobits
	.balign 16
stack_bottom:
	.skip STACK_SIZE
stack_top:

	.section .note.GNU-stack, "", @progbits
