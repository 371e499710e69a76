//! What krr prints about CPU state: register lines, instruction bytes and disassembly, and the
//! progress bar shared by the long-running commands.

use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use krr_runtime::{gpr, rflags, Core, CpuState};
use std::io::{IsTerminal, Write};

/// `rax=... rbx=... ... r15=... rflags=...` with RFLAGS made concrete.
pub fn regs_line(cpu: &CpuState) -> String {
    let flags = cpu.rflags_value();
    regs_line_with(&cpu.gpr, flags)
}

pub fn regs_line_with(regs: &[u64; 16], flags: u64) -> String {
    let mut s = String::with_capacity(400);
    for (i, r) in regs.iter().enumerate() {
        s.push_str(&format!("{}={r:#x} ", gpr::NAMES[i]));
    }
    s.push_str(&format!("rflags={:#x}", flags | rflags::FIXED1));
    s
}

/// The instruction at `rip`: its bytes in hex and its AT&T disassembly (as objdump prints
/// it), or a note saying why it cannot be fetched.
pub fn describe_insn(core: &mut Core, rip: u64) -> (String, String) {
    let mut bytes = [0u8; 15];
    let n = match core.fetch_code(rip, &mut bytes) {
        Ok(n) => n,
        Err(_) => {
            // Try a shorter fetch: the instruction may end before an unmapped page.
            let room = (0x1000 - (rip & 0xfff)) as usize;
            let mut short = [0u8; 15];
            match core.fetch_code(rip, &mut short[..room.min(15)]) {
                Ok(n) => {
                    bytes = short;
                    n
                }
                Err(_) => return (String::new(), "(instruction not mapped)".to_string()),
            }
        }
    };
    let bitness = krr_jit::mode::code_bitness(core.cpu());
    let mut d = Decoder::with_ip(bitness, &bytes[..n], rip, DecoderOptions::NONE);
    let insn = d.decode();
    if insn.is_invalid() {
        let hex: Vec<String> = bytes[..n.min(8)]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        return (hex.join(" "), "(bad)".to_string());
    }
    let hex: Vec<String> = bytes[..insn.len()]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut text = String::new();
    GasFormatter::new().format(&insn, &mut text);
    (hex.join(" "), text)
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
pub fn progress(total: Option<u64>) -> ProgressBar {
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
        return pb;
    }
    let template = if total.is_some() {
        "{elapsed_precise} [{bar:30}] {percent:>3}% {msg}"
    } else {
        "{elapsed_precise} {spinner} {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Guest console output that keeps the progress bar intact: the bar is hidden while a line
/// is written.
pub struct Console {
    bar: ProgressBar,
    out: std::io::Stdout,
}

impl Console {
    pub fn new(bar: ProgressBar) -> Console {
        Console {
            bar,
            out: std::io::stdout(),
        }
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let out = &mut self.out;
        self.bar.suspend(|| out.write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
