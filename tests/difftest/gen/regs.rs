//! GPR and XMM register naming and access: x86 numbering, sub-register views, reading and
//! writing the bits of a register in a [`UserState`].

use iced_x86::Register;
use krr_jit::snippet::UserState;

const GPR64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

pub(super) const RSP_BIT: u16 = 1 << 4;

fn gpr_index(reg: Register) -> Option<usize> {
    let full = reg.full_register();
    GPR64.iter().position(|r| *r == full)
}

pub(super) fn gpr_bit(reg: Register) -> u16 {
    gpr_index(reg).map_or(0, |i| 1 << i)
}

/// The `i`-th GPR (x86 numbering) with the given size in bytes.
pub(super) fn gpr_of_size(i: usize, size: usize) -> Register {
    let base = match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    };
    if size == 1 && i >= 4 {
        // AL..BL, then SPL..R15L after the four high-byte registers.
        return Register::try_from(Register::SPL as usize + i - 4).expect("register");
    }
    Register::try_from(base as usize + i).expect("register")
}

pub(super) fn xmm(i: usize) -> Register {
    Register::try_from(Register::XMM0 as usize + i).expect("register")
}

/// Value of a register (or of a segment base, as iced-x86's address calculation wants it)
/// in `st`.
pub fn read_reg(st: &UserState, reg: Register) -> u64 {
    match reg {
        Register::ES | Register::CS | Register::SS | Register::DS => return 0,
        Register::FS => return st.fs_base,
        Register::GS => return st.gs_base,
        Register::RIP => return st.rip,
        _ => {}
    }
    let Some(i) = gpr_index(reg) else { return 0 };
    let v = st.gpr[i];
    if matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    ) {
        return (v >> 8) & 0xff;
    }
    match reg.size() {
        1 => v & 0xff,
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    }
}

/// Writes `value` into the bits of `reg` (a GPR of any size), leaving the other bits alone.
pub(super) fn write_reg_bits(st: &mut UserState, reg: Register, value: u64) {
    let Some(i) = gpr_index(reg) else { return };
    let (mask, shift) = if matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    ) {
        (0xffu64, 8)
    } else {
        match reg.size() {
            1 => (0xff, 0),
            2 => (0xffff, 0),
            4 => (0xffff_ffff, 0),
            _ => (u64::MAX, 0),
        }
    };
    st.gpr[i] = (st.gpr[i] & !(mask << shift)) | ((value & mask) << shift);
}
