/*
 * tee_sim_switch.h: switching between the TA host's stack and the TA's stack without system calls.
 *
 * swapcontext() saves and restores the signal mask, one rt_sigprocmask system call each way, and
 * getcontext/makecontext add a third per entry point; on a virtual machine each costs about 0.2 us, a
 * noticeable share of a simulator round trip. The TA host never changes its signal mask, so on x86-64
 * and AArch64 a switch here saves only what the C ABI says a callee must keep (callee-saved registers,
 * the floating-point control registers) on the current stack, stores the stack pointer and loads the
 * other one. Elsewhere (or with TEE_SIM_UCONTEXT defined) it falls back to ucontext.
 *
 * Include once (the assembly defines a symbol). Usage:
 *   tee_sim_stack_start(&ta, base, size, entry);  entry runs on [base, base + size) at the first switch
 *   tee_sim_stack_switch(&host, &ta);             save here into host, continue where ta left off
 * entry must never return: it switches back instead.
 */
#ifndef TEE_SIM_SWITCH_H
#define TEE_SIM_SWITCH_H

#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__aarch64__)) && !defined(TEE_SIM_UCONTEXT)

struct tee_sim_stack {
	void *sp;
};

/* Save the callee-saved state on the current stack and its pointer into *save; resume at `to`. */
void tee_sim_switch_to(void **save, void *to);

#if defined(__x86_64__)
__asm__(
	".text\n"
	".globl tee_sim_switch_to\n"
	".hidden tee_sim_switch_to\n"
	".type tee_sim_switch_to, @function\n"
	"tee_sim_switch_to:\n"
	"	pushq %rbp\n"
	"	pushq %rbx\n"
	"	pushq %r12\n"
	"	pushq %r13\n"
	"	pushq %r14\n"
	"	pushq %r15\n"
	"	subq $8, %rsp\n"
	"	stmxcsr (%rsp)\n"
	"	fnstcw 4(%rsp)\n"
	"	movq %rsp, (%rdi)\n"
	"	movq %rsi, %rsp\n"
	"	ldmxcsr (%rsp)\n"
	"	fldcw 4(%rsp)\n"
	"	addq $8, %rsp\n"
	"	popq %r15\n"
	"	popq %r14\n"
	"	popq %r13\n"
	"	popq %r12\n"
	"	popq %rbx\n"
	"	popq %rbp\n"
	"	ret\n"
	".size tee_sim_switch_to, .-tee_sim_switch_to\n");

/* The frame tee_sim_switch_to pops, as 64-bit words from the saved stack pointer up. */
#define TEE_SIM_FRAME_WORDS 9 /* mxcsr|fcw, r15, r14, r13, r12, rbx, rbp, return address, padding */

static inline int tee_sim_stack_start(struct tee_sim_stack *s, void *base, size_t size,
				      void (*entry)(void))
{
	uint64_t *f = (uint64_t *)(((uintptr_t)base + size) & ~(uintptr_t)15) - TEE_SIM_FRAME_WORDS;
	uint32_t mxcsr;
	uint16_t fcw;

	__asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
	__asm__ volatile("fnstcw %0" : "=m"(fcw));
	memset(f, 0, TEE_SIM_FRAME_WORDS * sizeof(*f));
	f[0] = (uint64_t)mxcsr | (uint64_t)fcw << 32;
	f[7] = (uint64_t)(uintptr_t)entry; /* `ret` lands there with the stack as after a call */
	s->sp = f;
	return 0;
}

#else /* __aarch64__ */
__asm__(
	".text\n"
	".globl tee_sim_switch_to\n"
	".hidden tee_sim_switch_to\n"
	".type tee_sim_switch_to, %function\n"
	"tee_sim_switch_to:\n"
	"	sub sp, sp, #176\n"
	"	stp x19, x20, [sp, #0]\n"
	"	stp x21, x22, [sp, #16]\n"
	"	stp x23, x24, [sp, #32]\n"
	"	stp x25, x26, [sp, #48]\n"
	"	stp x27, x28, [sp, #64]\n"
	"	stp x29, x30, [sp, #80]\n"
	"	stp d8, d9, [sp, #96]\n"
	"	stp d10, d11, [sp, #112]\n"
	"	stp d12, d13, [sp, #128]\n"
	"	stp d14, d15, [sp, #144]\n"
	"	mrs x9, fpcr\n"
	"	str x9, [sp, #160]\n"
	"	mov x9, sp\n"
	"	str x9, [x0]\n"
	"	mov sp, x1\n"
	"	ldr x9, [sp, #160]\n"
	"	msr fpcr, x9\n"
	"	ldp d14, d15, [sp, #144]\n"
	"	ldp d12, d13, [sp, #128]\n"
	"	ldp d10, d11, [sp, #112]\n"
	"	ldp d8, d9, [sp, #96]\n"
	"	ldp x29, x30, [sp, #80]\n"
	"	ldp x27, x28, [sp, #64]\n"
	"	ldp x25, x26, [sp, #48]\n"
	"	ldp x23, x24, [sp, #32]\n"
	"	ldp x21, x22, [sp, #16]\n"
	"	ldp x19, x20, [sp, #0]\n"
	"	add sp, sp, #176\n"
	"	ret\n"
	".size tee_sim_switch_to, .-tee_sim_switch_to\n");

#define TEE_SIM_FRAME_WORDS 22 /* x19..x30, d8..d15, fpcr, padding */

static inline int tee_sim_stack_start(struct tee_sim_stack *s, void *base, size_t size,
				      void (*entry)(void))
{
	uint64_t *f = (uint64_t *)(((uintptr_t)base + size) & ~(uintptr_t)15) - TEE_SIM_FRAME_WORDS;
	uint64_t fpcr;

	__asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
	memset(f, 0, TEE_SIM_FRAME_WORDS * sizeof(*f));
	f[11] = (uint64_t)(uintptr_t)entry; /* x30: `ret` lands there */
	f[20] = fpcr;
	s->sp = f;
	return 0;
}
#endif

static inline void tee_sim_stack_switch(struct tee_sim_stack *save, struct tee_sim_stack *to)
{
	tee_sim_switch_to(&save->sp, to->sp);
}

#else /* other architectures: ucontext */
#include <ucontext.h>

struct tee_sim_stack {
	ucontext_t uc;
};

/* 0 on success (as the assembly versions, which cannot fail). */
static inline int tee_sim_stack_start(struct tee_sim_stack *s, void *base, size_t size,
				      void (*entry)(void))
{
	if (getcontext(&s->uc) != 0)
		return -1;
	s->uc.uc_stack.ss_sp = base;
	s->uc.uc_stack.ss_size = size;
	s->uc.uc_link = NULL;
	makecontext(&s->uc, entry, 0);
	return 0;
}

static inline void tee_sim_stack_switch(struct tee_sim_stack *save, struct tee_sim_stack *to)
{
	swapcontext(&save->uc, &to->uc);
}
#endif

#endif /* TEE_SIM_SWITCH_H */
