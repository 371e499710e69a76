//! Everything SSE..SSE4.2, AES-NI, PCLMULQDQ and CRC32 that is not written inline: the
//! semantics do the checks and the memory access (through the builder, so both tiers fault
//! precisely and use the TLB and MMIO paths) and hand the operation to [`Helper::SseHost`],
//! which runs the very instruction on the host (`helpers::host_exec`). GPR, flag and memory
//! results are written here, after the helper.

use super::*;
use crate::helpers::host_exec::{host_form, writes};
use crate::sem::flags::concrete;

/// 16-byte memory operands of these legacy forms need no alignment (SDM Vol. 2 Table 2-21,
/// exception class 4: the string compares; the unaligned moves are handled inline).
fn unaligned_ok(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Pcmpestri
            | Mnemonic::Pcmpestri64
            | Mnemonic::Pcmpestrm
            | Mnemonic::Pcmpestrm64
            | Mnemonic::Pcmpistri
            | Mnemonic::Pcmpistrm
    )
}

/// Run the current instruction on the host (see the module documentation).
pub(super) fn host<B: Builder>(b: &mut B) -> R<()> {
    let insn = *b.insn();
    let Some(form) = host_form(&insn) else {
        return Err(b.unimplemented());
    };
    // CRC32 is a GPR instruction: no SSE state checks.
    if insn.mnemonic() != Mnemonic::Crc32 {
        check_available(b)?;
    }
    let mut dst = 0u64;
    let mut src = 0u64;
    let mut gpr = None;
    let mut store_at = None;
    for i in 0..insn.op_count() {
        match insn.op_kind(i) {
            OpKind::Register if insn.op_register(i).is_xmm() => {
                if i == 0 {
                    dst = xreg(&insn, 0) as u64;
                } else {
                    src = xreg(&insn, i) as u64;
                }
            }
            OpKind::Register if i == 0 => {
                gpr = Some(read_reg(b, insn.op_register(0)));
            }
            OpKind::Register => {
                let v = read_reg(b, insn.op_register(i));
                b.store_state(SCRATCH_OPERAND, v);
            }
            OpKind::Memory => {
                let size = mem_size(insn.memory_size());
                let align = size == 16 && !unaligned_ok(insn.mnemonic());
                if i == 0 {
                    let a = mem_addr(b, align)?;
                    store_at = Some((a, size));
                } else if size == 16 {
                    let a = mem_addr(b, align)?;
                    let (lo, hi) = b.load128(a)?;
                    b.store_state(SCRATCH_OPERAND, lo);
                    b.store_state(SCRATCH_OPERAND + 8, hi);
                } else {
                    let a = access_address(b)?;
                    let v = b.load(a, size)?;
                    b.store_state(SCRATCH_OPERAND, v);
                }
            }
            _ => {}
        }
    }
    let id = b.c(form.id as u64);
    let regs = b.c(dst | src << 4);
    let g = match gpr {
        Some(v) => v,
        None => b.c(0),
    };
    let r = b.call(Helper::SseHost, [id, regs, g])?;
    if form.writes & writes::GPR != 0 {
        write_reg(b, insn.op0_register(), r);
    } else if let Some((a, size)) = store_at {
        b.store(a, r, size)?;
    } else if form.writes & writes::FLAGS != 0 {
        let st = concrete(b, r);
        b.set_flags(st);
        if form.writes & writes::ECX != 0 {
            let k = b.c(32);
            let ecx = b.shr(r, k);
            write_reg(b, Register::ECX, ecx);
        }
    }
    Ok(())
}
