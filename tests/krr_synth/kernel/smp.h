/* The two-vCPU build of the synthetic kernel (cc -DKRR_SMP): KRR's exec lock and the agent's
 * SMP entry points (krr-spec 4, 5; the guest patch's rr_serialize.c and kernel_rr.c). */
#define CTX_SYSCALL 0
#define CTX_INTR 1
#define CTX_IDLE 3
#define CTX_LOCKWAIT 4
#define CTX_EXCP 5
#define KVM_INSTRUCTION_SYNC 20
#define SYS_XCALL 3
#define SYS_IDLE 4
#define SMP_NR_CPUS 2

#ifndef __ASSEMBLER__

struct pt_regs;
/* smp_processor_id(): the per-CPU area's `cpu` field (GS base). */
#define KRR_CPU_ID()                                                     \
	({                                                               \
		unsigned int c__;                                        \
		asm volatile("movl %%gs:16, %0" : "=r"(c__));            \
		c__;                                                     \
	})
/* The spin count of the acquisition the event being recorded follows. */
extern volatile unsigned long krr_record_spin;
#define KRR_SPIN() krr_record_spin

long rr_do_acquire_smp_exec(int disable_irq, int cpu_id, int ctx);
void rr_release_smp_exec(int ctx);
void rr_handle_syscall(struct pt_regs *regs);
void rr_handle_exception(struct pt_regs *regs, int vector, int error_code, unsigned long cr2);
void rr_handle_irqentry(void);
int krr_cpu_idle(void);
unsigned long krr_smp_syscall(unsigned long nr, struct pt_regs *regs);
#endif
