//! Instructions that exist only outside 64-bit mode (in compatibility mode they are valid,
//! in 64-bit mode the decoder already makes them #UD): PUSHA/POPA, the BCD adjustments
//! (DAA, DAS, AAA, AAS, AAM, AAD), SALC, BOUND, ARPL, LDS/LES; and SYSENTER/SYSEXIT, whose
//! validity in long mode depends on the CPU's vendor.

use super::*;

pub(super) fn execute(
    cpu: &mut CpuState,
    insn: &Instruction,
    addr: Option<u64>,
    flags: u64,
) -> SysResult {
    match insn.mnemonic() {
        M::Pusha | M::Pushad => pusha(cpu, insn),
        M::Popa | M::Popad => popa(cpu, insn),
        M::Daa | M::Das | M::Aaa | M::Aas => decimal_adjust(cpu, insn, flags),
        M::Aam | M::Aad => ascii_multiply_divide(cpu, insn, flags),
        M::Salc => {
            let al = if flags & rflags::CF != 0 { 0xff } else { 0 };
            set_reg(cpu, Register::AL, al);
            SysResult::Done(None)
        }
        M::Bound => bound(cpu, insn, addr.expect("BOUND has a memory operand")),
        M::Arpl => arpl(cpu, insn, addr, flags),
        M::Lds | M::Les => load_far_pointer(cpu, insn, addr.expect("a memory operand")),
        M::Sysenter => sysenter(cpu, insn, flags),
        M::Sysexit | M::Sysexitq => sysexit(cpu, insn),
        _ => unreachable!("routed here by system::execute"),
    }
}

/// The element size of PUSHA/POPA: 4 for the D forms, else 2.
fn element_size(insn: &Instruction) -> u64 {
    if matches!(insn.mnemonic(), M::Pushad | M::Popad) {
        4
    } else {
        2
    }
}

/// PUSHA(D): EAX, ECX, EDX, EBX, the original ESP, EBP, ESI, EDI (GPRs 0-7 in order), each
/// checked before the first is stored.
fn pusha(cpu: &mut CpuState, insn: &Instruction) -> SysResult {
    let size = element_size(insn);
    let rsp = cpu.gpr[RSP];
    let slots: Vec<(u64, u64)> = (0..8)
        .map(|r| {
            let at = stack_linear(cpu, rsp.wrapping_sub(size * (r as u64 + 1)));
            (at, cpu.gpr[r])
        })
        .collect();
    for &(at, _) in &slots {
        trym!(probe_write(cpu, at, size));
    }
    for (at, v) in slots {
        trym!(write_mem(cpu, at, &v.to_le_bytes()[..size as usize]));
    }
    cpu.gpr[RSP] = stack_pointer(cpu, rsp, rsp.wrapping_sub(8 * size));
    SysResult::Done(None)
}

/// POPA(D): EDI, ESI, EBP, (the saved ESP is skipped), EBX, EDX, ECX, EAX.
fn popa(cpu: &mut CpuState, insn: &Instruction) -> SysResult {
    let size = element_size(insn);
    let rsp = cpu.gpr[RSP];
    let mut values = [0u64; 8];
    for (i, v) in values.iter_mut().enumerate() {
        let at = stack_linear(cpu, rsp.wrapping_add(size * i as u64));
        let mut b = [0u8; 8];
        trym!(read_mem(cpu, at, &mut b[..size as usize]));
        *v = u64::from_le_bytes(b);
    }
    for (i, &v) in values.iter().enumerate() {
        let r = 7 - i;
        if r == RSP {
            continue;
        }
        let old = cpu.gpr[r];
        cpu.gpr[r] = if size == 4 { v } else { (old & !0xffff) | v };
    }
    cpu.gpr[RSP] = stack_pointer(cpu, rsp, rsp.wrapping_add(8 * size));
    SysResult::Done(None)
}

/// SF, ZF and PF of a byte result, as RFLAGS bits.
fn byte_flags(v: u8) -> u64 {
    let mut f = 0;
    if v & 0x80 != 0 {
        f |= rflags::SF;
    }
    if v == 0 {
        f |= rflags::ZF;
    }
    if v.count_ones().is_multiple_of(2) {
        f |= rflags::PF;
    }
    f
}

/// DAA, DAS, AAA, AAS (SDM pseudocode). The flags the SDM leaves undefined are this host's
/// (AMD; every AL, CF, AF input compared): OF as AL's sign change for DAA/DAS; for AAA/AAS
/// SF and ZF of the 16-bit AX and PF of AL before AL's high nibble is cleared, OF clear.
fn decimal_adjust(cpu: &mut CpuState, insn: &Instruction, flags: u64) -> SysResult {
    let al = cpu.gpr[RAX] as u8;
    let cf = flags & rflags::CF != 0;
    let af = flags & rflags::AF != 0;
    let low_adjust = al & 0xf > 9 || af;
    let mut out = 0u64;
    match insn.mnemonic() {
        M::Daa | M::Das => {
            let add = insn.mnemonic() == M::Daa;
            let mut v = al;
            let mut carry = false;
            if low_adjust {
                let (r, c) = if add {
                    v.overflowing_add(6)
                } else {
                    v.overflowing_sub(6)
                };
                v = r;
                carry = cf || c;
                out |= rflags::AF;
            }
            if al > 0x99 || cf {
                v = if add {
                    v.wrapping_add(0x60)
                } else {
                    v.wrapping_sub(0x60)
                };
                carry = true;
            } else if add {
                carry = false;
            }
            if carry {
                out |= rflags::CF;
            }
            // OF (undefined): the sign flipped from a non-negative AL to a negative result
            // (DAA) or from a negative one to a non-negative result (DAS).
            let flipped = if add {
                al & 0x80 == 0 && v & 0x80 != 0
            } else {
                al & 0x80 != 0 && v & 0x80 == 0
            };
            if flipped {
                out |= rflags::OF;
            }
            out |= byte_flags(v);
            set_reg(cpu, Register::AL, v as u64);
        }
        _ => {
            let ax = cpu.gpr[RAX] as u16;
            let mut v = ax;
            if low_adjust {
                // AX + 106H, or AX - 6 (borrowing from AH) and AH - 1.
                v = if insn.mnemonic() == M::Aaa {
                    v.wrapping_add(0x106)
                } else {
                    v.wrapping_sub(6).wrapping_sub(0x100)
                };
                out |= rflags::AF | rflags::CF;
            }
            out |= byte_flags(v as u8) & rflags::PF;
            if v & 0x8000 != 0 {
                out |= rflags::SF;
            }
            if v == 0 {
                out |= rflags::ZF;
            }
            set_reg(cpu, Register::AX, (v & 0xff0f) as u64);
        }
    }
    set_arith(cpu, out);
    SysResult::Done(None)
}

/// AAM imm8 (AH = AL / imm, AL = AL % imm; #DE for 0) and AAD imm8 (AL = AL + AH * imm,
/// AH = 0). SF/ZF/PF follow AL; the undefined OF/AF/CF are this host's (AMD; every AL, CF,
/// AF input compared): clear for AAM, those of the byte addition AL + AH * imm for AAD.
fn ascii_multiply_divide(cpu: &mut CpuState, insn: &Instruction, _flags: u64) -> SysResult {
    let base = insn.immediate(0) as u8;
    let ax = cpu.gpr[RAX] as u16;
    let (al, ah) = (ax as u8, (ax >> 8) as u8);
    let (v, mut out) = if insn.mnemonic() == M::Aam {
        if base == 0 {
            return SysResult::Fault(fault(vector::DE, None));
        }
        (((al / base) as u16) << 8 | (al % base) as u16, 0)
    } else {
        let product = ah.wrapping_mul(base);
        let (sum, carry) = al.overflowing_add(product);
        let mut f = 0;
        if carry {
            f |= rflags::CF;
        }
        if (al & 0xf) + (product & 0xf) > 0xf {
            f |= rflags::AF;
        }
        if !(al ^ product) & (al ^ sum) & 0x80 != 0 {
            f |= rflags::OF;
        }
        (sum as u16, f)
    };
    out |= byte_flags(v as u8);
    set_reg(cpu, Register::AX, v as u64);
    set_arith(cpu, out);
    SysResult::Done(None)
}

/// BOUND r, m: #BR unless lower <= r <= upper (signed, operand-size wide).
fn bound(cpu: &mut CpuState, insn: &Instruction, addr: u64) -> SysResult {
    let size = if insn.op0_register().size() == 4 {
        4
    } else {
        2
    };
    let mut b = [0u8; 8];
    trym!(read_mem(cpu, addr, &mut b[..2 * size]));
    let signed = |x: &[u8]| -> i64 {
        if size == 4 {
            i32::from_le_bytes(x.try_into().expect("4 bytes")) as i64
        } else {
            i16::from_le_bytes(x.try_into().expect("2 bytes")) as i64
        }
    };
    let (lower, upper) = (signed(&b[..size]), signed(&b[size..2 * size]));
    let index = reg_value(cpu, insn.op0_register());
    let index = if size == 4 {
        index as u32 as i32 as i64
    } else {
        index as u16 as i16 as i64
    };
    if index < lower || index > upper {
        return SysResult::Fault(fault(vector::BR, None));
    }
    SysResult::Done(None)
}

/// ARPL r/m16, r16: raise the destination selector's RPL to the source's (ZF = 1), else ZF = 0.
fn arpl(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>, flags: u64) -> SysResult {
    let src = reg_value(cpu, insn.op1_register()) as u16;
    let dest = if insn.op0_kind() == OpKind::Memory {
        let mut b = [0u8; 2];
        trym!(read_mem(cpu, addr.expect("memory operand"), &mut b));
        u16::from_le_bytes(b)
    } else {
        reg_value(cpu, insn.op0_register()) as u16
    };
    let raise = dest & 3 < src & 3;
    if raise {
        let v = (dest & !3) | (src & 3);
        if insn.op0_kind() == OpKind::Memory {
            trym!(write_mem(
                cpu,
                addr.expect("memory operand"),
                &v.to_le_bytes()
            ));
        } else {
            set_reg(cpu, insn.op0_register(), v as u64);
        }
    }
    let arith = flags & rflags::ARITH & !rflags::ZF;
    set_arith(cpu, arith | if raise { rflags::ZF } else { 0 });
    SysResult::Done(None)
}

/// LDS/LES r, m16:16/m16:32: load the segment register, then the offset register.
fn load_far_pointer(cpu: &mut CpuState, insn: &Instruction, addr: u64) -> SysResult {
    let size = insn.op0_register().size();
    let mut b = [0u8; 6];
    trym!(read_mem(cpu, addr, &mut b[..size + 2]));
    let mut off = [0u8; 8];
    off[..size].copy_from_slice(&b[..size]);
    let sel = u16::from_le_bytes([b[size], b[size + 1]]);
    let s = if insn.mnemonic() == M::Lds {
        seg::DS
    } else {
        seg::ES
    };
    trym!(segments::load_segment(cpu, s, sel));
    set_reg(cpu, insn.op0_register(), u64::from_le_bytes(off));
    SysResult::Done(None)
}

/// The CPU model's vendor string (CPUID leaf 0: EBX, EDX, ECX).
fn vendor(cpu: &CpuState) -> [u8; 12] {
    let [_, ebx, ecx, edx] = cpu.cpuid.lookup(0, 0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&ebx.to_le_bytes());
    v[4..8].copy_from_slice(&edx.to_le_bytes());
    v[8..].copy_from_slice(&ecx.to_le_bytes());
    v
}

/// Does the CPU model report AMD (or Hygon)? Those CPUs reject SYSENTER and SYSEXIT in long
/// mode (#UD).
pub(super) fn amd_vendor(cpu: &CpuState) -> bool {
    matches!(&vendor(cpu), b"AuthenticAMD" | b"HygonGenuine")
}

/// Does the CPU model report Intel? Intel CPUs reject SYSCALL in compatibility mode (#UD).
/// (A model with another vendor, krr's default, has both SYSCALL and SYSENTER there.)
pub(super) fn intel_vendor(cpu: &CpuState) -> bool {
    &vendor(cpu) == b"GenuineIntel"
}

/// SYSENTER (Intel, long mode): to 64-bit code at CPL0, CS = IA32_SYSENTER_CS, SS = CS + 8,
/// RIP/RSP from IA32_SYSENTER_EIP/ESP; VM, IF and RF cleared.
fn sysenter(cpu: &mut CpuState, _insn: &Instruction, flags: u64) -> SysResult {
    if amd_vendor(cpu) {
        return ud();
    }
    let cs = (cpu.sysenter_cs & 0xfffc) as u16;
    if cs == 0 {
        return gp0();
    }
    cpu.seg[seg::CS] = Segment::flat(cs, Segment::CODE64_DPL0);
    cpu.seg[seg::SS] = Segment::flat(cs + 8, Segment::DATA_DPL0);
    cpu.gpr[RSP] = cpu.sysenter_esp;
    set_rflags(cpu, flags & !(rflags::VM | rflags::IF | rflags::RF));
    SysResult::Done(Some(cpu.sysenter_eip))
}

/// SYSEXIT (Intel, long mode, CPL0): to CPL3 at RIP = RDX, RSP = RCX; with REX.W to 64-bit
/// code (CS = IA32_SYSENTER_CS + 32), else to compatibility mode (CS + 16, EIP = EDX,
/// ESP = ECX); SS is CS + 8.
fn sysexit(cpu: &mut CpuState, insn: &Instruction) -> SysResult {
    if amd_vendor(cpu) {
        return ud();
    }
    let base = (cpu.sysenter_cs & 0xfffc) as u16;
    if base == 0 || cpu.cpl() != 0 {
        return gp0();
    }
    let wide = insn.mnemonic() == M::Sysexitq;
    let (cs, attrs, rip, rsp) = if wide {
        (base + 32, 0xa0fb, cpu.gpr[RDX], cpu.gpr[RCX])
    } else {
        (
            base + 16,
            0xc0fb,
            cpu.gpr[RDX] & 0xffff_ffff,
            cpu.gpr[RCX] & 0xffff_ffff,
        )
    };
    if wide && (!mmu::is_canonical(rip) || !mmu::is_canonical(rsp)) {
        return gp0();
    }
    cpu.seg[seg::CS] = Segment::flat(cs | 3, attrs);
    cpu.seg[seg::SS] = Segment::flat((cs + 8) | 3, Segment::DATA_DPL3);
    cpu.gpr[RSP] = rsp;
    SysResult::Done(Some(rip))
}
