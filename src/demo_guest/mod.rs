//! The built-in system guest of `krr demo`: a tiny kernel and user program assembled at run
//! time with iced-x86's code assembler (nothing downloaded, no files), run on krr's PC
//! ([`Machine`]) with its real devices.
//!
//! [`load`] plays the boot loader: like the Linux 64-bit boot protocol it leaves the CPU in
//! long mode at CPL0 with interrupts off, a flat boot GDT and boot page tables identity-mapping
//! the first 8 MiB with supervisor 2 MiB pages. From there the guest does everything itself:
//!
//! * kernel (CPL0): initialises COM1; reads CPUID (vendor, leaf 7 for SMEP/SMAP); builds and
//!   loads its own GDT (kernel and user 64-bit code/data, a TSS with RSP0 and IST1), reloads
//!   CS with a far return, loads TR; builds a 256-gate IDT (a reporting stub for each of the 32
//!   exception vectors, #DF on IST1, the PIT timer at 0x20, a spurious-IRQ7 handler, a
//!   catch-all for the rest); builds 4-level page tables (kernel pages supervisor-only with
//!   read-only code and NX data, a user code page and user data/stack pages, page 0 and
//!   everything else unmapped), enables EFER.NXE/SCE, loads CR3, sets CR0.WP and CR4.SMEP/SMAP;
//!   sets STAR/LSTAR/SFMASK for SYSCALL; remaps the 8259 pair to vectors 0x20-0x2f with only
//!   IRQ0 unmasked; starts 8254 channel 0 as a rate generator at about 10 kHz; waits for
//!   [`BOOT_TICKS`] ticks in an STI;HLT idle loop; enters CPL3 through IRETQ.
//! * timer interrupt: counts ticks (and those that interrupted CPL3), EOI to port 0x20.
//! * syscalls (SYSCALL/SYSRET, Linux numbering where one exists): `write(buf, len)` (only from
//!   the user data pages, else -EFAULT; the bytes go to COM1 by polling LSR.THRE, with
//!   STAC/CLAC around the user access), `sleep(ticks)` (STI;HLT until the tick count is
//!   reached, returns the tick count), `time()` (the kernel's RDTSC), `exit(status)`; any
//!   other number returns -ENOSYS.
//! * user (CPL3): for each of [`ROUNDS`] rounds, a sieve of Eratosthenes below
//!   `SIEVE_BASE << round` over a user buffer, the prime count, the largest prime and an
//!   FNV-1a hash of the buffer folded into a checksum, then `sleep(SLEEP_TICKS)` and a `write`
//!   of the round's line (numbers formatted in user mode); then an unknown syscall and a
//!   `write` from a kernel address (both must fail), `time()`, RDTSC at CPL3, and
//!   `exit(checksum)`.
//! * the kernel then prints a report (timer ticks, syscalls, the checksum, the TSC at user
//!   entry and exit) and powers off through the ACPI PM1a control register (SLP_TYP = S5,
//!   SLP_EN), which ends [`Machine::run`] with [`RunEnd::PowerOff`].
//!
//! Any exception prints its vector, name, error code, RIP, CS, RSP and CR2 on COM1 and ends the
//! run through the isa-debug-exit port with status `FAIL_EXCEPTION + vector`
//! ([`RunEnd::DebugExit`]); an unexpected interrupt vector exits with `FAIL_UNEXPECTED`.
//!
//! Everything the guest sees is a function of the instruction count (the TSC and the PIT run
//! on virtual time), so the console text, including the TSC values, is the same in every run
//! and every engine tier.
//!
//! Source layout: `asm` (the assembler, its string pool and formatting routines), `boot`
//! ([`load`], the boot loader's part), `kernel` (its boot steps in order, with `syscalls` and
//! `interrupts`), `user` (the user program); this file holds the memory layout, the run and
//! record entry points and the tests.

mod asm;
mod boot;
mod kernel;
mod user;

pub use boot::load;

use crate::machine::{BusCounters, Machine, MachineConfig, RunEnd};
use krr_jit::{EngineConfig, EngineStats};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Guest RAM.
pub const MEM_BYTES: u64 = 16 << 20;
/// A run that goes past this many instructions has gone wrong.
pub const MAX_INSTRUCTIONS: u64 = 100_000_000;

// Guest-physical layout; the kernel's own tables map it 1:1 (linear = physical).
/// Boot GDT and boot page tables written by [`load`] (the "boot loader"), unmapped later.
const BOOT_GDT: u64 = 0x500;
const BOOT_PML4: u64 = 0x1000;
const BOOT_PDPT: u64 = 0x2000;
const BOOT_PD: u64 = 0x3000;
/// Kernel variables and the kernel's line buffer.
pub const KDATA: u64 = 0x8000;
const KV_TICKS: u64 = KDATA;
const KV_USER_TICKS: u64 = KDATA + 0x08;
const KV_SYSCALLS: u64 = KDATA + 0x10;
const KV_SPURIOUS: u64 = KDATA + 0x18;
const KV_USER_RSP: u64 = KDATA + 0x20;
const KV_EXIT_STATUS: u64 = KDATA + 0x28;
const KV_TSC_ENTER: u64 = KDATA + 0x30;
const KV_TSC_EXIT: u64 = KDATA + 0x38;
const KV_SMAP: u64 = KDATA + 0x40;
const KV_LEAF7_EBX: u64 = KDATA + 0x48;
const KV_GDTR: u64 = KDATA + 0x50;
const KV_IDTR: u64 = KDATA + 0x60;
const KV_VENDOR: u64 = KDATA + 0x70;
const KV_BUF: u64 = KDATA + 0x100;
const GDT: u64 = 0x9000;
const IDT: u64 = 0xa000;
const TSS: u64 = 0xb000;
/// Kernel stack (boot, then SYSCALL), 16 KiB.
const KSTACK_TOP: u64 = 0x10000;
/// TSS.RSP0: interrupts from CPL3.
const RSP0_TOP: u64 = 0x14000;
/// TSS.IST1: #DF.
const IST1_TOP: u64 = 0x16000;
/// Kernel data pages: [KDATA, KDATA_END).
const KDATA_END: u64 = 0x16000;
/// The guest's page tables.
const PT_POOL: u64 = 0x20000;
const PML4: u64 = PT_POOL;
const PDPT: u64 = PT_POOL + 0x1000;
const PD: u64 = PT_POOL + 0x2000;
/// Maps 0..2 MiB (kernel, supervisor-only).
const PT_LOW: u64 = PT_POOL + 0x3000;
/// Maps 4..6 MiB (user).
const PT_USER: u64 = PT_POOL + 0x4000;
const PT_POOL_END: u64 = PT_POOL + 0x5000;
/// Kernel code (and its strings), read-only and executable, supervisor.
pub const KCODE: u64 = 0x10_0000;
const KCODE_MAX: u64 = 0x4000;
/// User code (and its strings): the entry point.
pub const UCODE: u64 = 0x40_0000;
const UCODE_MAX: u64 = 0x2000;
/// User data: the sieve buffer, the line buffer, the stack.
const UDATA: u64 = 0x41_0000;
const UBUF: u64 = UDATA;
const UBUF_SIZE: u64 = 0x1_0000;
const ULINE: u64 = UBUF + UBUF_SIZE;
const USTACK_TOP: u64 = ULINE + 0x5000;
const UDATA_END: u64 = USTACK_TOP;

// Selectors (Linux's order, so that one STAR value serves SYSCALL and SYSRET).
const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const USER_DS: u16 = 0x1b;
const USER_CS: u16 = 0x23;
const TSS_SEL: u16 = 0x28;

// Page-table entry bits.
use krr_runtime::arch::pte::{NX, P, PS, RW, US};

/// The user program's work: rounds of sieving below `SIEVE_BASE << round`.
pub const ROUNDS: u64 = 4;
pub const SIEVE_BASE: u64 = 8192;
/// PIT channel 0 divisor: 1,193,182 / 119 = about 10 kHz.
pub const PIT_DIVISOR: u16 = 119;
/// Timer ticks the kernel idles for before entering user mode.
pub const BOOT_TICKS: u64 = 3;
/// Timer ticks the user program sleeps for after each round.
pub const SLEEP_TICKS: u64 = 2;

/// Syscall numbers (RAX).
pub const SYS_WRITE: u64 = 1;
pub const SYS_SLEEP: u64 = 35;
pub const SYS_EXIT: u64 = 60;
pub const SYS_TIME: u64 = 201;
/// A number the kernel does not implement.
pub const SYS_BOGUS: u64 = 999;
const ENOSYS: i32 = 38;
const EFAULT: i32 = 14;

/// isa-debug-exit values the guest writes when it fails (the run ends with
/// [`RunEnd::DebugExit`]`((value << 1) | 1)`).
pub const FAIL_EXCEPTION: u8 = 0x40;
pub const FAIL_UNEXPECTED: u8 = 0x3f;

const COM1: u16 = 0x3f8;
const PM1A_CNT: u16 =
    crate::machine::devices::pm::PM_BASE + crate::machine::devices::pm::OFFSET_PM1_CNT;
const PM1_CNT_S5: u16 = (crate::machine::devices::pm::S5_SLP_TYP
    << crate::machine::devices::pm::CNT_SLP_TYP_SHIFT)
    | crate::machine::devices::pm::CNT_SLP_EN;
const DEBUG_EXIT: u16 = crate::machine::devices::debug_exit::DEBUG_EXIT_PORT;

/// SYSCALL clears TF, DF, IF, IOPL, NT and AC (as Linux does).
const SFMASK: u32 = 0x4_7700;

/// The console: kept in memory, optionally echoed to stdout as it comes.
#[derive(Clone, Default)]
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    echo: bool,
}

impl Capture {
    fn text(&self) -> String {
        let b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&b).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        if self.echo {
            std::io::stdout().lock().write_all(b)?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.echo {
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

/// What a run of the demo guest did.
#[derive(Clone, Debug)]
pub struct DemoOutcome {
    pub end: RunEnd,
    /// Everything the guest wrote to COM1.
    pub console: String,
    /// Instructions retired.
    pub icount: u64,
    pub counters: BusCounters,
    pub stats: EngineStats,
    pub wall: Duration,
}

impl DemoOutcome {
    /// One line: instructions, interrupts, port IO, RDTSC, wall time, MIPS.
    pub fn summary(&self) -> String {
        let secs = self.wall.as_secs_f64();
        let c = &self.counters;
        format!(
            "{} instructions, {} interrupts delivered, {} port reads, {} port writes, {} RDTSC, {:.3} s, {:.1} MIPS",
            self.icount,
            c.interrupts,
            c.port_in,
            c.port_out,
            c.rdtsc,
            secs,
            self.icount as f64 / secs.max(1e-9) / 1e6
        )
    }
}

/// A machine with the demo guest loaded, and its console.
fn prepare(engine: EngineConfig, echo: bool) -> Result<(Machine, Capture), String> {
    let console = Capture {
        buf: Arc::default(),
        echo,
    };
    let mut m = Machine::new(
        MachineConfig {
            mem_bytes: MEM_BYTES,
            engine,
        },
        Box::new(console.clone()),
    )
    .map_err(|e| e.to_string())?;
    load(&mut m)?;
    Ok((m, console))
}

/// Run `m` to its end (at most [`MAX_INSTRUCTIONS`]).
fn finish(mut m: Machine, console: Capture) -> Result<DemoOutcome, String> {
    let t0 = Instant::now();
    let end = m.run(Some(MAX_INSTRUCTIONS));
    let wall = t0.elapsed();
    let end = end.map_err(|e| {
        format!(
            "the demo guest stopped the machine: {e}; console so far:\n{}",
            console.text()
        )
    })?;
    Ok(DemoOutcome {
        end,
        console: console.text(),
        icount: m.core.cpu().icount,
        counters: m.board.counters.clone(),
        stats: m.engine.stats.clone(),
        wall,
    })
}

/// Build a machine with `engine`, load the demo guest and run it to its end; with `echo` the
/// guest's console is copied to stdout as it runs.
pub fn run_demo_guest(engine: EngineConfig, echo: bool) -> Result<DemoOutcome, String> {
    let (m, console) = prepare(engine, echo)?;
    finish(m, console)
}

/// Record the demo guest into `path` (run with `engine`, console echoed with `echo`).
pub fn record_demo_guest(
    engine: EngineConfig,
    path: &std::path::Path,
    echo: bool,
) -> Result<(DemoOutcome, crate::record::Recorded), String> {
    record_demo_guest_with(engine, path, echo, DEMO_SNAPSHOT_INTERVAL)
}

/// [`record_demo_guest`] with a snapshot every `snapshot_interval` instructions (0: none).
pub fn record_demo_guest_with(
    engine: EngineConfig,
    path: &std::path::Path,
    echo: bool,
    snapshot_interval: u64,
) -> Result<(DemoOutcome, crate::record::Recorded), String> {
    let (mut m, console) = prepare(engine, echo)?;
    let t0 = Instant::now();
    let opts = crate::record::RecordOptions {
        path,
        checkpoint_interval: DEMO_CHECKPOINT_INTERVAL,
        snapshot_interval,
        guest: "krr's built-in demo guest".to_string(),
        cmdline: String::new(),
        cpu_model: crate::cpu_model::DEFAULT_SPEC.to_string(),
        max_instructions: Some(MAX_INSTRUCTIONS),
    };
    let recorded = crate::record::record(&mut m, &opts, &indicatif::ProgressBar::hidden())
        .map_err(|e| {
            format!(
                "recording the demo guest: {e}; console so far:\n{}",
                console.text()
            )
        })?;
    let outcome = DemoOutcome {
        end: recorded.end.clone(),
        console: console.text(),
        icount: m.core.cpu().icount,
        counters: m.board.counters.clone(),
        stats: m.engine.stats.clone(),
        wall: t0.elapsed(),
    };
    Ok((outcome, recorded))
}

/// Checkpoints in demo traces: often enough that a small guest has a few hundred.
pub const DEMO_CHECKPOINT_INTERVAL: u64 = 10_000;

/// Delta snapshots in demo traces: a handful, so that parallel replay has segments.
pub const DEMO_SNAPSHOT_INTERVAL: u64 = 200_000;

#[cfg(test)]
mod tests {
    use super::user::{FNV_OFFSET, FNV_PRIME};
    use super::*;
    use krr_jit::TierPolicy;

    /// The user program's work, computed here: per round (n, primes below n, the largest,
    /// FNV-1a of the sieve), and the folded checksum.
    fn model() -> (Vec<(u64, u64, u64, u64)>, u64) {
        let mut rounds = Vec::new();
        let mut checksum = 0u64;
        for r in 0..ROUNDS {
            let n = (SIEVE_BASE << r) as usize;
            let mut s = vec![1u8; n];
            s[0] = 0;
            s[1] = 0;
            let mut i = 2;
            while i * i < n {
                if s[i] != 0 {
                    let mut j = i * i;
                    while j < n {
                        s[j] = 0;
                        j += i;
                    }
                }
                i += 1;
            }
            let count = s.iter().filter(|&&b| b != 0).count() as u64;
            let largest = s.iter().rposition(|&b| b != 0).unwrap_or(0) as u64;
            let mut h = FNV_OFFSET;
            for q in s.chunks_exact(8) {
                h ^= u64::from_le_bytes(q.try_into().unwrap());
                h = h.wrapping_mul(FNV_PRIME);
            }
            checksum = checksum.rotate_left(13) ^ h ^ ((count << 32) | largest);
            rounds.push((n as u64, count, largest, h));
        }
        (rounds, checksum)
    }

    /// Syscalls the user program makes: a greeting, a sleep and a write per round, the
    /// unknown one, the refused write and its report, time() and its report, exit.
    fn expected_syscalls() -> u64 {
        1 + 2 * ROUNDS + 3 + 2 + 1
    }

    fn value_after<'a>(console: &'a str, key: &str) -> &'a str {
        let line = console
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no line starting with {key:?} in:\n{console}"));
        line.split([' ', ',']).next().unwrap()
    }

    fn configs() -> [(&'static str, EngineConfig); 4] {
        [
            ("tiered", EngineConfig::default()),
            (
                "single-step",
                EngineConfig {
                    max_block_insns: 1,
                    ..EngineConfig::default()
                },
            ),
            (
                "interpreter",
                EngineConfig {
                    policy: TierPolicy::Interpret,
                    ..EngineConfig::default()
                },
            ),
            (
                "compile-all",
                EngineConfig {
                    policy: TierPolicy::CompileAll,
                    ..EngineConfig::default()
                },
            ),
        ]
    }

    #[test]
    fn demo_guest_runs_identically_in_every_tier() {
        let (rounds, checksum) = model();
        let mut reference: Option<DemoOutcome> = None;
        for (name, cfg) in configs() {
            let o = run_demo_guest(cfg, false).unwrap();
            let c = &o.console;
            assert_eq!(o.end, RunEnd::PowerOff, "{name}: {c}");
            let ticks: u64 = value_after(c, "  timer ticks: ").parse().unwrap();
            assert!(ticks >= BOOT_TICKS + ROUNDS * SLEEP_TICKS, "{name}: {c}");
            let syscalls: u64 = value_after(c, "  syscalls: ").parse().unwrap();
            assert_eq!(syscalls, expected_syscalls(), "{name}: {c}");
            assert_eq!(
                value_after(c, "  checksum: "),
                format!("0x{checksum:016x}"),
                "{name}"
            );
            for (r, (n, count, largest, h)) in rounds.iter().enumerate() {
                let line = format!(
                    "user: round {r}: sieve below {n}: {count} primes, largest {largest}, fnv-1a 0x{h:016x}; slept until tick "
                );
                assert!(c.contains(&line), "{name}: no {line:?} in:\n{c}");
            }
            assert!(c.contains("user: hello from CPL 3\n"), "{name}: {c}");
            assert!(
                c.contains("user: unknown syscall -> -38, write from a kernel address -> -14\n"),
                "{name}: {c}"
            );
            assert!(c.contains("spurious interrupts: 0\n"), "{name}: {c}");
            assert!(!c.contains("***"), "{name}: {c}");
            let k = &o.counters;
            assert!(k.interrupts >= ticks, "{name}: {k:?}");
            assert!(
                k.port_in > 0 && k.port_out > 0 && k.rdtsc > 0,
                "{name}: {k:?}"
            );
            // Large enough for timer interrupts to land in the middle of the user's loops.
            assert!(o.icount > 500_000, "{name}: {}", o.icount);
            let user_ticks: u64 = value_after(c, &format!("  timer ticks: {ticks} ("))
                .parse()
                .unwrap();
            assert!(user_ticks > 0 && user_ticks < ticks, "{name}: {c}");
            match &reference {
                None => reference = Some(o),
                Some(r) => {
                    assert_eq!(r.console, o.console, "console differs: {name}");
                    assert_eq!(r.icount, o.icount, "instruction count differs: {name}");
                    assert_eq!(r.counters.interrupts, k.interrupts, "{name}");
                    assert_eq!(r.counters.port_in, k.port_in, "{name}");
                    assert_eq!(r.counters.port_out, k.port_out, "{name}");
                    assert_eq!(r.counters.rdtsc, k.rdtsc, "{name}");
                }
            }
        }
    }

    /// Replace the user program's first bytes with `code` and run: the kernel's exception
    /// handler must report `what` and fail the run with its vector.
    fn user_fault(code: &[u8], vector: u8, what: &str) {
        for (name, cfg) in configs() {
            let (mut m, console) = prepare(cfg, false).unwrap();
            m.core.mem_mut().write(UCODE, code).unwrap();
            let o = finish(m, console).unwrap();
            let c = &o.console;
            assert_eq!(
                o.end,
                RunEnd::DebugExit(crate::machine::devices::debug_exit::exit_status(u32::from(
                    FAIL_EXCEPTION + vector
                ))),
                "{name}: {c}"
            );
            let line = format!("\n*** kernel: exception {vector} ({what}");
            assert!(c.contains(&line), "{name}: no {line:?} in:\n{c}");
            assert!(c.contains(&format!(", RIP 0x{UCODE:016x}, CS 0x0000000000000023")));
        }
    }

    #[test]
    fn user_ud2_is_reported() {
        user_fault(
            &[0x0f, 0x0b],
            6,
            "#UD invalid opcode), error code 0x0000000000000000",
        );
    }

    #[test]
    fn user_read_of_kernel_page_is_a_page_fault() {
        // mov rax, [KDATA]: present, read, user -> error code 5.
        let mut code = vec![0x48, 0x8b, 0x04, 0x25];
        code.extend_from_slice(&(KDATA as u32).to_le_bytes());
        user_fault(&code, 14, "#PF page fault), error code 0x0000000000000005");
    }

    #[test]
    fn user_port_io_is_a_general_protection_fault() {
        // out dx, al at CPL3 with IOPL 0.
        user_fault(
            &[0xee],
            13,
            "#GP general protection), error code 0x0000000000000000",
        );
    }
}
