/* What every file of the synthetic kernel shares: Linux's integer types and pt_regs, and the
 * small helpers (ring entry stores, interrupt masking, MSR writes, port input, the checksum
 * fold). */
#ifndef KRR_SYNTH_COMMON_H
#define KRR_SYNTH_COMMON_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long u64;

/* Linux's pt_regs. */
struct pt_regs {
	u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di;
	u64 orig_ax, ip, cs, flags, sp, ss;
};

/* The results of everything the kernel was given (kernel.c). */
extern volatile u64 krr_checksum;

static inline void put64(u8 *p, u64 off, u64 v) { __builtin_memcpy(p + off, &v, 8); }
static inline void put32(u8 *p, u64 off, u32 v) { __builtin_memcpy(p + off, &v, 4); }
static inline u64 get64(const u8 *p, u64 off)
{
	u64 v;
	__builtin_memcpy(&v, p + off, 8);
	return v;
}

static inline u64 irq_save(void)
{
	u64 f;
	asm volatile("pushfq; popq %0; cli" : "=r"(f)::"memory");
	return f;
}
static inline void irq_restore(u64 f)
{
	if (f & 0x200)
		asm volatile("sti" ::: "memory");
}
static inline void wrmsr(u32 msr, u64 v)
{
	asm volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}
static inline u8 inb(u16 port)
{
	u8 v;
	asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u64 mix(u64 h, u64 v) { return (h ^ v) * 0x100000001b3UL + (h >> 29); }

/* Fold a result into the checksum with interrupts off (the timer handler folds too). */
static void fold(u64 v)
{
	u64 f = irq_save();
	krr_checksum = mix(krr_checksum, v);
	irq_restore(f);
}

#endif
