/*
 * Interrupt entry stubs for all 256 vectors, 64-bit and 32-bit.
 *
 * Each stub pushes a 0 error code when the CPU does not push one (so every
 * frame has the same layout), pushes its vector number and jumps to the
 * common code, which saves the general registers (struct irq_frame in
 * lunavm.h), calls lunavm_irq_dispatch(frame) and returns with iret.
 * lunavm_isr_stubs[] holds the stub addresses for idt_init().
 */

	.altmacro

/* Vectors for which the CPU pushes an error code. */
.macro ISR_STUB v
	.balign 8
lunavm_isr_\v:
	.if (\v == 8) || ((\v >= 10) && (\v <= 14)) || (\v == 17) || (\v == 21) || (\v == 29) || (\v == 30)
	.else
	push $0
	.endif
	push $\v
	jmp lunavm_isr_common
.endm

.macro ISR_ADDR v
#ifdef __x86_64__
	.quad lunavm_isr_\v
#else
	.long lunavm_isr_\v
#endif
.endm

	.text
	.set vec, 0
	.rept 256
	ISR_STUB %vec
	.set vec, vec + 1
	.endr

#ifdef __x86_64__
	.code64
lunavm_isr_common:
	push %rax
	push %rbx
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %rbp
	push %r8
	push %r9
	push %r10
	push %r11
	push %r12
	push %r13
	push %r14
	push %r15
	/* The CPU aligned RSP to 16 before its pushes: 22 quadwords keep it so. */
	mov %rsp, %rdi
	cld
	call lunavm_irq_dispatch
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rbp
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	pop %rbx
	pop %rax
	add $16, %rsp		/* vector, error code */
	iretq
#else
	.code32
lunavm_isr_common:
	pushal
	mov %esp, %eax
	cld
	push %eax
	call lunavm_irq_dispatch
	add $4, %esp
	popal
	add $8, %esp		/* vector, error code */
	iret
#endif

	.section .rodata
	.balign 8
	.globl lunavm_isr_stubs
lunavm_isr_stubs:
	.set vec, 0
	.rept 256
	ISR_ADDR %vec
	.set vec, vec + 1
	.endr

	.section .note.GNU-stack, "", @progbits
