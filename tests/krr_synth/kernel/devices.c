/* The device scenario's drivers (krr_devices = 1): minimal, but driving the devices as Linux
 * does at the level a KRR replayer sees them: port and MMIO accesses, DMA buffers the device
 * fills, interrupts. Plus two memory-input cases of KRR's agent: a page mapped by the kernel
 * (kmap_local_page of an anonymous page: rr_record_page_map) and a word-at-a-time reader of a
 * user string (get_user per word, with a look-behind call KRR's GFU skip rule serves).
 *
 * - IDE (PIIX bus-master DMA): READ DMA of two sectors into two PRD buffers; the command
 *   register write that starts the engine is where QEMU appends DMA_DONE; the completion
 *   interrupt's handler reads the BMDMA and ATA status ports (IO_IN).
 * - e1000: a receive ring set up at boot; a `net` system call waits for the receive
 *   interrupt, whose handler reads ICR and STATUS (MMIO reads, which QEMU records), then
 *   consumes every descriptor the device wrote back and gives it back through RDT.
 * - NVMe: one I/O queue pair set up at boot; a `nvme` system call submits a READ, rings the
 *   SQ tail doorbell, waits for the MSI, consumes the completion queue entries (phase bit)
 *   and rings the CQ head doorbell. NVMe registers are never read (KRR does not record them).
 * Every datum a device delivered is folded into krr_checksum. */
#include "layout.h"
#include "common.h"
#include "devices.h"

#define PA(x) ((u64)(x) - KERNEL_VA + KERNEL_PA)

extern u8 krr_idt[256 * 16];
void irqentry_exit(struct pt_regs *regs);
u8 *rr_gfu_begin(const void *ptr, i32 size, i32 align);
void rr_record_gfu_end(u8 *e, u64 val);
void rr_record_page_map(void *page, u64 addr);

/* Set by the recorder before boot in the device scenario. */
volatile u64 krr_devices;
/* Device interrupts handled, and the last status words their handlers read. */
volatile u64 krr_device_irqs;

static u64 hash(const volatile u8 *p, u64 n, u64 h)
{
	u64 i;
	for (i = 0; i < n; i++)
		h = mix(h, p[i]);
	return h;
}

static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { asm volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u32 mmio_read32(u64 off) { return *(volatile u32 *)(DEV_VA + off); }
static inline void mmio_write32(u64 off, u32 v) { *(volatile u32 *)(DEV_VA + off) = v; }
static inline void eoi(void) { *(volatile u32 *)(APIC_VA + 0xb0) = 0; }

/* Wait (interrupts on) until an interrupt handler sets *flag. */
static void wait_for(volatile u64 *flag)
{
	while (!*flag)
		asm volatile("pause" ::: "memory");
}

/* ---- IDE ---- */

struct prd {
	u32 addr;
	u16 count;
	u16 flags;
};
struct prd krr_ide_prd[2] __attribute__((aligned(8)));
u8 krr_ide_buf0[512] __attribute__((aligned(512)));
u8 krr_ide_buf1[512] __attribute__((aligned(512)));
volatile u64 krr_ide_done;
volatile u64 krr_ide_status;

static u64 sys_disk(u64 lba)
{
	u64 h;
	krr_ide_done = 0;
	krr_ide_prd[0] = (struct prd){(u32)PA(krr_ide_buf0), 512, 0};
	krr_ide_prd[1] = (struct prd){(u32)PA(krr_ide_buf1), 512, 0x8000};
	outb(IDE_BM, 0); /* engine stopped */
	outl(IDE_BM + 4, (u32)PA(krr_ide_prd));
	outb(IDE_BM + 2, 6); /* clear interrupt and error */
	outb(ATA_BASE + 6, 0xe0 | ((lba >> 24) & 0xf));
	outb(ATA_BASE + 2, 2);
	outb(ATA_BASE + 3, (u8)lba);
	outb(ATA_BASE + 4, (u8)(lba >> 8));
	outb(ATA_BASE + 5, (u8)(lba >> 16));
	outb(ATA_BASE + 7, 0xc8); /* READ DMA */
	outb(IDE_BM, 0x09);	  /* start, device to memory */
	wait_for(&krr_ide_done);
	h = hash(krr_ide_buf0, 512, krr_ide_status);
	h = hash(krr_ide_buf1, 512, h);
	fold(h);
	return h & 0xffffffff;
}

void krr_ide_irq(struct pt_regs *regs)
{
	u8 bm = inb(IDE_BM + 2);
	outb(IDE_BM + 2, bm | 4); /* acknowledge */
	outb(IDE_BM, 0);	  /* stop the engine */
	krr_ide_status = (u64)bm << 8 | inb(ATA_BASE + 7);
	krr_ide_done = 1;
	krr_device_irqs++;
	eoi();
	irqentry_exit(regs);
}

/* ---- e1000 ---- */

struct rx_desc {
	u64 addr;
	u16 length;
	u16 csum;
	u8 status;
	u8 errors;
	u16 special;
};
struct rx_desc krr_rx_ring[E1000_RX_DESCS] __attribute__((aligned(128)));
u8 krr_rx_buf[E1000_RX_DESCS][E1000_RX_BUF] __attribute__((aligned(4096)));
u32 krr_rx_next;
volatile u64 krr_net_done;
volatile u64 krr_net_icr;

static void e1000_init(void)
{
	u32 i;
	for (i = 0; i < E1000_RX_DESCS; i++) {
		krr_rx_ring[i].addr = PA(krr_rx_buf[i]);
		krr_rx_ring[i].status = 0;
	}
	mmio_write32(E1000_RDBAL, (u32)PA(krr_rx_ring));
	mmio_write32(E1000_RDBAH, 0);
	mmio_write32(E1000_RDLEN, sizeof(krr_rx_ring));
	mmio_write32(E1000_RDH, 0);
	mmio_write32(E1000_RDT, E1000_RX_DESCS - 1);
	mmio_write32(E1000_IMS, 0x80); /* RXT0 */
	mmio_write32(E1000_RCTL, 2);   /* EN */
}

static u64 sys_net(void)
{
	u64 h = 0x6e6574, packets = 0;
	wait_for(&krr_net_done);
	krr_net_done = 0;
	while (krr_rx_ring[krr_rx_next].status & 1) { /* DD */
		struct rx_desc *d = &krr_rx_ring[krr_rx_next];
		u64 len = d->length > E1000_RX_BUF ? E1000_RX_BUF : d->length;
		h = hash(krr_rx_buf[krr_rx_next], len, mix(h, d->status | (u64)len << 8));
		d->status = 0;
		mmio_write32(E1000_RDT, krr_rx_next);
		krr_rx_next = (krr_rx_next + 1) % E1000_RX_DESCS;
		packets++;
	}
	h = mix(h, krr_net_icr);
	fold(h);
	return packets;
}

void krr_e1000_irq(struct pt_regs *regs)
{
	u32 icr = mmio_read32(E1000_ICR);
	u32 status = mmio_read32(E1000_STATUS);
	krr_net_icr = (u64)status << 32 | icr;
	krr_net_done = 1;
	krr_device_irqs++;
	eoi();
	irqentry_exit(regs);
}

/* ---- NVMe ---- */

struct nvme_sqe {
	u32 cdw0, nsid;
	u64 rsvd, mptr, prp1, prp2;
	u32 cdw10, cdw11, cdw12, cdw13, cdw14, cdw15;
};
struct nvme_cqe {
	u32 dw0, dw1;
	u16 sq_head, sq_id, cid, status;
};
struct nvme_sqe krr_nvme_sq[NVME_QUEUE] __attribute__((aligned(4096)));
struct nvme_cqe krr_nvme_cq[NVME_QUEUE] __attribute__((aligned(4096)));
u8 krr_nvme_buf[4096] __attribute__((aligned(4096)));
u32 krr_nvme_sq_tail, krr_nvme_cq_head, krr_nvme_phase = 1, krr_nvme_cid;
volatile u64 krr_nvme_done;

/* nvme(lba, poll): with poll set, a polled command (a queue without interrupts, as
 * io_uring's IOPOLL uses): the kernel spins on the completion queue's phase bit, so the
 * instruction at which the completion lands decides how long it spins. */
static u64 sys_nvme(u64 lba, u64 poll)
{
	u64 h = 0x6e766d65;
	struct nvme_sqe *s = &krr_nvme_sq[krr_nvme_sq_tail];
	krr_nvme_done = 0;
	*s = (struct nvme_sqe){0};
	s->cdw0 = 0x02 | (++krr_nvme_cid & 0xffff) << 16; /* READ */
	s->nsid = 1;
	s->prp1 = PA(krr_nvme_buf);
	s->cdw10 = (u32)lba;
	s->cdw11 = (u32)(lba >> 32);
	s->cdw12 = 7; /* 8 blocks of 512 */
	krr_nvme_sq_tail = (krr_nvme_sq_tail + 1) % NVME_QUEUE;
	mmio_write32(NVME_PA - DEV_PA + NVME_SQ1_TAIL, krr_nvme_sq_tail);
	if (poll)
		while ((((volatile struct nvme_cqe *)krr_nvme_cq)[krr_nvme_cq_head].status & 1) !=
		       krr_nvme_phase)
			asm volatile("pause" ::: "memory");
	else
		wait_for(&krr_nvme_done);
	while ((krr_nvme_cq[krr_nvme_cq_head].status & 1) == krr_nvme_phase) {
		struct nvme_cqe *c = &krr_nvme_cq[krr_nvme_cq_head];
		h = mix(h, c->dw0 ^ (u64)c->cid << 32 ^ (u64)c->status << 48 ^ (u64)c->sq_head << 16);
		if (++krr_nvme_cq_head == NVME_QUEUE) {
			krr_nvme_cq_head = 0;
			krr_nvme_phase ^= 1;
		}
	}
	mmio_write32(NVME_PA - DEV_PA + NVME_CQ1_HEAD, krr_nvme_cq_head);
	h = hash(krr_nvme_buf, sizeof(krr_nvme_buf), h);
	fold(h);
	return h & 0xffffffff;
}

void krr_nvme_irq(struct pt_regs *regs)
{
	krr_nvme_done = 1;
	krr_device_irqs++;
	eoi();
	irqentry_exit(regs);
}

/* ---- memory inputs ---- */

static u64 *user_pte(u64 addr)
{
	return (u64 *)(DIRECT_MAP + USER_PT_PA) + ((addr >> 12) & 511);
}

/* pagemap(addr): the kernel maps the user's anonymous page (kmap_local_page, which KRR's
 * agent records as a 4 KiB CFU of the page) and reads all of it. The PTE is read without the
 * agent: only its frame number is used, which user accesses do not change. */
static u64 sys_pagemap(u64 uaddr)
{
	u64 pte, addr, h;
	if (uaddr < USER_DATA || uaddr >= FAULT_BASE + FAULT_PAGES * 4096)
		return -14UL;
	pte = *(volatile u64 *)user_pte(uaddr);
	if (!(pte & PTE_P))
		return -14UL;
	addr = DIRECT_MAP + (pte & 0x000ffffffffff000UL);
	rr_record_page_map((void *)addr, addr);
	h = hash((const u8 *)addr, 4096, uaddr);
	fold(h);
	return h & 0xffffffff;
}

static int has_zero(u64 w) { return ((w - 0x0101010101010101UL) & ~w & 0x8080808080808080UL) != 0; }

/* strsum(addr, max): a word-at-a-time reader of a user string (strnlen_user's shape). It
 * first looks at the word before the string (unrecorded: align 0 tells the agent not to
 * record it; the value is not used); KRR's replayer skips that get_user because the
 * recorded one reads the word after it (its `ptr == RDI + 8` rule). */
static u64 sys_strsum(u64 uaddr, u64 max)
{
	u64 h = 0x737472, i, w;
	u8 *e = rr_gfu_begin((const void *)(uaddr - 8), 8, 0);
	w = *(volatile u64 *)(uaddr - 8);
	rr_record_gfu_end(e, w);
	for (i = 0; i < max; i += 8) {
		e = rr_gfu_begin((const void *)(uaddr + i), 8, 8);
		w = *(volatile u64 *)(uaddr + i);
		rr_record_gfu_end(e, w);
		h = mix(h, w);
		if (has_zero(w))
			break;
	}
	fold(h);
	return i;
}

u64 krr_devices_syscall(u64 nr, struct pt_regs *regs)
{
	switch (nr) {
	case SYS_DISK:
		return sys_disk(regs->di);
	case SYS_NET:
		return sys_net();
	case SYS_NVME:
		return sys_nvme(regs->di, regs->si);
	case SYS_PAGEMAP:
		return sys_pagemap(regs->di);
	case SYS_STRSUM:
		return sys_strsum(regs->di, regs->si);
	}
	return -38UL;
}

void asm_krr_ide_irq(void);
void asm_krr_e1000_irq(void);
void asm_krr_nvme_irq(void);

static void gate(int v, void (*fn)(void))
{
	u64 a = (u64)fn;
	u64 *g = (u64 *)(krr_idt + v * 16);
	g[0] = (a & 0xffff) | (0x10UL << 16) | (0x8eUL << 40) | ((a >> 16) & 0xffff) << 48;
	g[1] = a >> 32;
}

/* At boot (not recorded): the vectors, the e1000's receive ring. The NVMe queues were
 * created by admin commands before the recording too (not modelled: no data in them). */
void krr_devices_init(void)
{
	if (!krr_devices)
		return;
	gate(IDE_VECTOR, asm_krr_ide_irq);
	gate(E1000_VECTOR, asm_krr_e1000_irq);
	gate(NVME_VECTOR, asm_krr_nvme_irq);
	e1000_init();
}
