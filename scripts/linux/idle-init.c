/*
 * /init of lunavm's "idle" initramfs: for kernel-mode scenarios.
 *
 * It makes no system call at all, so it needs nothing from the guest's SYSCALL
 * path: the kernel has printed "Run /init as init process", starts this, and
 * stays up (timer interrupts, softirqs, KUnit output, device interrupts) while
 * this spins in user mode. Built with `gcc -static -nostdlib` (no libc, no
 * start files) by build-initramfs.sh.
 */

void _start(void) __attribute__((noreturn));

void _start(void)
{
	for (;;)
		__asm__ volatile("pause" ::: "memory");
}
