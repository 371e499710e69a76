//! The host stubs of the VEX instructions: the guest instruction re-encoded (iced-x86's
//! `Encoder`) with its vector registers as they are (the stub runs with all sixteen YMM
//! registers loaded from the guest's), its memory operand at `[rsi]` (a 32-byte buffer), a
//! GPR operand 0 in r8 and another GPR operand in r9, followed by `ret`. One stub per
//! (iced `Code`, register operands, imm8, register or memory form), generated once into
//! executable memory and cached.

use crate::exec_mem::ExecArena;
use iced_x86::{Code, Encoder, Instruction, OpKind, Register};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// The largest VEX memory operand (a YMM register's worth).
pub(super) const MEM_MAX: usize = 32;

/// What a stub runs on: the YMM registers (quadwords 0-3 of each), the memory operand, the
/// two GPR operands, RFLAGS after it, and MXCSR in and out. Field offsets are used by
/// [`run`]'s assembly.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct YmmCtx {
    pub ymm: [[u64; 4]; 16], // 0
    pub mem: [u8; MEM_MAX],  // 512
    pub r8: u64,             // 544
    pub r9: u64,             // 552
    pub rflags: u64,         // 560
    pub mxcsr: u32,          // 568
    pub mxcsr_out: u32,      // 572
    /// The implicit RAX, RDX (in) and ECX (out) of VPCMPESTRI/VPCMPISTRI and relatives.
    pub rax: u64, // 576
    pub rcx: u64,            // 584
    pub rdx: u64,            // 592
}

type Key = (Code, [Register; 4], u8, bool);

#[derive(Default)]
struct Stubs {
    by_key: HashMap<Key, usize>,
    arena: ExecArena,
}

fn stubs() -> &'static RwLock<Stubs> {
    static S: OnceLock<RwLock<Stubs>> = OnceLock::new();
    S.get_or_init(|| RwLock::new(Stubs::default()))
}

/// `r` (a 32- or 64-bit GPR) moved to r8 (`first`) or r9 with the same size.
fn sized(first: bool, r: Register) -> Option<Register> {
    use Register as X;
    Some(match (first, r.size()) {
        (true, 4) => X::R8D,
        (true, 8) => X::R8,
        (false, 4) => X::R9D,
        (false, 8) => X::R9,
        _ => return None,
    })
}

/// The stub of `insn` (see the module documentation), or `None` if it cannot be encoded.
pub(super) fn stub(insn: &Instruction) -> Option<usize> {
    let mem = (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory);
    let reg = |i: u32| {
        if i < insn.op_count() && insn.op_kind(i) == OpKind::Register {
            insn.op_register(i)
        } else {
            Register::None
        }
    };
    let imm = (0..insn.op_count())
        .find(|&i| insn.op_kind(i) == OpKind::Immediate8)
        .map_or(0, |i| insn.immediate(i) as u8);
    let key = (insn.code(), [reg(0), reg(1), reg(2), reg(3)], imm, mem);
    if let Some(&a) = stubs().read().ok()?.by_key.get(&key) {
        return Some(a);
    }
    let mut h = *insn;
    if mem {
        crate::exec_mem::memory_at_rsi(&mut h);
    }
    for i in 0..insn.op_count() {
        let r = reg(i);
        if r.is_gpr() {
            h.set_op_register(i, sized(i == 0, r)?);
        }
    }
    let mut e = Encoder::new(64);
    e.encode(&h, 0).ok()?;
    let mut bytes = e.take_buffer();
    bytes.push(0xc3); // ret
    let mut s = stubs().write().ok()?;
    if let Some(&a) = s.by_key.get(&key) {
        return Some(a);
    }
    let a = s.arena.place(&bytes)?;
    s.by_key.insert(key, a);
    Some(a)
}

/// Run the stub at `code` on `ctx` under `ctx.mxcsr`; returns whether the instruction raised
/// an unmasked SIMD floating-point exception (then only MXCSR's flags changed).
pub(super) fn run(code: usize, ctx: &mut YmmCtx) -> bool {
    crate::exec_mem::install_sigfpe();
    let _lock = stubs().read();
    let mut saved = 0u32;
    let marker: u64;
    // SAFETY: `code` is a stub in an executable chunk that stays mapped and executable while
    // we hold the table's read lock: one VEX instruction the host has (the model reports it
    // only then, `cpuid_gate`) that reads and writes only ymm0-15, rax, rcx, rdx, r8, r9, RFLAGS, MXCSR and
    // at most MEM_MAX bytes at [rsi] (the context's buffer; gathers and masked moves never get
    // here), then `ret`. If it raises #XM, `exec_mem::on_sigfpe` resumes at the return
    // address with r11 = FAULTED. Every vector register is declared clobbered and the host's
    // MXCSR is saved first and restored last; VZEROUPPER leaves no dirty upper state behind.
    // The stack holds the call's return address and the flags word.
    unsafe {
        std::arch::asm!(
            "stmxcsr [{saved}]",
            "ldmxcsr [{c} + 568]",
            "vmovdqu ymm0, [{c}]",
            "vmovdqu ymm1, [{c} + 32]",
            "vmovdqu ymm2, [{c} + 64]",
            "vmovdqu ymm3, [{c} + 96]",
            "vmovdqu ymm4, [{c} + 128]",
            "vmovdqu ymm5, [{c} + 160]",
            "vmovdqu ymm6, [{c} + 192]",
            "vmovdqu ymm7, [{c} + 224]",
            "vmovdqu ymm8, [{c} + 256]",
            "vmovdqu ymm9, [{c} + 288]",
            "vmovdqu ymm10, [{c} + 320]",
            "vmovdqu ymm11, [{c} + 352]",
            "vmovdqu ymm12, [{c} + 384]",
            "vmovdqu ymm13, [{c} + 416]",
            "vmovdqu ymm14, [{c} + 448]",
            "vmovdqu ymm15, [{c} + 480]",
            "mov r8, [{c} + 544]",
            "mov r9, [{c} + 552]",
            "mov rax, [{c} + 576]",
            "mov rcx, [{c} + 584]",
            "mov rdx, [{c} + 592]",
            "lea rsi, [{c} + 512]",
            "call r10",
            "pushfq",
            "pop qword ptr [{c} + 560]",
            "stmxcsr [{c} + 572]",
            "ldmxcsr [{saved}]",
            "vmovdqu [{c}], ymm0",
            "vmovdqu [{c} + 32], ymm1",
            "vmovdqu [{c} + 64], ymm2",
            "vmovdqu [{c} + 96], ymm3",
            "vmovdqu [{c} + 128], ymm4",
            "vmovdqu [{c} + 160], ymm5",
            "vmovdqu [{c} + 192], ymm6",
            "vmovdqu [{c} + 224], ymm7",
            "vmovdqu [{c} + 256], ymm8",
            "vmovdqu [{c} + 288], ymm9",
            "vmovdqu [{c} + 320], ymm10",
            "vmovdqu [{c} + 352], ymm11",
            "vmovdqu [{c} + 384], ymm12",
            "vmovdqu [{c} + 416], ymm13",
            "vmovdqu [{c} + 448], ymm14",
            "vmovdqu [{c} + 480], ymm15",
            "mov [{c} + 544], r8",
            "mov [{c} + 584], rcx",
            "vzeroupper",
            c = in(reg) ctx as *mut YmmCtx,
            saved = in(reg) &mut saved as *mut u32,
            in("r10") code,
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
            out("xmm3") _,
            out("xmm4") _,
            out("xmm5") _,
            out("xmm6") _,
            out("xmm7") _,
            out("xmm8") _,
            out("xmm9") _,
            out("xmm10") _,
            out("xmm11") _,
            out("xmm12") _,
            out("xmm13") _,
            out("xmm14") _,
            out("xmm15") _,
        );
    }
    marker == crate::exec_mem::FAULTED
}
