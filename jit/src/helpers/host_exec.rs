//! [`Helper::SseHost`](crate::sem::Helper::SseHost): a guest SSE..SSE4.2, AES-NI, PCLMULQDQ or
//! CRC32 instruction executed by the host itself (the host is x86-64 and is the reference).
//!
//! The guest instruction is re-encoded (iced-x86's `Encoder`) with its operands moved onto
//! fixed host registers: an XMM destination (operand 0) to xmm1, another XMM operand to xmm2,
//! the implicit XMM0 (BLENDV*, PBLENDVB, PCMPxSTRM) stays xmm0, a GPR operand 0 to r8, a GPR
//! r/m operand to r9, a memory operand to `[rsi]` (a 16-byte-aligned buffer holding the bytes
//! the semantics loaded through the guest's MMU), and implicit RAX/RCX/RDX stay where they
//! are. The instruction followed by `ret` is a stub, generated once per (iced `Code`, imm8,
//! register or memory form) into executable memory and named by an id the semantics put in
//! the helper call. [`run_stub`] loads a [`HostCtx`] (operands, the guest's MXCSR with its
//! flags cleared), calls the stub, and captures xmm0/xmm1, the GPRs, RFLAGS and MXCSR,
//! restoring the host's MXCSR. An unmasked exception traps on the host as it would in the
//! guest: a SIGFPE handler ([`on_sigfpe`]) resumes after the stub and the helper raises #XM,
//! with the flags the hardware recorded and the destination untouched. Results, NaN rules,
//! DAZ/FTZ, rounding and the flags raised are the host's, bit for bit.

use iced_x86::{Code, CpuidFeature, Encoder, Instruction, Mnemonic, OpKind, Register};
use krr_runtime::arch::{cr4::OSXMMEXCPT as CR4_OSXMMEXCPT, rflags};
use krr_runtime::gpr::{RAX, RCX, RDX};
use krr_runtime::{vector, CpuState, ExceptionRecord, Outcome};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// What a host form writes besides MXCSR's flags (bits of [`HostForm::writes`]).
pub mod writes {
    /// The XMM destination (operand 0).
    pub const XMM_DST: u8 = 1;
    /// XMM0 (PCMPESTRM/PCMPISTRM).
    pub const XMM0: u8 = 2;
    /// A GPR destination (operand 0): the helper returns it.
    pub const GPR: u8 = 4;
    /// A memory destination (operand 0): the helper returns the bytes to store.
    pub const MEM: u8 = 8;
    /// The arithmetic flags: the helper returns them (bits as in RFLAGS).
    pub const FLAGS: u8 = 16;
    /// ECX (PCMPESTRI/PCMPISTRI): returned in bits 32-63 next to the flags.
    pub const ECX: u8 = 32;
}

/// A guest instruction form the host runs: its stub id and what it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostForm {
    pub id: u32,
    pub writes: u8,
}

/// The context a stub runs on. Field offsets are used by [`run_stub`]'s assembly.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCtx {
    /// xmm0, xmm1, xmm2 (in and out).
    pub xmm: [[u64; 2]; 3], // 0, 16, 32
    /// The memory operand `[rsi]` points at (in and out).
    pub mem: [u64; 2], // 48
    pub rax: u64, // 64
    pub rcx: u64, // 72
    pub rdx: u64, // 80
    pub r8: u64,  // 88
    pub r9: u64,  // 96
    /// RFLAGS after the instruction.
    pub rflags: u64, // 104
    /// MXCSR the instruction runs under, and MXCSR after it.
    pub mxcsr: u32, // 112
    pub mxcsr_out: u32, // 116
}

struct Entry {
    /// Address of the stub in an executable chunk.
    code: usize,
    writes: u8,
}

#[derive(Default)]
struct Stubs {
    by_key: HashMap<(u16, u8, bool), HostForm>,
    entries: Vec<Entry>,
    arena: crate::exec_mem::ExecArena,
}

fn stubs() -> &'static RwLock<Stubs> {
    static S: OnceLock<RwLock<Stubs>> = OnceLock::new();
    S.get_or_init(|| RwLock::new(Stubs::default()))
}

/// Whether `code` is a legacy-encoded SSE..SSE4.2/AES/PCLMULQDQ form (CRC32 included) this
/// host executes and whose operands are XMM registers, GPRs, memory or imm8 (no MMX).
pub fn is_host_form(code: Code) -> bool {
    use CpuidFeature as F;
    let info = code.op_code();
    if !info.is_instruction() || !info.mode64() || info.encoding() != iced_x86::EncodingKind::Legacy
    {
        return false;
    }
    if info.op_kinds().iter().any(|k| {
        matches!(
            k,
            iced_x86::OpCodeOperandKind::mm_reg
                | iced_x86::OpCodeOperandKind::mm_rm
                | iced_x86::OpCodeOperandKind::mm_or_mem
        )
    }) {
        return false;
    }
    // Not plain operations: x87 (FISTTP), MXCSR itself, implicit memory, hints.
    if matches!(
        code.mnemonic(),
        Mnemonic::Fisttp
            | Mnemonic::Ldmxcsr
            | Mnemonic::Stmxcsr
            | Mnemonic::Maskmovdqu
            | Mnemonic::Lfence
            | Mnemonic::Mfence
            | Mnemonic::Sfence
            | Mnemonic::Prefetchnta
            | Mnemonic::Prefetcht0
            | Mnemonic::Prefetcht1
            | Mnemonic::Prefetcht2
            | Mnemonic::Movnti
    ) {
        return false;
    }
    let mut ins = Instruction::default();
    ins.set_code(code);
    let feats = ins.cpuid_features();
    let ok = |f: &CpuidFeature| match f {
        F::SSE => std::is_x86_feature_detected!("sse"),
        F::SSE2 => std::is_x86_feature_detected!("sse2"),
        F::SSE3 => std::is_x86_feature_detected!("sse3"),
        F::SSSE3 => std::is_x86_feature_detected!("ssse3"),
        F::SSE4_1 => std::is_x86_feature_detected!("sse4.1"),
        F::SSE4_2 => std::is_x86_feature_detected!("sse4.2"),
        F::AES => std::is_x86_feature_detected!("aes"),
        F::PCLMULQDQ => std::is_x86_feature_detected!("pclmulqdq"),
        _ => false,
    };
    !feats.is_empty() && feats.iter().all(ok)
}

/// The host form of `insn` (generating its stub on first use), or `None` if the host cannot
/// run it this way.
pub fn host_form(insn: &Instruction) -> Option<HostForm> {
    let mem = (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory);
    let imm = (0..insn.op_count())
        .find(|&i| insn.op_kind(i) == OpKind::Immediate8)
        .map_or(0, |i| insn.immediate(i) as u8);
    let key = (insn.code() as u16, imm, mem);
    if let Some(f) = stubs().read().ok()?.by_key.get(&key) {
        return Some(*f);
    }
    if !is_host_form(insn.code()) {
        return None;
    }
    let (bytes, writes) = encode(insn)?;
    let mut s = stubs().write().ok()?;
    if let Some(f) = s.by_key.get(&key) {
        return Some(*f);
    }
    let code = s.arena.place(&bytes)?;
    let f = HostForm {
        id: s.entries.len() as u32,
        writes,
    };
    s.entries.push(Entry { code, writes });
    s.by_key.insert(key, f);
    Some(f)
}

/// The GPR of `base`'s family with `r`'s size.
fn sized(base: Register, r: Register) -> Option<Register> {
    use Register as X;
    Some(match (base, r.size()) {
        (X::R8, 1) => X::R8L,
        (X::R8, 2) => X::R8W,
        (X::R8, 4) => X::R8D,
        (X::R8, 8) => X::R8,
        (X::R9, 1) => X::R9L,
        (X::R9, 2) => X::R9W,
        (X::R9, 4) => X::R9D,
        (X::R9, 8) => X::R9,
        _ => return None,
    })
}

/// The stub's bytes (the remapped instruction and `ret`) and what the form writes.
fn encode(insn: &Instruction) -> Option<(Vec<u8>, u8)> {
    use writes::*;
    let mut h = *insn;
    let mut w = 0;
    for i in 0..insn.op_count() {
        match insn.op_kind(i) {
            OpKind::Register => {
                let r = insn.op_register(i);
                let n = if r.is_xmm() {
                    if i == 0 {
                        w |= XMM_DST;
                        Register::XMM1
                    } else {
                        Register::XMM2
                    }
                } else if r.is_gpr() {
                    if i == 0 {
                        w |= GPR;
                    }
                    sized(if i == 0 { Register::R8 } else { Register::R9 }, r)?
                } else {
                    return None;
                };
                h.set_op_register(i, n);
            }
            OpKind::Memory => {
                if i == 0 {
                    w |= MEM;
                }
                crate::exec_mem::memory_at_rsi(&mut h);
            }
            OpKind::Immediate8 => {}
            _ => return None,
        }
    }
    h.set_has_lock_prefix(false);
    h.set_has_repe_prefix(false);
    h.set_has_repne_prefix(false);
    if insn.rflags_modified() != 0 {
        w |= FLAGS;
        // Forms that write flags read their XMM operand 0 (PTEST, PCMPxSTRx, (U)COMIS).
        w &= !XMM_DST;
    }
    match insn.mnemonic() {
        Mnemonic::Pcmpestri | Mnemonic::Pcmpestri64 | Mnemonic::Pcmpistri => w |= ECX,
        Mnemonic::Pcmpestrm | Mnemonic::Pcmpestrm64 | Mnemonic::Pcmpistrm => w |= XMM0,
        _ => {}
    }
    let mut e = Encoder::new(64);
    e.encode(&h, 0).ok()?;
    let mut bytes = e.take_buffer();
    bytes.push(0xc3); // ret
    Some((bytes, w))
}

/// Run stub `id` on `ctx` under `ctx.mxcsr` (the guest's masks); returns what the form writes
/// ([`writes`]) and whether the instruction raised an unmasked exception (then nothing but
/// MXCSR's flags changed: hardware leaves the destination alone).
pub fn run_stub(id: u32, ctx: &mut HostCtx) -> (u8, bool) {
    crate::exec_mem::install_sigfpe();
    let s = stubs()
        .read()
        .unwrap_or_else(|e| unreachable!("stub table poisoned: {e}"));
    let e = s
        .entries
        .get(id as usize)
        .unwrap_or_else(|| unreachable!("stub {id} was not generated by host_form"));
    let mut saved = 0u32;
    let marker: u64;
    // SAFETY: `e.code` is a stub in an executable chunk that stays mapped and executable while
    // we hold the read lock: one instruction (valid on this host, `is_host_form`) that reads
    // and writes only xmm0-2, rax, rcx, rdx, r8, r9, RFLAGS, MXCSR and the 16 bytes at [rsi]
    // (the context's buffer), then `ret`; if it raises #XM, `on_sigfpe` resumes at the return
    // address with r11 = FAULTED (`exec_mem::on_sigfpe`). Everything it may change is declared clobbered; the stack is
    // used only for the call's return address and pushfq (no `nostack`); the host's MXCSR is
    // saved first and restored last. DF is never touched.
    unsafe {
        std::arch::asm!(
            "stmxcsr [{saved}]",
            "ldmxcsr [{c} + 112]",
            "movdqa xmm0, [{c}]",
            "movdqa xmm1, [{c} + 16]",
            "movdqa xmm2, [{c} + 32]",
            "mov rax, [{c} + 64]",
            "mov rcx, [{c} + 72]",
            "mov rdx, [{c} + 80]",
            "mov r8, [{c} + 88]",
            "mov r9, [{c} + 96]",
            "lea rsi, [{c} + 48]",
            "call r10",
            "pushfq",
            "pop qword ptr [{c} + 104]",
            "stmxcsr [{c} + 116]",
            "ldmxcsr [{saved}]",
            "movdqa [{c}], xmm0",
            "movdqa [{c} + 16], xmm1",
            "mov [{c} + 64], rax",
            "mov [{c} + 72], rcx",
            "mov [{c} + 80], rdx",
            "mov [{c} + 88], r8",
            c = in(reg) ctx as *mut HostCtx,
            saved = in(reg) &mut saved as *mut u32,
            in("r10") e.code,
            inout("r11") crate::exec_mem::IN_STUB => marker,
            out("rax") _,
            out("rcx") _,
            out("rdx") _,
            out("rsi") _,
            out("r8") _,
            out("r9") _,
            out("xmm0") _,
            out("xmm1") _,
            out("xmm2") _,
        );
    }
    (e.writes, marker == crate::exec_mem::FAULTED)
}

/// Raise the #XM of an unmasked SIMD floating-point exception (#UD without
/// CR4.OSXMMEXCPT).
pub fn raise_xm(cpu: &mut CpuState) {
    let vector = if cpu.cr4 & CR4_OSXMMEXCPT != 0 {
        vector::XM
    } else {
        vector::UD
    };
    cpu.exec.exception = ExceptionRecord::fault(vector, None);
    cpu.exec.helper_status = Outcome::Fault;
}

/// The [`Helper::SseHost`](crate::sem::Helper::SseHost) entry: `args` = [stub id (from
/// [`host_form`]), destination XMM number | other XMM number << 4, the value of a GPR
/// operand 0]. The r/m operand (memory bytes or a GPR's value) is in `cpu.scratch[2..4]`.
/// Writes the XMM destination, XMM0 and MXCSR's flags in `cpu`; returns the GPR result, the
/// bytes to store, or the arithmetic flags with ECX in bits 32-63 (see [`writes`]).
pub fn sse_host_helper(cpu: &mut CpuState, args: [u64; 3]) -> u64 {
    let [id, regs, gpr] = args;
    let dst = (regs & 15) as usize;
    let src = ((regs >> 4) & 15) as usize;
    let r = [cpu.exec.scratch[2], cpu.exec.scratch[3]];
    let mut ctx = HostCtx {
        xmm: [cpu.xmm[0], cpu.xmm[dst], cpu.xmm[src]],
        mem: r,
        rax: cpu.gpr[RAX],
        rcx: cpu.gpr[RCX],
        rdx: cpu.gpr[RDX],
        r8: gpr,
        r9: r[0],
        rflags: 0,
        // The guest's MXCSR without flags: an unmasked exception traps as on hardware.
        mxcsr: cpu.mxcsr & !0x3f,
        mxcsr_out: 0,
    };
    let (w, faulted) = run_stub(id as u32, &mut ctx);
    cpu.mxcsr |= ctx.mxcsr_out & 0x3f;
    if faulted {
        raise_xm(cpu);
        return 0;
    }
    if w & writes::XMM_DST != 0 {
        cpu.xmm[dst] = ctx.xmm[1];
    }
    if w & writes::XMM0 != 0 {
        cpu.xmm[0] = ctx.xmm[0];
    }
    if w & writes::GPR != 0 {
        ctx.r8
    } else if w & writes::MEM != 0 {
        ctx.mem[0]
    } else if w & writes::FLAGS != 0 {
        let ecx = if w & writes::ECX != 0 {
            ctx.rcx & 0xffff_ffff
        } else {
            0
        };
        (ctx.rflags & rflags::ARITH) | ecx << 32
    } else {
        0
    }
}
