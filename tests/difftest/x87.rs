//! The x87/MMX part of the comparison: the FXSAVE image's FCW, FSW (C0-C3, TOP, ES, SF, B and
//! every exception flag), the abridged tag word and ST0-7/MM0-7 (all 80 bits, so an MMX
//! write's exponent of all ones is compared too), and FIP/FDP/FOP where the host shows them.
//!
//! FIP, FDP and FOP: this host (AMD) stores zeros for them in FXSAVE/XSAVE images unless an
//! exception is pending (FSW.ES), so they are compared only when the native run ended with
//! ES set. FNSTENV/FNSAVE write the real pointers; [`unobservable_memory`] names the
//! bytes of such an image that are not compared.

use krr_jit::snippet::{Snippet, SnippetResult, UserState};
use krr_runtime::X87State;
use std::fmt::Write;

/// The differences between the native and the engine's x87 state.
pub fn differences(native: &SnippetResult, engine: &SnippetResult) -> Vec<String> {
    let (n, e) = (&native.state.x87, &engine.state.x87);
    let mut d = Vec::new();
    let mut word = |name: &str, a: u64, b: u64| {
        if a != b {
            d.push(format!("{name:<6} native={a:#x} engine={b:#x}"));
        }
    };
    word("fcw", n.fcw as u64, e.fcw as u64);
    word("fsw", n.fsw as u64, e.fsw as u64);
    word("ftw", n.ftw as u64, e.ftw as u64);
    if n.fsw & 0x80 != 0 {
        word("fop", n.fop as u64, e.fop as u64);
        word("fip", n.fip, e.fip);
        word("fdp", n.fdp, e.fdp);
    }
    for i in 0..8 {
        if n.st[i][..10] != e.st[i][..10] {
            d.push(format!(
                "st{i} (FXSAVE slot {i}) native={} engine={}",
                ext_str(&n.st[i]),
                ext_str(&e.st[i])
            ));
        }
    }
    d
}

/// An 80-bit register as `sign:exponent:mantissa` in hex.
pub fn ext_str(v: &[u8; 16]) -> String {
    let se = u16::from_le_bytes([v[8], v[9]]);
    let m = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
    format!("{se:04x}:{m:016x}")
}

/// The x87 lines of a state dump.
pub fn state_str(x: &X87State, indent: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{indent}fcw={:#06x} fsw={:#06x} (top {}) ftw={:#04x} fop={:#x} fip={:#x} fdp={:#x}",
        x.fcw,
        x.fsw,
        (x.fsw >> 11) & 7,
        x.ftw,
        x.fop,
        x.fip,
        x.fdp
    );
    let _ = write!(s, "{indent}st:  ");
    for (i, st) in x.st.iter().enumerate() {
        if i == 4 {
            let _ = write!(s, "\n{indent}     ");
        }
        let _ = write!(s, " {i}={}", ext_str(st));
    }
    s.push('\n');
    s
}

/// Whether any instruction of `snippet` is an x87 or MMX form (dumps show the x87 state only
/// then).
pub fn uses_x87(snippet: &Snippet) -> bool {
    super::compare::decode(snippet)
        .iter()
        .any(|i| super::gen::is_x87_or_mmx(i.code()))
}

/// Memory bytes of the snippet's FNSTENV/FNSAVE images not compared: the last instruction
/// and data pointers (FIP, FOP, FDP) when no earlier instruction of the snippet set them
/// (natively they are what the kernel's XRSTOR64 left: zeros, or with an exception pending
/// the restored ones; in the engine the initial state's), and always the selectors FCS and
/// FDS: krr writes the current CS and DS, the host those of the last x87 instruction (0 after
/// FNINIT or XRSTOR64, the image's after FLDENV/FRSTOR).
pub fn unobservable_memory(snippet: &Snippet, init: &UserState) -> Vec<(u64, u64)> {
    use iced_x86::{InstructionInfoFactory, Mnemonic as M, OpAccess};
    let mut out = Vec::new();
    let mut info = InstructionInfoFactory::new();
    let mut pointers_set = false;
    for ins in super::compare::decode(snippet) {
        let mn = ins.mnemonic();
        let env = matches!(mn, M::Fnstenv | M::Fnsave | M::Fstenv | M::Fsave);
        if env {
            let mem = info
                .info(&ins)
                .used_memory()
                .iter()
                .find(|m| m.access() != OpAccess::NoMemAccess)
                .copied();
            if let Some(addr) = mem
                .and_then(|m| m.virtual_address(0, |r, _, _| Some(super::gen::read_reg(init, r))))
            {
                // FIP, FCS|FOP, FDP, FDS.
                let wide = matches!(ins.memory_size().size(), 28 | 108);
                let (at, len, fcs, fds) = if wide {
                    (12, 12, 16, 24)
                } else {
                    (6, 6, 8, 12)
                };
                if !pointers_set {
                    out.push((addr + at, len));
                }
                out.push((addr + fcs, 2));
                out.push((addr + fds, 2));
            }
        }
        if super::gen::is_x87(ins.code()) && !env && !x87_control(mn) {
            pointers_set = true;
        }
    }
    out
}

/// The x87 control instructions (and the 8087/287 ones, no-ops here), which leave FIP, FDP
/// and FOP alone.
fn x87_control(m: iced_x86::Mnemonic) -> bool {
    use iced_x86::Mnemonic as M;
    matches!(
        m,
        M::Fninit
            | M::Fnclex
            | M::Fldcw
            | M::Fnstcw
            | M::Fnstsw
            | M::Fldenv
            | M::Frstor
            | M::Fstcw
            | M::Fstsw
            | M::Finit
            | M::Fclex
            | M::Wait
            | M::Fneni
            | M::Fndisi
            | M::Fnsetpm
    )
}
