//! The debug registers (DR0-DR3 addresses, DR6 status, DR7 control) and alignment checking:
//! which breakpoints an instruction fetch or a data access hits, and whether a data access
//! is subject to #AC. The engine runs instructions one at a time in the interpreter whenever
//! a breakpoint is enabled (see the jit's `engine::debug`); the MMU's checked slow path
//! (MMU indices 2 and 3, see [`crate::mmu::mmu_index`]) calls [`data_hits`] and
//! [`alignment_fault`].

use crate::arch::{cr0, rflags};
pub use crate::arch::{dr6, dr7};
use crate::cpu::CpuState;

/// The R/W field of breakpoint `i`: 0 execute, 1 write, 2 I/O (CR4.DE), 3 read or write.
pub fn kind(dr7: u64, i: usize) -> u64 {
    (dr7 >> (16 + 4 * i)) & 3
}

/// The length in bytes of breakpoint `i` (LEN 00 = 1, 01 = 2, 11 = 4, 10 = 8).
pub fn len(dr7: u64, i: usize) -> u64 {
    match (dr7 >> (18 + 4 * i)) & 3 {
        0 => 1,
        1 => 2,
        2 => 8,
        _ => 4,
    }
}

/// Is breakpoint `i` enabled (locally or globally)?
pub fn enabled(dr7: u64, i: usize) -> bool {
    dr7 & (3 << (2 * i)) != 0
}

/// Bit i set for every enabled data breakpoint (R/W = 01 or 11).
pub fn data_breakpoints(dr7: u64) -> u64 {
    if dr7 & dr7::ENABLE_MASK == 0 {
        return 0;
    }
    (0..4)
        .filter(|&i| enabled(dr7, i) && kind(dr7, i) & 1 == 1)
        .fold(0, |m, i| m | 1 << i)
}

/// B0-B3 bits of the enabled instruction breakpoints at linear address `rip`.
pub fn exec_hits(cpu: &CpuState, rip: u64) -> u64 {
    let dr7 = cpu.dr[7];
    (0..4)
        .filter(|&i| enabled(dr7, i) && kind(dr7, i) == 0 && cpu.dr[i] == rip)
        .fold(0, |m, i| m | 1 << i)
}

/// B0-B3 bits of the enabled data breakpoints a `size`-byte access at `linear` hits (a write,
/// or a read when `write` is false). A breakpoint covers its LEN bytes from DRn aligned down
/// to LEN (the low address bits are ignored, SDM 17.2.5).
pub fn data_hits(cpu: &CpuState, linear: u64, size: u64, write: bool) -> u64 {
    let dr7 = cpu.dr[7];
    let mut hits = 0;
    for i in 0..4 {
        if !enabled(dr7, i) {
            continue;
        }
        let k = kind(dr7, i);
        if k != 3 && !(k == 1 && write) {
            continue;
        }
        let l = len(dr7, i);
        let start = cpu.dr[i] & !(l - 1);
        // Overlap of [linear, linear + size) and [start, start + l), wrapping safely.
        if linear.wrapping_sub(start) < l || start.wrapping_sub(linear) < size {
            hits |= 1 << i;
        }
    }
    hits
}

/// Are data accesses alignment-checked now (CR0.AM, RFLAGS.AC, CPL3; SDM 6.15 Interrupt 17)?
#[inline]
pub fn alignment_checked(cpu: &CpuState) -> bool {
    // RFLAGS.AC first: it is the rarest at CPL3 (Linux keeps CR0.AM set).
    cpu.rflags & rflags::AC != 0 && cpu.cpl() == 3 && cpu.cr0 & cr0::AM != 0
}

/// Does a `size`-byte access at `linear` raise #AC? Words, doublewords and quadwords must be
/// aligned to their size (SDM Table 6-7). 16-byte SSE accesses are not checked (the aligned
/// forms raise #GP themselves), nor are larger areas (FXSAVE, XSAVE check with #GP) or
/// 10-byte descriptor-table images.
pub fn alignment_fault(linear: u64, size: usize) -> bool {
    matches!(size, 2 | 4 | 8) && linear & (size as u64 - 1) != 0
}
