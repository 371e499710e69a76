//! Block modes: what besides its bytes decides how a block's code behaves, so blocks are
//! cached per (address, mode). The dispatcher computes the mode at each lookup and the
//! compiler reads it from the block; both need the bit layout, which is why it lives here.

use krr_runtime::{seg, CpuState};

/// Block mode bit: CPL3 code running with alignment checking (CR0.AM, RFLAGS.AC).
pub(crate) const MODE_ALIGNMENT_CHECK: u32 = 4;
/// Block mode bit: compatibility mode (long mode with a code segment whose L bit is clear):
/// the code is decoded as 32-bit (or 16-bit, [`MODE_CODE16`]) code, addresses wrap at
/// 4 GiB and every segment's base applies.
pub const MODE_COMPAT: u32 = 8;
/// Block mode bit, with [`MODE_COMPAT`]: the code segment's D bit is clear (16-bit code).
pub const MODE_CODE16: u32 = 16;
/// Block mode bit, with [`MODE_COMPAT`]: the stack segment's B bit is clear (SP, not ESP).
pub const MODE_STACK16: u32 = 32;
/// All mode bits (the jump cache packs them into its keys).
pub(crate) const MODE_BITS: u32 = 63;

use krr_runtime::Segment;
const ATTR_LONG: u16 = Segment::ATTR_LONG;
const ATTR_DEFAULT32: u16 = Segment::ATTR_DEFAULT32;

/// The translation mode: the CPL, plus [`MODE_ALIGNMENT_CHECK`] while data accesses are
/// alignment-checked (their compiled code uses the checked MMU index), plus the
/// compatibility-mode bits.
#[inline]
pub(crate) fn current(cpu: &CpuState) -> u32 {
    cpu.cpl() as u32
        | if krr_runtime::debugreg::alignment_checked(cpu) {
            MODE_ALIGNMENT_CHECK
        } else {
            0
        }
        | code_bits(cpu)
}

/// The compatibility-mode bits of the mode (0 in 64-bit mode).
#[inline]
pub fn code_bits(cpu: &CpuState) -> u32 {
    let cs = cpu.seg[seg::CS].attrs;
    if cs & ATTR_LONG != 0 {
        return 0;
    }
    let mut m = MODE_COMPAT;
    if cs & ATTR_DEFAULT32 == 0 {
        m |= MODE_CODE16;
    }
    if cpu.seg[seg::SS].attrs & ATTR_DEFAULT32 == 0 {
        m |= MODE_STACK16;
    }
    m
}

/// The decoder's bitness for code of this mode.
#[inline]
pub fn bitness(mode: u32) -> u32 {
    if mode & MODE_COMPAT == 0 {
        64
    } else if mode & MODE_CODE16 != 0 {
        16
    } else {
        32
    }
}

/// The stack's address size in bytes in this mode: 8, or in compatibility mode 4 or 2 (SS.B).
#[inline]
pub fn stack_bytes(mode: u32) -> u32 {
    if mode & MODE_COMPAT == 0 {
        8
    } else if mode & MODE_STACK16 != 0 {
        2
    } else {
        4
    }
}

/// The decoder's bitness for the code the CPU runs now (64, or 32/16 in compatibility mode):
/// what reports, logs and debuggers disassemble with.
pub fn code_bitness(cpu: &CpuState) -> u32 {
    bitness(code_bits(cpu))
}
