/* The synthetic kernel's memory layout, shared with the recorder (tests/krr_synth/machine.rs
 * keeps the same numbers). Physical addresses are in the snapshot's 64 MiB of pc.ram; the
 * page tables are written by the recorder before the kernel's boot routine runs. */
#define KERNEL_VA 0xffffffff81000000UL
#define KERNEL_PA 0x1000000UL
#define DIRECT_MAP 0xffff888000000000UL /* phys 0..64 MiB, as Linux's direct map */
#define RING_VA 0xffffc90000000000UL    /* ivshmem BAR2 (the KRR ring) */
#define APIC_VA 0xffffffff82e00000UL    /* 2 MiB page over 0xfee00000 (xAPIC, MMIO) */
#define USER_CODE 0x400000UL            /* syscall; jmp .-2 / a store at +0x10 */
#define USER_DATA 0x401000UL            /* 8 user data pages */
#define USER_DATA_PAGES 8
#define FAULT_BASE 0x500000UL /* 256 demand-mapped user pages */
#define FAULT_PAGES 256
#define USER_PT_PA 0x20000UL /* the page table of 0x400000..0x5fffff */
#define POOL_PA 0x200000UL   /* fault page i <- pool page i */
#define USER_RSP 0x7ffffffde000UL

#define PTE_P 1UL
#define PTE_RW 2UL
#define PTE_US 4UL
#define PTE_A 0x20UL
#define PTE_D 0x40UL

#define TIMER_VECTOR 0xec
#define SYS_WORK 0
#define SYS_UNMAP 1
#define SYS_PROBE 2
