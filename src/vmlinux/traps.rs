//! KRR's trap points (krr-spec §3.7): kernel addresses where KRR's replayer acts before the
//! instruction there runs (inject copy_from_user data, consume an exception, hand the exec lock
//! over, ...). KRR compiles them into its QEMU from a script run on one vmlinux; krr finds them
//! in the recorded kernel's vmlinux at start-up: symbols, one DWARF source line
//! (LOCK_RELEASE) and two disassembly scans (PF_EXEC_END, RR_LOCK_ACQUIRE_RET), then moves them
//! by the KASLR slide.

use super::{Symbol, Vmlinux, VmlinuxError};
use iced_x86::{Decoder, DecoderOptions, Mnemonic};

/// A trap point, by KRR's macro name (`include/sysemu/kernel-rr.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrapPoint {
    /// Entry of `rr_cfu_begin(from, to, n)`: copy_from_user data.
    CfuBegin,
    /// Entry of `rr_gfu_begin(ptr, size, align)`: get_user data.
    GfuBegin,
    /// Entries of the guest's user-PTE read helpers.
    PteClear,
    PteRead,
    PteReadOnce,
    /// Entry of `rr_record_page_map(page, addr)`: a page's contents.
    PageMap,
    /// io_uring's SQ tail and entries (absent from older guest patches).
    IoUringBegin,
    IoUringRecordEntry,
    /// Entries of the #PF and #GP handlers: the recorded exception is consumed there.
    PfExec,
    GpExec,
    /// The instruction in `exc_page_fault` that leaves for `irqentry_exit`: deferred CFU/GFU
    /// writes are retried.
    PfExecEnd,
    /// The last return of `rr_do_acquire_smp_exec`: the spin count is patched in (SMP).
    LockAcquireRet,
    /// The end of `rr_release_smp_exec` (a source line): ownership hand-over (SMP).
    LockRelease,
}

impl TrapPoint {
    pub fn name(self) -> &'static str {
        match self {
            TrapPoint::CfuBegin => "RR_CFU_BEGIN",
            TrapPoint::GfuBegin => "RR_GFU_BEGIN",
            TrapPoint::PteClear => "RR_PTE_CLEAR",
            TrapPoint::PteRead => "RR_PTE_READ",
            TrapPoint::PteReadOnce => "RR_PTE_READ_ONCE",
            TrapPoint::PageMap => "RR_PAGE_MAP",
            TrapPoint::IoUringBegin => "RR_IO_URING_BEGIN",
            TrapPoint::IoUringRecordEntry => "RR_IO_URING_RECORD_ENTRY",
            TrapPoint::PfExec => "PF_EXEC",
            TrapPoint::GpExec => "GP_EXEC",
            TrapPoint::PfExecEnd => "PF_EXEC_END",
            TrapPoint::LockAcquireRet => "RR_LOCK_ACQUIRE_RET",
            TrapPoint::LockRelease => "LOCK_RELEASE",
        }
    }
}

/// The trap points at the entry of a function of the guest agent or the kernel: (point,
/// symbol, required).
const AT_SYMBOLS: [(TrapPoint, &str, bool); 10] = [
    (TrapPoint::CfuBegin, "rr_cfu_begin", true),
    (TrapPoint::GfuBegin, "rr_gfu_begin", true),
    (TrapPoint::PteClear, "rr_record_pte_clear", true),
    (TrapPoint::PteRead, "rr_read_pte", true),
    (TrapPoint::PteReadOnce, "rr_read_pte_once", true),
    (TrapPoint::PageMap, "rr_record_page_map", true),
    (TrapPoint::IoUringBegin, "rr_begin_record_io_uring", false),
    (
        TrapPoint::IoUringRecordEntry,
        "rr_record_io_uring_entry",
        false,
    ),
    (TrapPoint::PfExec, "exc_page_fault", true),
    (TrapPoint::GpExec, "exc_general_protection", true),
];

/// A source line (LOCK_RELEASE's definition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLine {
    /// The end of the file's path, e.g. `arch/x86/kernel/rr_serialize.c`.
    pub file: String,
    pub line: u64,
}

impl SourceLine {
    /// LOCK_RELEASE in KRR's newest guest patch: the `local_irq_restore` at the end of
    /// `rr_release_smp_exec` (krr-spec §3.7).
    pub fn krr_lock_release() -> SourceLine {
        SourceLine {
            file: "arch/x86/kernel/rr_serialize.c".into(),
            line: 147,
        }
    }
}

/// The resolved trap points, at run-time addresses (link-time address + slide).
#[derive(Clone, Debug)]
pub struct TrapPoints {
    pub slide: u64,
    points: Vec<(TrapPoint, u64)>,
    /// `entry_SYSCALL_64` at run time (checkpoint comparisons skip the CRs there).
    pub entry_syscall: Option<u64>,
}

impl TrapPoints {
    /// Resolve every trap point of `vmlinux` for a kernel loaded `slide` bytes above its
    /// link-time addresses. The exec-lock points are resolved only for multi-vCPU recordings
    /// (`smp`), which need them; `lock_release` defines LOCK_RELEASE.
    pub fn resolve(
        vmlinux: &Vmlinux,
        slide: u64,
        smp: bool,
        lock_release: &SourceLine,
    ) -> Result<TrapPoints, VmlinuxError> {
        const AGENT: &str = "a trap point of KRR's guest agent: is this the recorded KRR kernel?";
        let mut points = Vec::new();
        for (point, name, required) in AT_SYMBOLS {
            match vmlinux.symbol(name) {
                Some(s) => points.push((point, s.addr)),
                None if required => return Err(vmlinux.require(name, AGENT).unwrap_err()),
                None => {}
            }
        }
        let pf = vmlinux.require("exc_page_fault", AGENT)?;
        let exit = vmlinux.require("irqentry_exit", "PF_EXEC_END is the branch to it")?;
        let end = scan(vmlinux, "exc_page_fault", pf, |insn| {
            insn.near_branch_target() == exit.addr && insn.near_branch_target() != 0
        })?
        .into_iter()
        .next()
        .ok_or_else(|| {
            vmlinux.lookup_error(
                "PF_EXEC_END: exc_page_fault has no branch to irqentry_exit".to_string(),
            )
        })?;
        points.push((TrapPoint::PfExecEnd, end));
        if smp {
            const LOCK: &str = "the exec lock of KRR's multi-vCPU recordings";
            let acquire = vmlinux.require("rr_do_acquire_smp_exec", LOCK)?;
            let thunk = vmlinux.symbol("__x86_return_thunk").map(|s| s.addr);
            let ret = scan(vmlinux, "rr_do_acquire_smp_exec", acquire, |insn| {
                insn.mnemonic() == Mnemonic::Ret
                    || (insn.mnemonic() == Mnemonic::Jmp
                        && Some(insn.near_branch_target()) == thunk)
            })?
            .pop()
            .ok_or_else(|| {
                vmlinux.lookup_error(
                    "RR_LOCK_ACQUIRE_RET: rr_do_acquire_smp_exec has no return".to_string(),
                )
            })?;
            points.push((TrapPoint::LockAcquireRet, ret));
            let release = vmlinux.require("rr_release_smp_exec", LOCK)?;
            let inside = |a: u64| a >= release.addr && a < release.addr + release.size.max(1);
            let at = vmlinux
                .line_addresses(&lock_release.file, lock_release.line)?
                .into_iter()
                .find(|&a| inside(a))
                .ok_or_else(|| {
                    vmlinux.lookup_error(format!(
                        "LOCK_RELEASE: no code of {}:{} inside rr_release_smp_exec (a different guest patch? name the line with --krr-lock-release FILE:LINE)",
                        lock_release.file, lock_release.line
                    ))
                })?;
            points.push((TrapPoint::LockRelease, at));
        }
        for p in &mut points {
            p.1 = p.1.wrapping_add(slide);
        }
        let entry_syscall = vmlinux
            .symbol("entry_SYSCALL_64")
            .map(|s| s.addr.wrapping_add(slide));
        Ok(TrapPoints {
            slide,
            points,
            entry_syscall,
        })
    }

    /// The trap point at run-time address `rip`, if any.
    pub fn at(&self, rip: u64) -> Option<TrapPoint> {
        self.points.iter().find(|p| p.1 == rip).map(|p| p.0)
    }

    pub fn addr(&self, point: TrapPoint) -> Option<u64> {
        self.points.iter().find(|p| p.0 == point).map(|p| p.1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (TrapPoint, u64)> + '_ {
        self.points.iter().copied()
    }
}

/// Link-time addresses of the instructions of function `name` that `want` accepts, in order.
fn scan(
    vmlinux: &Vmlinux,
    name: &str,
    f: Symbol,
    want: impl Fn(&iced_x86::Instruction) -> bool,
) -> Result<Vec<u64>, VmlinuxError> {
    if f.size == 0 {
        return Err(vmlinux.lookup_error(format!("{name} has no size in the symbol table")));
    }
    let bytes = vmlinux
        .bytes(f.addr, f.size)
        .ok_or_else(|| vmlinux.lookup_error(format!("{name}: its code is not in the image")))?;
    let mut d = Decoder::with_ip(64, bytes, f.addr, DecoderOptions::NONE);
    let mut hits = Vec::new();
    while d.can_decode() {
        let insn = d.decode();
        if want(&insn) {
            hits.push(insn.ip());
        }
    }
    Ok(hits)
}

/// The KASLR slide of a recorded kernel: IA32_LSTAR (the snapshot's) is `entry_SYSCALL_64`,
/// checked with a second symbol, `linux_banner` (the kernel's version string, which names the
/// build): `read` must fill the buffer from the snapshot's memory at a kernel virtual address
/// (false when unmapped). A vmlinux of another build is refused here.
pub fn kaslr_slide(
    vmlinux: &Vmlinux,
    lstar: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> bool,
) -> Result<u64, VmlinuxError> {
    let entry = vmlinux.require("entry_SYSCALL_64", "IA32_LSTAR points at it")?;
    let slide = lstar.wrapping_sub(entry.addr);
    if slide % 0x20_0000 != 0 {
        return Err(vmlinux.lookup_error(format!(
            "IA32_LSTAR {lstar:#x} is not entry_SYSCALL_64 ({:#x}) moved by a KASLR slide (a multiple of 2 MiB): the vmlinux does not belong to this snapshot",
            entry.addr
        )));
    }
    let banner = vmlinux.require("linux_banner", "it checks the vmlinux against the snapshot")?;
    let len = banner.size.clamp(1, 512);
    let want = vmlinux
        .bytes(banner.addr, len)
        .ok_or_else(|| vmlinux.lookup_error("linux_banner is not in the image".into()))?;
    let mut got = vec![0u8; len as usize];
    if !read(banner.addr.wrapping_add(slide), &mut got) {
        return Err(vmlinux.lookup_error(format!(
            "linux_banner at {:#x} (slide {slide:#x}) is not mapped in the snapshot: the vmlinux does not belong to this snapshot",
            banner.addr.wrapping_add(slide)
        )));
    }
    if got != want {
        return Err(vmlinux.lookup_error(format!(
            "the vmlinux does not belong to this snapshot: its banner is \"{}\", the snapshot's kernel has \"{}\"",
            banner_text(want),
            banner_text(&got)
        )));
    }
    Ok(slide)
}

/// A kernel banner's text: the bytes up to the first NUL, trimmed (the kernel's ends in a newline).
pub fn banner_text(bytes: &[u8]) -> String {
    let text = bytes.split(|&c| c == 0).next().unwrap_or(bytes);
    String::from_utf8_lossy(text).trim().to_string()
}
