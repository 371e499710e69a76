/* The synthetic kernel's devices (tests/krr_synth/devices.rs keeps the same numbers): a PIIX
 * IDE function (bus-master DMA), an e1000 (receive ring, MMIO registers) and an NVMe
 * controller (one I/O queue pair, MSI), as the device scenario's recorder plays them. */
#define DEV_VA 0xffffffff82c00000UL /* 2 MiB page over DEV_PA (MMIO, uncached) */
#define DEV_PA 0xfe000000UL
#define E1000_PA DEV_PA		    /* BAR0, 128 KiB */
#define NVME_PA (DEV_PA + 0x20000UL) /* BAR0, 16 KiB */
#define IDE_BM 0xc040		    /* BAR4: bus-master DMA, primary channel */
#define ATA_BASE 0x1f0

#define IDE_VECTOR 0x24
#define E1000_VECTOR 0x25
#define NVME_VECTOR 0x26

/* e1000 registers. */
#define E1000_STATUS 0x08
#define E1000_ICR 0xc0
#define E1000_IMS 0xd0
#define E1000_RCTL 0x100
#define E1000_RDBAL 0x2800
#define E1000_RDBAH 0x2804
#define E1000_RDLEN 0x2808
#define E1000_RDH 0x2810
#define E1000_RDT 0x2818
#define E1000_RX_DESCS 8
#define E1000_RX_BUF 2048

/* NVMe: I/O queue 1's doorbells (stride 4). */
#define NVME_SQ1_TAIL 0x1008
#define NVME_CQ1_HEAD 0x100c
#define NVME_QUEUE 16

#define SYS_DISK 3
#define SYS_NET 4
#define SYS_NVME 5
#define SYS_PAGEMAP 6
#define SYS_STRSUM 7
