//! Block modes: what besides its bytes decides how a block's code behaves, so blocks are
//! cached per (address, mode). The dispatcher computes the mode at each lookup and the
//! compiler reads it from the block; both need the bit layout, which is why it lives here.

use krr_runtime::CpuState;

/// Block mode bit: CPL3 code running with alignment checking (CR0.AM, RFLAGS.AC).
pub(crate) const MODE_ALIGNMENT_CHECK: u32 = 4;

/// The translation mode: the CPL, plus [`MODE_ALIGNMENT_CHECK`] while data accesses are
/// alignment-checked (their compiled code uses the checked MMU index).
#[inline]
pub(crate) fn current(cpu: &CpuState) -> u32 {
    cpu.cpl() as u32
        | if krr_runtime::debugreg::alignment_checked(cpu) {
            MODE_ALIGNMENT_CHECK
        } else {
            0
        }
}
