/* The two-vCPU build of the synthetic kernel (cc -DKRR_SMP; krr-spec 4 and 5): the guest
 * agent's SMP entry points (rr_handle_syscall / rr_handle_exception / rr_handle_irqentry of
 * the guest patch's kernel_rr.c: take the exec lock, then record with the vCPU id and the
 * spin count), its debug RELEASE event, the second vCPU's per-CPU data and bring-up, and
 * kernel code that waits for the other CPU: a spinlock whose slow path releases the exec lock
 * around the wait (qspinlock's CTX_LOCKWAIT hook) and a cross-call that waits for the other
 * CPU's acknowledgement the same way (csd_lock_wait's hook). */
#include "layout.h"
#include "common.h"
#include "smp.h"

struct percpu {
	u64 user_rsp;
	u64 top_of_stack;
	u64 cpu;
};

extern u64 gdt[10];
extern u8 krr_gdt1[80];
extern u8 krr_idt[256 * 16];
extern volatile u32 krr_record_release;
u8 *rr_alloc_entry(i32 type, u64 size);
void rr_record_syscall(struct pt_regs *regs);
void rr_record_exception(struct pt_regs *regs, i32 vector, i32 error_code, u64 cr2);
void entry_SYSCALL_64(void);

volatile u64 krr_record_spin;
struct percpu krr_percpu1;
u8 krr_stack1[16384] __attribute__((aligned(16)));
asm(".globl krr_stack1_top\n.set krr_stack1_top, krr_stack1 + 16384");
u8 krr_tss1[104] __attribute__((aligned(16)));

/* The data the two CPUs share: a spinlock, what it protects, and the cross-call words. */
struct qspinlock {
	volatile u32 locked;
};
struct qspinlock krr_shared_lock;
volatile u64 krr_shared;
volatile u64 krr_xcall_seq;
volatile u64 krr_xcall_req[SMP_NR_CPUS];
volatile u64 krr_xcall_ack[SMP_NR_CPUS];
volatile u64 krr_lock_waits;


long rr_acquire_smp_exec(int ctx, int disable_irq)
{
	return rr_do_acquire_smp_exec(disable_irq, (int)KRR_CPU_ID(), ctx);
}

/* RELEASE: the guest-form entry (1072 bytes) with type and id; the agent's debug event. */
__attribute__((noinline)) void rr_record_release(int cpu_id)
{
	u8 *e = rr_alloc_entry(11, 1072);
	if (!e)
		return;
	put32(e, 0, 11);
	put32(e, 4, (u32)cpu_id);
}

/* INTERRUPT from = 3: the vCPU's slot (KVM filled it at injection), then id, from,
 * spin_count. */
static void rr_record_irqentry(int cpu_id, u64 spin)
{
	u8 *e = rr_alloc_entry(0, 192);
	if (!e)
		return;
	__builtin_memcpy(e, (const void *)(RING_VA + 56 + 192 * (u64)cpu_id), 192);
	put32(e, 0, (u32)cpu_id);
	put32(e, 16, 3);
	put64(e, 24, spin);
}

/* queued_spin_lock: the fast path, else the slow path with the exec lock released around
 * it (CTX_LOCKWAIT: re-acquiring it syncs the count with hypercall 20). */
static void krr_spin_lock(struct qspinlock *l)
{
	u32 zero = 0;
	u64 f;
	if (__atomic_compare_exchange_n(&l->locked, &zero, 1, 0, __ATOMIC_ACQUIRE,
					__ATOMIC_RELAXED))
		return;
	f = irq_save();
	krr_lock_waits++;
	rr_release_smp_exec(CTX_LOCKWAIT);
	for (;;) {
		zero = 0;
		if (__atomic_compare_exchange_n(&l->locked, &zero, 1, 0, __ATOMIC_ACQUIRE,
						__ATOMIC_RELAXED))
			break;
		asm volatile("pause");
	}
	rr_acquire_smp_exec(CTX_LOCKWAIT, 1);
	irq_restore(f);
}

static void krr_spin_unlock(struct qspinlock *l)
{
	__atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}

/* Kernel work at every entry from user mode: acknowledge the other CPU's cross-call, then
 * update the shared data under the spinlock (which the caller still holds: a lock wait). */
static void krr_smp_entry_work(void)
{
	u32 me = KRR_CPU_ID();
	u64 t = krr_xcall_req[me];
	if (!t || krr_xcall_ack[me] == t)
		return;
	krr_xcall_ack[me] = t;
	krr_spin_lock(&krr_shared_lock);
	krr_shared = mix(krr_shared, t * 2 + me);
	krr_spin_unlock(&krr_shared_lock);
}

static void acquired(long spin)
{
	krr_record_spin = spin < 0 ? 0 : (u64)spin;
}

void rr_handle_syscall(struct pt_regs *regs)
{
	u64 f = irq_save();
	acquired(rr_do_acquire_smp_exec(0, (int)KRR_CPU_ID(), CTX_SYSCALL));
	rr_record_syscall(regs);
	krr_smp_entry_work();
	irq_restore(f);
}

void rr_handle_exception(struct pt_regs *regs, int vector, int error_code, unsigned long cr2)
{
	u64 f = irq_save();
	acquired(rr_do_acquire_smp_exec(0, (int)KRR_CPU_ID(), CTX_EXCP));
	rr_record_exception(regs, vector, error_code, cr2);
	if (regs->cs & 3)
		krr_smp_entry_work();
	irq_restore(f);
}

void rr_handle_irqentry(void)
{
	u64 f = irq_save();
	int cpu = (int)KRR_CPU_ID();
	long spin = rr_do_acquire_smp_exec(0, cpu, CTX_INTR);
	if (spin >= 0) {
		rr_record_irqentry(cpu, (u64)spin);
		krr_smp_entry_work();
	}
	irq_restore(f);
}

/* xcall(): hold the spinlock, ask the other CPU for an acknowledgement and wait for it with
 * the exec lock released (csd_lock_wait), then fold the shared data. */
static u64 sys_xcall(void)
{
	u32 me = KRR_CPU_ID(), other = 1 - me;
	u64 token, f, r;
	krr_spin_lock(&krr_shared_lock);
	token = ++krr_xcall_seq;
	krr_xcall_req[other] = token;
	f = irq_save();
	rr_release_smp_exec(CTX_LOCKWAIT);
	while (krr_xcall_ack[other] != token)
		asm volatile("pause");
	rr_acquire_smp_exec(CTX_LOCKWAIT, 1);
	irq_restore(f);
	krr_shared = mix(krr_shared, token + me);
	r = krr_shared;
	krr_spin_unlock(&krr_shared_lock);
	f = irq_save();
	krr_checksum = mix(krr_checksum, r);
	irq_restore(f);
	return r & 0xffff;
}

/* is_idle_task(current): the CPU is in idle()'s halt (irqentry_enter records its
 * interrupts). */
volatile u64 krr_idle[SMP_NR_CPUS];

int krr_cpu_idle(void)
{
	return krr_idle[KRR_CPU_ID()] != 0;
}

/* idle(): default_idle_call's hooks around the halt (CTX_IDLE; no INST_SYNC: the interrupt
 * that ends the halt takes the lock first, so the re-acquisition finds it held). */
static u64 sys_idle(void)
{
	u32 me = KRR_CPU_ID();
	u64 f = irq_save();
	krr_idle[me] = 1;
	rr_release_smp_exec(CTX_IDLE);
	asm volatile("sti; hlt" ::: "memory"); /* arch_cpu_idle(): safe_halt() */
	rr_acquire_smp_exec(CTX_IDLE, 1);
	asm volatile("cli" ::: "memory");
	krr_idle[me] = 0;
	irq_restore(f);
	return krr_shared & 0xffff;
}

unsigned long krr_smp_syscall(unsigned long nr, struct pt_regs *regs)
{
	(void)regs;
	if (nr == SYS_XCALL)
		return sys_xcall();
	if (nr == SYS_IDLE)
		return sys_idle();
	return -38UL;
}

/* The second CPU's GDT: the first's descriptors, its own TSS (before it loads the GDT). */
void krr_ap_gdt(void)
{
	u64 tss = (u64)krr_tss1;
	u64 *g = (u64 *)krr_gdt1;
	int i;
	for (i = 0; i < 8; i++)
		g[i] = gdt[i];
	g[8] = 103 | (tss & 0xffffff) << 16 | 0x89UL << 40 | ((tss >> 24) & 0xff) << 56;
	g[9] = tss >> 32;
}

/* The second CPU's setup (its bring-up routine calls it on its own stack). */
void krr_ap_main(void)
{
	u64 top = (u64)krr_stack1 + sizeof(krr_stack1);
	struct {
		unsigned short limit;
		u64 base;
	} __attribute__((packed)) idtr = {256 * 16 - 1, (u64)krr_idt};
	put64(krr_tss1, 4, top);
	krr_tss1[102] = 104;
	asm volatile("ltr %w0" ::"r"(0x40));
	asm volatile("lidt %0" ::"m"(idtr));
	krr_percpu1.top_of_stack = top;
	krr_percpu1.cpu = 1;
	wrmsr(0xc0000081, 0x0023001000000000UL);
	wrmsr(0xc0000082, (u64)entry_SYSCALL_64);
	wrmsr(0xc0000084, 0x47700);
	wrmsr(0xc0000101, (u64)&krr_percpu1);
	wrmsr(0xc0000102, 0);
}
