/* A small guest kernel with KRR's guest agent (krr-spec 4), for synthetic recordings: three
 * system calls, demand paging of user pages, a timer interrupt, and every input class KRR's
 * agent records (SYSCALL, EXCEPTION, CFU, GFU, PTE, RDTSC, RDSEED) or KVM appends (IO_IN,
 * INTERRUPT). Every input is folded into `krr_checksum`, so a wrong input in a replay shows
 * in the final state. The agent's functions carry KRR's names and argument registers. */
#include "layout.h"
#include "common.h"
#ifdef KRR_SMP
#include "smp.h"
#else
#define KRR_CPU_ID() 0
#define KRR_SPIN() 0
#define rr_handle_syscall rr_record_syscall
#define rr_handle_exception rr_record_exception
#endif

const char linux_banner[] =
    "Linux version 6.1.0-krr-synth (krr@tests) (gcc) #1 SMP PREEMPT_DYNAMIC\n";

/* The results of everything the kernel was given. */
volatile u64 krr_checksum = 0x6b7272;
volatile u64 krr_jiffies;
volatile u64 krr_syscalls;
volatile u64 krr_faults;
volatile u64 krr_irq_exits;
/* The ring's size (ivshmem BAR2), as the PCI BAR says; the recorder sets it before boot. */
volatile u64 krr_ring_size = 2UL << 20;

struct percpu {
	u64 user_rsp;
	u64 top_of_stack;
#ifdef KRR_SMP
	u64 cpu;
#endif
};
struct percpu krr_percpu;
u8 krr_stack[16384] __attribute__((aligned(16)));
#define krr_stack_top_addr ((u64)krr_stack + sizeof(krr_stack))
asm(".globl krr_stack_top\n.set krr_stack_top, krr_stack + 16384");
u8 krr_tss[104] __attribute__((aligned(16)));
u8 krr_idt[256 * 16] __attribute__((aligned(16)));
u8 krr_kbuf[4096];
extern u64 gdt_tss[2];

void *memcpy(void *d, const void *s, u64 n)
{
	u8 *a = d;
	const u8 *b = s;
	while (n--)
		*a++ = *b++;
	return d;
}

void *memset(void *d, int c, u64 n)
{
	u8 *a = d;
	while (n--)
		*a++ = (u8)c;
	return d;
}

/* ---- the guest agent: the ring (kvm_ivshmem.c) ---- */

struct rr_header {
	u32 current_pos, total_pos, header_size, entry_size, rr_enabled, pad;
	u64 current_byte, total_size, rotated_bytes;
};
#define RING ((volatile struct rr_header *)RING_VA)

void kvm_hypercall0(u64 nr);

/* Allocate an entry (4-byte type + `size` payload bytes) at `current_byte`; hypercall 102
 * first when it would not fit. NULL while recording is off. */
__attribute__((noinline)) u8 *rr_alloc_entry(i32 type, u64 size)
{
	u64 f;
	u8 *p;
	if (!RING->rr_enabled)
		return 0;
	f = irq_save();
	if (RING->current_byte + 4 + size >= RING->total_size)
		kvm_hypercall0(102);
	p = (u8 *)RING_VA + RING->current_byte;
	put32(p, 0, (u32)type);
	RING->current_byte += 4 + size;
	RING->current_pos++;
	irq_restore(f);
	return p + 4;
}

void kvm_ivshmem_init(void)
{
	RING->header_size = 4096;
	RING->entry_size = 8192;
	RING->total_size = krr_ring_size - 4096;
	RING->total_pos = (u32)((krr_ring_size - 4096) / 8192);
	RING->current_byte = 4096;
	RING->current_pos = 0;
	RING->rotated_bytes = 0;
	RING->rr_enabled = 0; /* QEMU's rr_record sets it */
	*(volatile i32 *)(RING_VA + 48) = -1;
}

/* ---- the guest agent: recording functions (kernel_rr.c) ---- */

static void put_regs(u8 *e, const struct pt_regs *r, int with_ip)
{
	put64(e, 0, r->ax);
	put64(e, 8, r->bx);
	put64(e, 16, r->cx);
	put64(e, 24, r->dx);
	put64(e, 32, r->si);
	put64(e, 40, r->di);
	put64(e, 48, r->sp);
	put64(e, 56, r->bp);
	put64(e, 64, r->r8);
	put64(e, 72, r->r9);
	put64(e, 80, r->r10);
	put64(e, 88, r->r11);
	put64(e, 96, r->r12);
	put64(e, 104, r->r13);
	put64(e, 112, r->r14);
	put64(e, 120, r->r15);
	if (with_ip) {
		put64(e, 128, r->ip);
		put64(e, 136, r->flags);
	}
}

/* SYSCALL: id, regs (rax = orig_ax; not rip/rflags), cr3, spin_count; the GS bases are
 * left as the ring had them, as KRR's agent does. */
__attribute__((noinline)) void rr_record_syscall(struct pt_regs *regs)
{
	u64 cr3;
	u8 *e = rr_alloc_entry(2, 184);
	if (!e)
		return;
	asm volatile("movq %%cr3, %0" : "=r"(cr3));
	put32(e, 0, KRR_CPU_ID());
	put_regs(e + 8, regs, 0);
	put64(e + 8, 0, regs->orig_ax);
	put64(e, 168, cr3);
	put64(e, 176, KRR_SPIN());
}

/* EXCEPTION: id, vector, error code, cr2, regs with rip and rflags, spin_count (not cr3,
 * not inst_cnt). */
__attribute__((noinline)) void rr_record_exception(struct pt_regs *regs, i32 vector,
						   i32 error_code, u64 cr2)
{
	u8 *e = rr_alloc_entry(1, 192);
	if (!e)
		return;
	put32(e, 0, KRR_CPU_ID());
	put32(e, 4, (u32)vector);
	put32(e, 8, (u32)error_code);
	put64(e, 16, cr2);
	put_regs(e + 32, regs, 1);
	put64(e, 176, KRR_SPIN());
}

/* copy_from_user's entry: a CFU of n + 1 bytes, filled by rr_cfu_end. */
__attribute__((noinline)) u8 *rr_cfu_begin(const void *from, void *to, u64 n)
{
	u8 *e = rr_alloc_entry(4, 48 + n + 1);
	if (!e)
		return 0;
	put32(e, 0, 0);
	put64(e, 8, (u64)from);
	put64(e, 16, (u64)to);
	put64(e, 24, n + 1);
	return e;
}

__attribute__((noinline)) void rr_cfu_end(u8 *e, const void *to, u64 copied)
{
	if (e)
		memcpy(e + 48, to, copied);
}

__attribute__((noinline)) u8 *rr_gfu_begin(const void *ptr, i32 size, i32 align)
{
	u8 *e;
#ifndef KRR_SMP
	if (!align) /* a look-behind read the agent does not record (devices.c) */
		return 0;
#else
	(void)align;
#endif
	e = rr_alloc_entry(8, 32);
	if (!e)
		return 0;
	put32(e, 0, 0);
	put64(e, 16, (u64)ptr);
	put32(e, 24, (u32)size);
	return e;
}

__attribute__((noinline)) void rr_record_gfu_end(u8 *e, u64 val)
{
	if (e)
		put64(e, 8, val);
}

static void record_pte(const u64 *ptep, u64 val)
{
	u8 *e;
	if (!(val & PTE_US))
		return;
	e = rr_alloc_entry(14, 32);
	if (!e)
		return;
	put32(e, 0, 0);
	put64(e, 8, val);
	put64(e, 16, (u64)ptep);
}

__attribute__((noinline)) u64 rr_read_pte(u64 *ptep)
{
	u64 v = *(volatile u64 *)ptep;
	record_pte(ptep, v);
	return v;
}

__attribute__((noinline)) u64 rr_read_pte_once(u64 *ptep)
{
	u64 v = *(volatile u64 *)ptep;
	record_pte(ptep, v);
	return v;
}

__attribute__((noinline)) u64 rr_record_pte_clear(u64 *ptep)
{
	u64 v = __atomic_exchange_n(ptep, 0, __ATOMIC_SEQ_CST);
	record_pte(ptep, v);
	return v;
}

/* kmap_local_page of an anonymous page: this kernel has none; KRR's symbol must exist. */
__attribute__((noinline)) void rr_record_page_map(void *page, u64 addr)
{
	u8 *e = rr_alloc_entry(4, 48 + 4096);
	if (!e)
		return;
	put32(e, 0, 0);
	put64(e, 8, addr);
	put64(e, 16, 0);
	put64(e, 24, 4096);
	memcpy(e + 48, page, 4096);
}

/* rdtsc(): IRQs off, the entry allocated before RDTSC (KVM's RDTSC exit fills id, inst_cnt
 * and rip), the value stored and read back. */
__attribute__((noinline)) u64 rr_rdtsc(void)
{
	u32 lo, hi;
	u64 v, f = irq_save();
	u8 *e = rr_alloc_entry(6, 32);
	if (e)
		put32(e, 0, 0);
	asm volatile(".globl krr_rdtsc_insn\nkrr_rdtsc_insn: rdtsc" : "=a"(lo), "=d"(hi));
	v = (u64)hi << 32 | lo;
	if (e) {
		put64(e, 8, v);
		v = get64(e, 8);
	}
	irq_restore(f);
	return v;
}

__attribute__((noinline)) void rr_record_rdseed(u64 val)
{
	u8 *e = rr_alloc_entry(10, 32);
	if (!e)
		return;
	put32(e, 0, 0);
	put64(e, 8, val);
}

static u64 rdseed_long(void)
{
	u64 v;
	u8 ok;
	asm volatile("rdseed %0; setc %1" : "=r"(v), "=qm"(ok)::"cc");
	if (ok)
		rr_record_rdseed(v);
	return ok ? v : 0;
}

/* ---- the kernel ---- */

u64 copy_user_generic(void *to, const void *from, u64 n);

static u64 copy_from_user(void *to, u64 from, u64 n)
{
	u8 *e = rr_cfu_begin((const void *)from, to, n);
	u64 left = copy_user_generic(to, (const void *)from, n);
	rr_cfu_end(e, to, n - left);
	return left;
}

static u64 get_user_u64(u64 ptr)
{
	u8 *e = rr_gfu_begin((const void *)ptr, 8, 8);
	u64 v = *(volatile u64 *)ptr;
	rr_record_gfu_end(e, v);
	return v;
}

static u64 *user_pte(u64 addr)
{
	return (u64 *)(DIRECT_MAP + USER_PT_PA) + ((addr >> 12) & 511);
}

/* work(buf, n, ptr): copy n user bytes, get_user a word, read the CMOS data port, the TSC
 * and a random seed; returns a digest of it all. */
static u64 sys_work(u64 buf, u64 n, u64 ptr)
{
	u64 h = 0xcbf29ce484222325UL, i, left;
	if (n > sizeof(krr_kbuf))
		n = sizeof(krr_kbuf);
	left = copy_from_user(krr_kbuf, buf, n);
	for (i = 0; i < n - left; i++)
		h = mix(h, krr_kbuf[i]);
	h = mix(h, get_user_u64(ptr));
	h = mix(h, inb(0x71));
	h = mix(h, rr_rdtsc());
	h = mix(h, rdseed_long());
	fold(h);
	return h & 0xffffffff;
}

/* unmap(addr): drop a demand-mapped page (its PTE, with the A/D bits user mode set, is
 * recorded as it is cleared). */
static u64 sys_unmap(u64 addr)
{
	u64 old;
	if (addr < FAULT_BASE || addr >= FAULT_BASE + FAULT_PAGES * 4096)
		return -22UL;
	old = rr_record_pte_clear(user_pte(addr));
	asm volatile("invlpg (%0)" ::"r"(addr) : "memory");
	fold(old & 0xfff);
	return old & 0xfff;
}

/* probe(addr): a user page's PTE flags (like mincore/pagemap reading a PTE). */
static u64 sys_probe(u64 addr)
{
	u64 v = rr_read_pte_once(user_pte(addr));
	fold(v & 0xfff);
	return v & 0xfff;
}

__attribute__((noinline)) void irqentry_exit(struct pt_regs *regs)
{
	(void)regs;
	krr_irq_exits++;
#ifdef KRR_SMP
	if (regs->cs & 3)
		rr_release_smp_exec(CTX_INTR);
#endif
}

u64 krr_devices_syscall(u64 nr, struct pt_regs *regs); /* devices.c */
void krr_devices_init(void);

void do_syscall_64(struct pt_regs *regs, u64 nr)
{
	u64 ret;
	rr_handle_syscall(regs);
	krr_syscalls++;
	asm volatile("sti" ::: "memory");
	switch (nr) {
	case SYS_WORK:
		ret = sys_work(regs->di, regs->si, regs->dx);
		break;
	case SYS_UNMAP:
		ret = sys_unmap(regs->di);
		break;
	case SYS_PROBE:
		ret = sys_probe(regs->di);
		break;
	default:
#ifdef KRR_SMP
		ret = krr_smp_syscall(nr, regs);
#else
		ret = krr_devices_syscall(nr, regs);
#endif
	}
	asm volatile("cli" ::: "memory");
	regs->ax = ret;
#ifdef KRR_SMP
	rr_release_smp_exec(CTX_SYSCALL);
#endif
}

static void die(void)
{
	for (;;)
		asm volatile("cli; hlt");
}

void exc_page_fault(struct pt_regs *regs, u64 error_code)
{
	u64 cr2, *pte;
	asm volatile("movq %%cr2, %0" : "=r"(cr2));
	rr_handle_exception(regs, 14, (i32)error_code, cr2);
	krr_faults++;
	if (cr2 >= FAULT_BASE && cr2 < FAULT_BASE + FAULT_PAGES * 4096) {
		u64 i = (cr2 - FAULT_BASE) >> 12;
		pte = user_pte(cr2);
		if (!(rr_read_pte(pte) & PTE_P)) {
			memset((void *)(DIRECT_MAP + POOL_PA + i * 4096), 0, 4096);
			*pte = (POOL_PA + i * 4096) | PTE_P | PTE_RW | PTE_US;
		}
		krr_checksum = mix(krr_checksum, cr2);
	} else if (regs->cs & 3) {
		/* SIGSEGV: back to the user's main loop. */
		regs->ip = USER_CODE;
		krr_checksum = mix(krr_checksum, ~cr2);
	} else {
		die();
	}
	irqentry_exit(regs);
}

void exc_general_protection(struct pt_regs *regs, u64 error_code)
{
	rr_handle_exception(regs, 13, (i32)error_code, 0);
	if (!(regs->cs & 3))
		die();
	regs->ip = USER_CODE;
	krr_checksum = mix(krr_checksum, regs->ax ^ 0x6770);
	irqentry_exit(regs);
}

void sysvec_apic_timer_interrupt(struct pt_regs *regs)
{
#ifdef KRR_SMP
	if ((regs->cs & 3) || krr_cpu_idle())
		rr_handle_irqentry();
#endif
	krr_jiffies++;
	krr_checksum = mix(krr_checksum, inb(0x61) + (krr_jiffies << 8));
	*(volatile u32 *)(APIC_VA + 0xb0) = 0; /* EOI */
	irqentry_exit(regs);
}

void asm_exc_page_fault(void);
void asm_exc_general_protection(void);
void asm_sysvec_apic_timer_interrupt(void);
void entry_SYSCALL_64(void);

static void set_gate(int v, void (*fn)(void))
{
	u64 a = (u64)fn;
	u8 *g = krr_idt + v * 16;
	u64 lo = (a & 0xffff) | (0x10UL << 16) | (0x8eUL << 40) | ((a >> 16) & 0xffff) << 48;
	put64(g, 0, lo);
	put64(g, 8, a >> 32);
}

void krr_boot_main(void)
{
	u64 tss = (u64)krr_tss;
	struct {
		unsigned short limit;
		u64 base;
	} __attribute__((packed)) idtr = {sizeof(krr_idt) - 1, (u64)krr_idt};

	put64(krr_tss, 4, krr_stack_top_addr); /* RSP0 */
	krr_tss[102] = 104;		       /* no I/O bitmap */
	gdt_tss[0] = 103 | (tss & 0xffffff) << 16 | 0x89UL << 40 | ((tss >> 24) & 0xff) << 56;
	gdt_tss[1] = tss >> 32;
	asm volatile("ltr %w0" ::"r"(0x40));
	set_gate(13, asm_exc_general_protection);
	set_gate(14, asm_exc_page_fault);
	set_gate(TIMER_VECTOR, asm_sysvec_apic_timer_interrupt);
	asm volatile("lidt %0" ::"m"(idtr));
	krr_percpu.top_of_stack = krr_stack_top_addr;
	wrmsr(0xc0000081, 0x0023001000000000UL); /* STAR */
	wrmsr(0xc0000082, (u64)entry_SYSCALL_64); /* LSTAR */
	wrmsr(0xc0000084, 0x47700);		  /* SFMASK: TF DF IF IOPL NT AC */
	wrmsr(0xc0000101, (u64)&krr_percpu);	  /* GS base */
	wrmsr(0xc0000102, 0);			  /* KERNEL_GS_BASE */
	kvm_ivshmem_init();
#ifndef KRR_SMP
	krr_devices_init(); /* the two-vCPU build has no devices */
#endif
}
