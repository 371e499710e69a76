//! Compares a native run with an engine run of the same snippet, ignoring what the architecture
//! leaves undefined, and renders readable reports.

use super::gen::{read_reg, CODE_PAGE};
use iced_x86::{
    Code, Decoder, DecoderOptions, Formatter, Instruction, InstructionInfoFactory, IntelFormatter,
    Mnemonic, OpAccess, OpKind, Register, RflagsBits,
};
use krr_jit::snippet::{Snippet, SnippetEnd, SnippetResult, UserState};
use std::fmt::Write;

pub use krr_runtime::arch::rflags::{AC, AF, CF, DF, IF, OF, PF, RF, SF, TF, ZF};
pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;

/// Converts iced-x86 [`RflagsBits`] to RFLAGS bit positions.
pub fn x86_flags(iced: u32) -> u64 {
    let map = [
        (RflagsBits::OF, OF),
        (RflagsBits::SF, SF),
        (RflagsBits::ZF, ZF),
        (RflagsBits::AF, AF),
        (RflagsBits::CF, CF),
        (RflagsBits::PF, PF),
        (RflagsBits::DF, DF),
        (RflagsBits::IF, IF),
        (RflagsBits::AC, AC),
    ];
    map.iter()
        .filter(|(i, _)| iced & i != 0)
        .fold(0, |acc, (_, x)| acc | x)
}

pub fn flag_names(flags: u64) -> String {
    let names = [
        (CF, "CF"),
        (1 << 1, "1"),
        (PF, "PF"),
        (AF, "AF"),
        (ZF, "ZF"),
        (SF, "SF"),
        (TF, "TF"),
        (IF, "IF"),
        (DF, "DF"),
        (OF, "OF"),
        (3 << 12, "IOPL"),
        (1 << 14, "NT"),
        (RF, "RF"),
        (1 << 17, "VM"),
        (AC, "AC"),
        (1 << 19, "VIF"),
        (1 << 20, "VIP"),
        (1 << 21, "ID"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join(" ")
}

/// How one instruction affects the status flags, for the undefined-flags analysis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlagEffect {
    /// Flags certainly given a defined value.
    pub defined: u64,
    /// Flags that may be left with an architecturally undefined value.
    pub undefined: u64,
    /// The destination is architecturally undefined (16-bit SHLD/SHRD with count > 16).
    pub undefined_result: bool,
}

/// The effect of `ins` on the flags. `state` is the register state just before it executes,
/// when known (the first instruction of a snippet); it makes count-dependent shift and rotate
/// effects exact, otherwise they are approximated conservatively.
pub fn flag_effect(ins: &Instruction, state: Option<&UserState>) -> FlagEffect {
    let defined = x86_flags(ins.rflags_written() | ins.rflags_cleared() | ins.rflags_set());
    let undefined = x86_flags(ins.rflags_undefined());
    let mn = ins.mnemonic();
    let is_shift = matches!(
        mn,
        Mnemonic::Shl | Mnemonic::Sal | Mnemonic::Shr | Mnemonic::Sar
    );
    let is_rotate = matches!(
        mn,
        Mnemonic::Rol | Mnemonic::Ror | Mnemonic::Rcl | Mnemonic::Rcr
    );
    let is_double = matches!(mn, Mnemonic::Shld | Mnemonic::Shrd);
    if (ins.has_rep_prefix() || ins.has_repne_prefix()) && ins.rflags_modified() != 0 {
        // A REP CMPS/SCAS with RCX = 0 runs no iteration and leaves every flag as it was, so it
        // certainly defines none (earlier undefined flags stay undefined).
        return FlagEffect {
            defined: 0,
            undefined,
            undefined_result: false,
        };
    }
    if !(is_shift || is_rotate || is_double) {
        return FlagEffect {
            defined,
            undefined,
            undefined_result: false,
        };
    }
    let width = operand_bits(ins);
    let count_op = ins.op_count() - 1;
    let count = match ins.op_kind(count_op) {
        OpKind::Register => state.map(|s| read_reg(s, ins.op_register(count_op))),
        _ => Some(ins.immediate(count_op)),
    };
    let written = STATUS & !(if is_rotate { PF | ZF | SF | AF } else { 0 });
    let Some(count) = count else {
        // Unknown count: 0 leaves all flags alone, so nothing is certainly written; anything the
        // instruction may write with an undefined value is undefined.
        let mut undefined = undefined | OF | if is_rotate { 0 } else { AF };
        if is_shift && mn != Mnemonic::Sar && width < 32 {
            undefined |= CF;
        }
        if is_double && width == 16 {
            undefined |= STATUS;
        }
        return FlagEffect {
            defined: 0,
            undefined,
            undefined_result: is_double && width == 16,
        };
    };
    let count = count & if width == 64 { 63 } else { 31 };
    if count == 0 {
        return FlagEffect::default();
    }
    let mut undefined = if count == 1 { 0 } else { OF };
    if !is_rotate {
        undefined |= AF;
    }
    if is_shift && mn != Mnemonic::Sar && count >= width as u64 {
        undefined |= CF;
    }
    let undefined_result = is_double && width == 16 && count > 16;
    if undefined_result {
        undefined |= STATUS;
    }
    FlagEffect {
        defined: written & !undefined,
        undefined,
        undefined_result,
    }
}

/// Operand size in bits of the first operand.
pub fn operand_bits(ins: &Instruction) -> u32 {
    match ins.op_kind(0) {
        OpKind::Register => ins.op_register(0).size() as u32 * 8,
        _ => ins.memory_size().size() as u32 * 8,
    }
}

/// Decodes the snippet's code.
pub fn decode(snippet: &Snippet) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, &snippet.code, snippet.code_addr, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        out.push(decoder.decode());
    }
    out
}

/// What the comparison ignores.
#[derive(Clone, Debug, Default)]
pub struct Masks {
    /// RFLAGS bits not compared.
    pub rflags: u64,
    /// Per GPR, bits not compared.
    pub gpr: [u64; 16],
    /// Memory ranges not compared.
    pub mem: Vec<(u64, u64)>,
}

/// Computes what is architecturally undefined after running `snippet` from `init` up to the
/// native outcome (instructions from the faulting one on are not considered).
pub fn undefined_masks(snippet: &Snippet, init: &UserState, native: &SnippetEnd) -> Masks {
    let stop_at = match native {
        SnippetEnd::Exception { rip, .. } => Some(*rip),
        _ => None,
    };
    let mut masks = Masks {
        rflags: RF,
        ..Masks::default()
    };
    let mut poisoned = 0u64;
    let mut info = InstructionInfoFactory::new();
    for (i, ins) in decode(snippet).iter().enumerate() {
        if Some(ins.ip()) == stop_at {
            break;
        }
        if ins.code() == Code::Bswap_r16 {
            // Architecturally undefined (this CPU clears the low word).
            masks.gpr[gpr_index(ins.op_register(0))] |= 0xffff;
        }
        let effect = flag_effect(ins, if i == 0 { Some(init) } else { None });
        poisoned = (poisoned & !effect.defined) | effect.undefined;
        if effect.undefined_result {
            match ins.op_kind(0) {
                OpKind::Register => {
                    let reg = ins.op_register(0);
                    masks.gpr[gpr_index(reg)] |= 0xffff;
                }
                _ => {
                    // Only exact for the first instruction; later ones are never generated so.
                    let mem = info
                        .info(ins)
                        .used_memory()
                        .iter()
                        .find(|m| m.access() != OpAccess::NoMemAccess);
                    if let Some(addr) =
                        mem.and_then(|m| m.virtual_address(0, |r, _, _| Some(read_reg(init, r))))
                    {
                        masks.mem.push((addr, 2));
                    }
                }
            }
        }
    }
    masks.rflags |= poisoned;
    masks
        .mem
        .extend(super::x87::unobservable_memory(snippet, init));
    masks
}

fn gpr_index(reg: Register) -> usize {
    reg.full_register() as usize - Register::RAX as usize
}

/// Compares the native result with the engine's. Returns a full report on mismatch.
pub fn compare(
    snippet: &Snippet,
    init: &UserState,
    native: &SnippetResult,
    engine: &SnippetResult,
) -> Result<(), String> {
    let diffs = differences(snippet, init, native, engine);
    if diffs.is_empty() {
        return Ok(());
    }
    let mut s = describe_case(snippet, init);
    let _ = writeln!(s, "native: {}", outcome_str(&native.outcome));
    let _ = writeln!(s, "engine: {}", outcome_str(&engine.outcome));
    let _ = writeln!(s, "differences:");
    for d in &diffs {
        let _ = writeln!(s, "  {d}");
    }
    let x87 = super::x87::uses_x87(snippet);
    let _ = writeln!(s, "native final state:");
    s.push_str(&state_str(&native.state, "  "));
    if x87 {
        s.push_str(&super::x87::state_str(&native.state.x87, "  "));
    }
    let _ = writeln!(s, "engine final state:");
    s.push_str(&state_str(&engine.state, "  "));
    if x87 {
        s.push_str(&super::x87::state_str(&engine.state.x87, "  "));
    }
    Err(s)
}

/// The list of differences (empty when the runs agree).
pub fn differences(
    snippet: &Snippet,
    init: &UserState,
    native: &SnippetResult,
    engine: &SnippetResult,
) -> Vec<String> {
    let mut d = Vec::new();
    match (&native.outcome, &engine.outcome) {
        (SnippetEnd::OutOfBudget, SnippetEnd::OutOfBudget) => return d,
        (SnippetEnd::Completed, SnippetEnd::Completed) => {}
        (
            SnippetEnd::Exception {
                vector: nv,
                error_code: nc,
                address: na,
                rip: nr,
            },
            SnippetEnd::Exception {
                vector: ev,
                error_code: ec,
                address: ea,
                rip: er,
            },
        ) => {
            if nv != ev {
                d.push(format!("exception vector: native={nv} engine={ev}"));
            } else {
                if *nv == 14 && na != ea {
                    d.push(format!("#PF address: native={na:#x} engine={ea:#x}"));
                }
                d.extend(error_code_difference(*ev, *nc, *ec));
            }
            if nr != er {
                d.push(format!("exception rip: native={nr:#x} engine={er:#x}"));
            }
        }
        (n, e) => {
            d.push(format!(
                "outcome: native={} engine={}",
                outcome_str(n),
                outcome_str(e)
            ));
            return d;
        }
    }
    let masks = undefined_masks(snippet, init, &native.outcome);
    let (n, e) = (&native.state, &engine.state);
    for (i, name) in GPR_NAMES.iter().enumerate() {
        if (n.gpr[i] ^ e.gpr[i]) & !masks.gpr[i] != 0 {
            d.push(format!(
                "{name:<6} native={:#018x} engine={:#018x}",
                n.gpr[i], e.gpr[i]
            ));
        }
    }
    if n.rip != e.rip {
        d.push(format!(
            "rip    native={:#018x} engine={:#018x}",
            n.rip, e.rip
        ));
    }
    let flag_diff = (n.rflags ^ e.rflags) & !masks.rflags;
    if flag_diff != 0 {
        d.push(format!(
            "rflags native={:#x} [{}] engine={:#x} [{}]; differing: {} (not compared: {})",
            n.rflags,
            flag_names(n.rflags),
            e.rflags,
            flag_names(e.rflags),
            flag_names(flag_diff),
            flag_names(masks.rflags)
        ));
    }
    for i in 0..16 {
        if n.xmm[i] != e.xmm[i] {
            d.push(format!(
                "xmm{i:<3} native={:#034x} engine={:#034x}",
                n.xmm[i], e.xmm[i]
            ));
        }
    }
    for i in 0..16 {
        if n.ymm_hi[i] != e.ymm_hi[i] {
            d.push(format!(
                "ymm{i:<3} bits 255:128 native={:#034x} engine={:#034x}",
                n.ymm_hi[i], e.ymm_hi[i]
            ));
        }
    }
    if n.mxcsr != e.mxcsr {
        d.push(format!(
            "mxcsr  native={:#x} engine={:#x}",
            n.mxcsr, e.mxcsr
        ));
    }
    d.extend(super::x87::differences(native, engine));
    if n.fs_base != e.fs_base || n.gs_base != e.gs_base {
        d.push(format!(
            "fs/gs base native={:#x}/{:#x} engine={:#x}/{:#x}",
            n.fs_base, n.gs_base, e.fs_base, e.gs_base
        ));
    }
    if native.regions.len() != engine.regions.len() {
        d.push(format!(
            "region count native={} engine={}",
            native.regions.len(),
            engine.regions.len()
        ));
        return d;
    }
    for (nr, er) in native.regions.iter().zip(&engine.regions) {
        if nr.addr != er.addr || nr.data.len() != er.data.len() {
            d.push(format!(
                "region shape native={:#x}+{:#x} engine={:#x}+{:#x}",
                nr.addr,
                nr.data.len(),
                er.addr,
                er.data.len()
            ));
            continue;
        }
        let ignored = |addr: u64| masks.mem.iter().any(|&(a, l)| addr >= a && addr < a + l);
        let mut shown = 0;
        let mut off = 0;
        while off < nr.data.len() {
            let addr = nr.addr + off as u64;
            if nr.data[off] != er.data[off] && !ignored(addr) {
                // Show a 16-byte line around the first differing byte.
                let start = off & !15;
                let end = (start + 16).min(nr.data.len());
                if shown < 4 {
                    d.push(format!(
                        "mem {:#x}: native={} engine={}",
                        nr.addr + start as u64,
                        hex(&nr.data[start..end]),
                        hex(&er.data[start..end])
                    ));
                }
                shown += 1;
                off = end;
                continue;
            }
            off += 1;
        }
        if shown > 4 {
            d.push(format!(
                "... {} more differing memory lines in region {:#x}",
                shown - 4,
                nr.addr
            ));
        }
    }
    d
}

/// Whether exception `vector` pushes an error code (#DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP).
pub fn pushes_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21)
}

/// Compares the error codes of one exception `vector` (equal in both runs): the engine must
/// report one exactly when the vector pushes one, and where the native run observed bits of it
/// (#PF: P and U, see [`super::native::PF_OBSERVABLE`]) they must agree. The native side does
/// not observe #GP/#SS/#AC error codes (`None`), so those are checked for presence only.
pub fn error_code_difference(
    vector: u8,
    native: Option<u32>,
    engine: Option<u32>,
) -> Option<String> {
    if engine.is_some() != pushes_error_code(vector) {
        return Some(format!(
            "error code: vector {vector} {} one, engine reports {engine:?}",
            if pushes_error_code(vector) {
                "pushes"
            } else {
                "pushes no"
            }
        ));
    }
    match (vector, native, engine) {
        (14, Some(n), Some(e)) if (n ^ e) & super::native::PF_OBSERVABLE != 0 => Some(format!(
            "#PF error code: native={n:#x} engine={e:#x} (compared bits {:#x}: P, U)",
            super::native::PF_OBSERVABLE
        )),
        (14, None, _) => Some("#PF error code: the native run reported none".into()),
        _ => None,
    }
}

pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

pub fn hex(bytes: &[u8]) -> String {
    let v: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    v.join(" ")
}

pub fn outcome_str(o: &SnippetEnd) -> String {
    match o {
        SnippetEnd::Completed => "Completed".into(),
        SnippetEnd::OutOfBudget => "OutOfBudget (native: timed out)".into(),
        SnippetEnd::Exception {
            vector,
            error_code,
            address,
            rip,
        } => {
            let name = match vector {
                0 => "#DE",
                1 => "#DB",
                3 => "#BP",
                6 => "#UD",
                12 => "#SS",
                13 => "#GP",
                14 => "#PF",
                16 => "#MF",
                17 => "#AC",
                19 => "#XM",
                _ => "#?",
            };
            let ec = error_code
                .map(|e| format!(" error_code={e:#x}"))
                .unwrap_or_default();
            if *vector == 14 {
                format!("{name} ({vector}) at rip={rip:#x} address={address:#x}{ec}")
            } else {
                format!("{name} ({vector}) at rip={rip:#x}{ec}")
            }
        }
    }
}

/// Disassembly of the snippet (with bytes) plus the initial state, for reports.
pub fn describe_case(snippet: &Snippet, init: &UserState) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "code @{:#x} ({} bytes, then INT3): {}",
        snippet.code_addr,
        snippet.code.len(),
        hex(&snippet.code)
    );
    let mut formatter = IntelFormatter::new();
    formatter.options_mut().set_first_operand_char_index(10);
    let mut info = InstructionInfoFactory::new();
    for (i, ins) in decode(snippet).iter().enumerate() {
        let off = (ins.ip() - snippet.code_addr) as usize;
        let bytes = &snippet.code[off..off + ins.len()];
        let mut text = String::new();
        formatter.format(ins, &mut text);
        let _ = writeln!(
            s,
            "  {:#x}  {:<32} {:<40} ; {:?}{}",
            ins.ip(),
            hex(bytes),
            text,
            ins.code(),
            if ins.code() == Code::INVALID {
                " (invalid)"
            } else {
                ""
            }
        );
        if i == 0 {
            // Initial memory contents at the first instruction's data accesses.
            for m in info.info(ins).used_memory() {
                if m.access() == OpAccess::NoMemAccess {
                    continue;
                }
                if let Some(addr) = m.virtual_address(0, |r, _, _| Some(read_reg(init, r))) {
                    if let Some(bytes) = region_bytes(snippet, addr, 16) {
                        let _ = writeln!(s, "    initial memory at {addr:#x}: {}", hex(&bytes));
                    } else {
                        let _ = writeln!(s, "    accesses {addr:#x} (outside the regions)");
                    }
                }
            }
        }
    }
    let _ = writeln!(s, "initial state:");
    s.push_str(&state_str(init, "  "));
    if super::x87::uses_x87(snippet) {
        s.push_str(&super::x87::state_str(&init.x87, "  "));
    }
    let regions: Vec<String> = snippet
        .regions
        .iter()
        .map(|r| format!("{:#x}+{:#x}", r.addr, r.data.len()))
        .collect();
    let _ = writeln!(
        s,
        "  regions: {} (code page {CODE_PAGE:#x})",
        regions.join(", ")
    );
    s
}

fn region_bytes(snippet: &Snippet, addr: u64, len: usize) -> Option<Vec<u8>> {
    snippet.regions.iter().find_map(|r| {
        let off = addr.checked_sub(r.addr)? as usize;
        (off < r.data.len()).then(|| r.data[off..(off + len).min(r.data.len())].to_vec())
    })
}

pub fn state_str(st: &UserState, indent: &str) -> String {
    let mut s = String::new();
    for row in 0..4 {
        let _ = write!(s, "{indent}");
        for col in 0..4 {
            let i = row * 4 + col;
            let _ = write!(s, "{:>3}={:#018x} ", GPR_NAMES[i], st.gpr[i]);
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "{indent}rip={:#x} rflags={:#x} [{}] mxcsr={:#x} fs_base={:#x} gs_base={:#x}",
        st.rip,
        st.rflags,
        flag_names(st.rflags),
        st.mxcsr,
        st.fs_base,
        st.gs_base
    );
    for row in 0..8 {
        let _ = write!(s, "{indent}");
        for col in 0..2 {
            let i = row * 2 + col;
            let _ = write!(s, "xmm{i:<2}={:#034x} ", st.xmm[i]);
        }
        s.push('\n');
    }
    s
}
