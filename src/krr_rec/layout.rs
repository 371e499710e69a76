//! KRR's on-disk struct layouts (krr-spec.md section 1): sizes and field offsets of the raw
//! little-endian gcc structs, once, for the readers (the test writer asserts them against the
//! spec's numbers).

/// `rr_event_guest_queue_header`.
pub const QUEUE_HEADER_SIZE: usize = 48;
pub mod queue_header {
    pub const CURRENT_POS: usize = 0;
    pub const TOTAL_POS: usize = 4;
    pub const HEADER_SIZE: usize = 8;
    pub const ENTRY_SIZE: usize = 12;
    pub const RR_ENABLED: usize = 16;
    pub const CURRENT_BYTE: usize = 24;
    pub const TOTAL_SIZE: usize = 32;
    pub const ROTATED_BYTES: usize = 40;
}

/// `struct kvm_regs`: 18 u64 (rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags).
pub const KVM_REGS_SIZE: usize = 144;

/// Event type numbers (`linux-headers/linux/kernel_rr.h`).
pub mod ty {
    pub const INTERRUPT: u32 = 0;
    pub const EXCEPTION: u32 = 1;
    pub const SYSCALL: u32 = 2;
    pub const IO_IN: u32 = 3;
    pub const CFU: u32 = 4;
    pub const RANDOM: u32 = 5;
    pub const RDTSC: u32 = 6;
    pub const DMA_DONE: u32 = 7;
    pub const GFU: u32 = 8;
    pub const STRNLEN: u32 = 9;
    pub const RDSEED: u32 = 10;
    pub const RELEASE: u32 = 11;
    pub const INST_SYNC: u32 = 12;
    pub const MMIO: u32 = 13;
    pub const PTE: u32 = 14;
}

/// The on-disk payload size of each event type (after the 4-byte type); CFU adds `len`.
pub const fn payload_size(t: u32) -> Option<usize> {
    Some(match t {
        ty::INTERRUPT | ty::EXCEPTION => 192,
        ty::SYSCALL => 184,
        ty::IO_IN | ty::RDTSC | ty::MMIO => IO_INPUT_SIZE,
        ty::GFU | ty::PTE | ty::RDSEED => GFU_SIZE,
        ty::DMA_DONE => 16,
        ty::RANDOM => RANDOM_SIZE,
        ty::STRNLEN => 48,
        ty::CFU => CFU_SIZE,
        ty::RELEASE | ty::INST_SYNC => EVENT_NODE_SIZE,
        _ => return None,
    })
}

/// `rr_io_input` (IO_IN, RDTSC, MMIO).
pub const IO_INPUT_SIZE: usize = 32;
pub mod io_input {
    pub const ID: usize = 0;
    pub const VALUE: usize = 8;
    pub const INST_CNT: usize = 16;
    pub const RIP: usize = 24;
}

/// `rr_interrupt`.
pub mod interrupt {
    pub const ID: usize = 0;
    pub const VECTOR: usize = 4;
    pub const ECX: usize = 8;
    pub const FROM: usize = 16;
    pub const SPIN_COUNT: usize = 24;
    pub const INST_CNT: usize = 32;
    pub const RIP: usize = 40;
    pub const REGS: usize = 48;
}

/// `rr_exception`.
pub mod exception {
    pub const ID: usize = 0;
    pub const EXCEPTION_INDEX: usize = 4;
    pub const ERROR_CODE: usize = 8;
    pub const CR2: usize = 16;
    pub const CR3: usize = 24;
    pub const REGS: usize = 32;
    pub const SPIN_COUNT: usize = 176;
    pub const INST_CNT: usize = 184;
}

/// `rr_syscall`.
pub mod syscall {
    pub const ID: usize = 0;
    pub const REGS: usize = 8;
    pub const KERNEL_GSBASE: usize = 152;
    pub const MSR_GSBASE: usize = 160;
    pub const CR3: usize = 168;
    pub const SPIN_COUNT: usize = 176;
}

/// `rr_gfu` (GFU, PTE, RDSEED).
pub const GFU_SIZE: usize = 32;
pub mod gfu {
    pub const ID: usize = 0;
    pub const VAL: usize = 8;
    pub const PTR: usize = 16;
    pub const SIZE: usize = 24;
}

/// `rr_cfu`; followed by `len` data bytes.
pub const CFU_SIZE: usize = 48;
pub mod cfu {
    pub const ID: usize = 0;
    pub const SRC_ADDR: usize = 8;
    pub const DEST_ADDR: usize = 16;
    pub const LEN: usize = 24;
    pub const RDX: usize = 32;
}

/// `rr_random`.
pub const RANDOM_SIZE: usize = 1048;
pub const RANDOM_DATA_MAX: usize = 1024;
pub mod random {
    pub const ID: usize = 0;
    pub const BUF: usize = 8;
    pub const LEN: usize = 16;
    pub const DATA: usize = 24;
}

/// `rr_dma_done`.
pub mod dma_done {
    pub const ID: usize = 0;
    pub const INST_CNT: usize = 8;
}

/// `rr_event_log` (QEMU's in-memory node, written whole for RELEASE and INST_SYNC).
pub const EVENT_NODE_SIZE: usize = 1088;
pub mod event_node {
    pub const TYPE: usize = 0;
    pub const ID: usize = 4;
    /// `event.interrupt.spin_count` (union offset 24).
    pub const SPIN_COUNT: usize = 32;
    pub const INST_CNT: usize = 1064;
    pub const RIP: usize = 1072;
}

/// `rr_dma_entry` of the DMA and network logs; followed by `len` SG records.
pub const DMA_ENTRY_SIZE: usize = 96;
pub mod dma_entry {
    pub const LEN: usize = 0;
    pub const REPLAYED_SGS: usize = 16;
    pub const INST_CNT: usize = 24;
    pub const RIP: usize = 32;
    pub const FOLLOW_NUM: usize = 40;
    pub const CPU_ID: usize = 48;
    pub const OWNER_ID: usize = 52;
    pub const DEV_TYPE: usize = 56;
    pub const DEV_INDEX: usize = 72;
}

/// `rr_sg_data`; followed by `len` data bytes.
pub const SG_SIZE: usize = 48;
pub mod sg {
    pub const ADDR: usize = 0;
    pub const LEN: usize = 8;
    pub const CHECKSUM: usize = 16;
    pub const DO_CHECK: usize = 24;
}

/// One `checkpoint-<cpu>` record.
pub const CHECKPOINT_SIZE: usize = 344;
pub mod checkpoint {
    pub const INST_CNT: usize = 0;
    pub const RIP: usize = 8;
    /// 16 × u64 in QEMU order RAX RCX RDX RBX RSP RBP RSI RDI R8..R15.
    pub const REGS: usize = 16;
    /// CR0..CR4.
    pub const CR: usize = 144;
    /// 6 × SegmentCache (24 bytes: u32 selector, pad, u64 base, u32 limit, u32 flags).
    pub const SEGS: usize = 184;
    pub const SEG_SIZE: usize = 24;
    pub const EFLAGS: usize = 328;
}
