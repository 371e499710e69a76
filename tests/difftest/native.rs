//! Runs a [`Snippet`] on the host CPU.
//!
//! A forked copy of the test process is kept stopped under ptrace (it did `PTRACE_TRACEME` and
//! then stops itself with SIGSTOP). For every snippet the parent
//!
//! 1. makes the child's mappings match the snippet exactly: the pages holding the code are
//!    mapped read+execute, the pages of each region read+write (so no-execute), and pages that a
//!    previous snippet needed but this one does not are unmapped. Mapping changes are made by
//!    running `mmap`/`munmap`/`mprotect` *in the child*: its registers are pointed at a
//!    `syscall; int3` gadget that is part of this binary (hence present in the forked child at
//!    the same address). With the generator's fixed layout this happens only once per child;
//! 2. writes the code (the rest of the code pages is filled with INT3) and the region contents
//!    through `/proc/<pid>/mem` (which may write to read-only pages);
//! 3. loads GPRs, RIP, RFLAGS, FS/GS base with `PTRACE_SETREGS` and XMM0-15 and MXCSR with
//!    `PTRACE_SETFPREGS`, and resumes the child with `PTRACE_CONT`. (RFLAGS.NT and ID cannot be
//!    set through ptrace; when they must change, after a snippet's POPF changed them, the child
//!    first runs a `push rdi; popfq; int3` gadget);
//! 4. waits for the next signal stop. A SIGTRAP with RIP just past the INT3 that follows the
//!    code means the snippet completed; SIGSEGV, SIGBUS, SIGFPE, SIGILL and other SIGTRAPs are
//!    mapped back to x86 exception vectors (see [`NativeRunner::run`]); the signal is never
//!    delivered (the next `PTRACE_CONT` suppresses it), the child simply gets fresh registers.
//!
//! Run-away snippets are stopped by an `ITIMER_PROF` interval timer armed in the child: every
//! tick of consumed CPU time produces a SIGPROF stop, which is suppressed (this is transparent
//! to the interrupted code, even mid `REP MOVS`); after `timeout_ticks` of them the case is
//! reported as [`SnippetEnd::OutOfBudget`].
//!
//! Outside the snippet's pages the child has the mappings of the test process (binary, heap,
//! libraries, stacks, ...), all far above [`GUARD_LO`]..[`GUARD_HI`]; within that window only
//! the snippet's pages are mapped (checked when the child starts), so generated accesses aimed
//! at that window but outside the regions do fault as they do in the engine.
//!
//! Error codes: the CPU's error code reaches the kernel (`thread.error_code`) but not the
//! tracer: `PTRACE_GETSIGINFO` has no field for it and `user_regs_struct` none either (only a
//! signal frame's `sigcontext.err` would show it, and the signal is never delivered here). What
//! is observable is reported: for #PF the P bit (SEGV_ACCERR / SEGV_PKUERR: a protection
//! violation on a present page; SEGV_MAPERR: not present) and the U bit (always set: the
//! snippet runs at CPL3), i.e. `error_code: Some(P | U)` with W, RSVD and I unknown (see
//! [`PF_OBSERVABLE`]); every other exception is reported with `error_code: None` (the kernel
//! does not expose #GP/#SS/#AC error codes). The instruction count is not known either
//! (reported as 0).

use krr_jit::snippet::{Region, Snippet, SnippetEnd, SnippetResult, UserState};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;

pub const PAGE: u64 = 4096;

/// #PF error code bit: the page was present (a protection violation).
pub const PF_P: u32 = 1;
/// #PF error code bit: the access was made at CPL3.
pub const PF_U: u32 = 4;
/// The #PF error-code bits the native run can observe (see the module documentation).
pub const PF_OBSERVABLE: u32 = PF_P | PF_U;

/// Start of the address window in which the native child maps nothing but snippet pages.
pub const GUARD_LO: u64 = 0x0800_0000;
/// End (exclusive) of that window.
pub const GUARD_HI: u64 = 0x4000_0000;

/// Length of one profiling-timer tick in microseconds of child CPU time.
const TICK_USEC: i64 = 10_000;
/// Default run-time limit per snippet, in ticks (1 s of CPU time).
const DEFAULT_TIMEOUT_TICKS: u32 = 100;

// Code run in the child (present there at the same address, the child being a fork):
// `syscall; int3` for injected system calls, and `push rdi; popfq; int3` to load the RFLAGS
// bits that PTRACE_SETREGS cannot change (NT, ID), which a snippet's POPF may have set.
std::arch::global_asm!(
    ".pushsection .text.krr_difftest_gadgets,\"ax\",@progbits",
    ".globl krr_difftest_syscall_gadget",
    ".hidden krr_difftest_syscall_gadget",
    "krr_difftest_syscall_gadget:",
    "syscall",
    "int3",
    ".globl krr_difftest_popf_gadget",
    ".hidden krr_difftest_popf_gadget",
    "krr_difftest_popf_gadget:",
    "push rdi",
    "popfq",
    "int3",
    ".popsection",
);

extern "C" {
    fn krr_difftest_syscall_gadget();
    fn krr_difftest_popf_gadget();
}

fn gadget_addr() -> u64 {
    krr_difftest_syscall_gadget as *const () as usize as u64
}

fn popf_gadget_addr() -> u64 {
    krr_difftest_popf_gadget as *const () as usize as u64
}

/// RFLAGS bits PTRACE_SETREGS leaves alone (the kernel's FLAG_MASK lacks them) but user code
/// can change with POPF: NT and ID.
const NON_PTRACE_FLAGS: u64 = (1 << 14) | (1 << 21);

/// How a page of the snippet is mapped in the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prot {
    /// Read + execute: the snippet's code.
    Code,
    /// Read + write: a region.
    Data,
}

impl Prot {
    fn bits(self) -> i32 {
        match self {
            Prot::Code => libc::PROT_READ | libc::PROT_EXEC,
            Prot::Data => libc::PROT_READ | libc::PROT_WRITE,
        }
    }
}

/// Why the child stopped.
enum Stop {
    Signal(i32),
    Timeout,
}

/// Runs snippets natively in a ptrace'd child process.
///
/// Not `Send`: ptrace requests must come from the thread that forked the child.
pub struct NativeRunner {
    child: Option<Child>,
    timeout_ticks: u32,
    _not_send: PhantomData<*const ()>,
}

impl NativeRunner {
    pub fn new() -> Result<Self, String> {
        Ok(NativeRunner {
            child: Some(Child::spawn()?),
            timeout_ticks: DEFAULT_TIMEOUT_TICKS,
            _not_send: PhantomData,
        })
    }

    /// Sets the CPU-time limit per snippet, in ticks of 10 ms.
    pub fn set_timeout_ticks(&mut self, ticks: u32) {
        self.timeout_ticks = ticks.max(1);
    }

    /// Runs `snippet` from `state` on the host CPU.
    ///
    /// Signals are mapped to exceptions as follows: SIGTRAP from an INT3 other than the final
    /// one → #BP (3; a trap, so `rip` is past the INT3, as the CPU pushes it), other SIGTRAPs →
    /// #DB (1); SIGFPE with FPE_INTDIV/FPE_INTOVF → #DE (0), other
    /// SIGFPE → #XM (19); SIGILL → #UD (6); SIGSEGV with SEGV_MAPERR/SEGV_ACCERR/SEGV_PKUERR →
    /// #PF (14, `address` = `si_addr`), other SIGSEGV (SI_KERNEL) → #GP (13); SIGBUS with
    /// BUS_ADRALN → #AC (17), other SIGBUS (SI_KERNEL) → #SS (12).
    pub fn run(&mut self, snippet: &Snippet, state: &UserState) -> Result<SnippetResult, String> {
        if self.child.is_none() {
            self.child = Some(Child::spawn()?);
        }
        let child = self.child.as_mut().expect("child was just spawned");
        let result = child.run(snippet, state, self.timeout_ticks);
        if result.is_err() {
            // Start from a fresh child next time rather than reason about a half-done setup.
            self.child = None;
        }
        result
    }
}

/// The stopped, traced child process.
struct Child {
    pid: libc::pid_t,
    mem: File,
    /// Registers at the initial stop: supplies valid segment selectors for `PTRACE_SETREGS`.
    base_regs: libc::user_regs_struct,
    /// FXSAVE image at the initial stop: supplies the x87 part for `PTRACE_SETFPREGS`.
    base_fp: libc::user_fpregs_struct,
    /// Pages this runner has mapped in the child.
    mapped: BTreeMap<u64, Prot>,
    /// The child's RFLAGS when it last stopped (for [`NON_PTRACE_FLAGS`]).
    flags: u64,
}

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: plain syscalls on our own child; errors (e.g. already dead) are irrelevant.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, libc::__WALL);
        }
    }
}

/// Body of the forked child. Only async-signal-safe calls: the parent may have other threads
/// (the test harness), whose locks could be held at the time of the fork.
///
/// # Safety
/// Must only be called in a freshly forked child.
unsafe fn child_main(parent: libc::pid_t) -> ! {
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    );
    if libc::getppid() != parent {
        libc::_exit(1);
    }
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    if libc::ptrace(
        libc::PTRACE_TRACEME,
        0,
        std::ptr::null_mut::<libc::c_void>(),
        std::ptr::null_mut::<libc::c_void>(),
    ) != 0
    {
        libc::_exit(2);
    }
    let tick = libc::timeval {
        tv_sec: 0,
        tv_usec: TICK_USEC,
    };
    let timer = libc::itimerval {
        it_interval: tick,
        it_value: tick,
    };
    libc::setitimer(libc::ITIMER_PROF, &timer, std::ptr::null_mut());
    loop {
        libc::kill(libc::getpid(), libc::SIGSTOP);
    }
}

fn errno_string(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

impl Child {
    fn spawn() -> Result<Child, String> {
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child only runs `child_main`, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(errno_string("fork"));
        }
        if pid == 0 {
            // SAFETY: we are the freshly forked child.
            unsafe { child_main(parent) }
        }
        let mut child = Child {
            pid,
            mem: File::open("/dev/null").map_err(|e| e.to_string())?,
            // SAFETY: both are plain C structs for which all-zero bytes are valid.
            base_regs: unsafe { std::mem::zeroed() },
            base_fp: unsafe { std::mem::zeroed() },
            mapped: BTreeMap::new(),
            flags: 0,
        };
        // Wait for the child's first SIGSTOP (suppressing anything else, e.g. an early SIGPROF).
        loop {
            let sig = child.wait_stop()?;
            if sig == libc::SIGSTOP {
                break;
            }
            child.ptrace_cont()?;
        }
        child.base_regs = child.get_regs()?;
        child.flags = child.base_regs.eflags;
        child.base_fp = child.get_fpregs()?;
        child.mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| format!("open /proc/{pid}/mem: {e}"))?;
        child.check_guard_window()?;
        Ok(child)
    }

    /// Verifies that nothing is mapped in [`GUARD_LO`, `GUARD_HI`) in the fresh child.
    fn check_guard_window(&self) -> Result<(), String> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .map_err(|e| format!("read maps: {e}"))?;
        for line in maps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            let (lo, hi) = range.split_once('-').unwrap_or(("0", "0"));
            let lo = u64::from_str_radix(lo, 16).unwrap_or(0);
            let hi = u64::from_str_radix(hi, 16).unwrap_or(0);
            if lo < GUARD_HI && hi > GUARD_LO {
                return Err(format!(
                    "the test process has a mapping inside the snippet window \
                     {GUARD_LO:#x}..{GUARD_HI:#x}: {line}"
                ));
            }
        }
        Ok(())
    }

    /// Waits for the child to stop and returns the stop signal.
    fn wait_stop(&mut self) -> Result<i32, String> {
        loop {
            let mut status = 0;
            // SAFETY: waiting for our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
            if r < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(format!("waitpid: {err}"));
            }
            if libc::WIFSTOPPED(status) {
                return Ok(libc::WSTOPSIG(status));
            }
            if libc::WIFEXITED(status) {
                let why = match libc::WEXITSTATUS(status) {
                    2 => " (PTRACE_TRACEME failed: is ptrace allowed here?)",
                    _ => "",
                };
                return Err(format!(
                    "native child exited with {}{why}",
                    libc::WEXITSTATUS(status)
                ));
            }
            if libc::WIFSIGNALED(status) {
                return Err(format!(
                    "native child killed by signal {}",
                    libc::WTERMSIG(status)
                ));
            }
        }
    }

    /// Resumes the child, suppressing the signal it stopped with.
    fn ptrace_cont(&self) -> Result<(), String> {
        // SAFETY: PTRACE_CONT on our stopped tracee; data 0 = deliver no signal.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_CONT,
                self.pid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if r < 0 {
            return Err(errno_string("PTRACE_CONT"));
        }
        Ok(())
    }

    /// Resumes the child until it stops with a signal other than the profiling tick.
    fn run_until_stop(&mut self, timeout_ticks: u32) -> Result<Stop, String> {
        let mut ticks = 0;
        loop {
            self.ptrace_cont()?;
            match self.wait_stop()? {
                sig @ (libc::SIGTRAP
                | libc::SIGSEGV
                | libc::SIGBUS
                | libc::SIGFPE
                | libc::SIGILL) => return Ok(Stop::Signal(sig)),
                libc::SIGPROF => {
                    ticks += 1;
                    if ticks >= timeout_ticks {
                        return Ok(Stop::Timeout);
                    }
                }
                // Anything else (a stray SIGSTOP, SIGCHLD, ...) is suppressed.
                _ => {}
            }
        }
    }

    fn get_regs(&self) -> Result<libc::user_regs_struct, String> {
        // SAFETY: user_regs_struct is plain data; the kernel fills it.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: PTRACE_GETREGS on our stopped tracee with a pointer to a user_regs_struct.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGS,
                self.pid,
                std::ptr::null_mut::<libc::c_void>(),
                &mut regs as *mut _ as *mut libc::c_void,
            )
        };
        if r < 0 {
            return Err(errno_string("PTRACE_GETREGS"));
        }
        Ok(regs)
    }

    fn set_regs(&self, regs: &libc::user_regs_struct) -> Result<(), String> {
        // SAFETY: PTRACE_SETREGS on our stopped tracee with a pointer to a user_regs_struct.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGS,
                self.pid,
                std::ptr::null_mut::<libc::c_void>(),
                regs as *const _ as *mut libc::c_void,
            )
        };
        if r < 0 {
            return Err(errno_string("PTRACE_SETREGS"));
        }
        Ok(())
    }

    fn get_fpregs(&self) -> Result<libc::user_fpregs_struct, String> {
        // SAFETY: user_fpregs_struct is plain data; the kernel fills it.
        let mut fp: libc::user_fpregs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: PTRACE_GETFPREGS on our stopped tracee with a pointer to a user_fpregs_struct.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETFPREGS,
                self.pid,
                std::ptr::null_mut::<libc::c_void>(),
                &mut fp as *mut _ as *mut libc::c_void,
            )
        };
        if r < 0 {
            return Err(errno_string("PTRACE_GETFPREGS"));
        }
        Ok(fp)
    }

    fn set_fpregs(&self, fp: &libc::user_fpregs_struct) -> Result<(), String> {
        // SAFETY: PTRACE_SETFPREGS on our stopped tracee with a pointer to a user_fpregs_struct.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SETFPREGS,
                self.pid,
                std::ptr::null_mut::<libc::c_void>(),
                fp as *const _ as *mut libc::c_void,
            )
        };
        if r < 0 {
            return Err(errno_string("PTRACE_SETFPREGS"));
        }
        Ok(())
    }

    /// The tracee's XSAVE image (standard format), `PTRACE_GETREGSET` `NT_X86_XSTATE`.
    fn get_xstate(&self) -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; XSTATE_MAX];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: PTRACE_GETREGSET on our stopped tracee with an iovec describing `buf`; the
        // kernel writes at most iov_len bytes and shrinks iov_len to what it wrote.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGSET,
                self.pid,
                NT_X86_XSTATE as *mut libc::c_void,
                &mut iov as *mut libc::iovec as *mut libc::c_void,
            )
        };
        if r < 0 {
            return Err(errno_string("PTRACE_GETREGSET NT_X86_XSTATE"));
        }
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    fn set_xstate(&self, img: &[u8]) -> Result<(), String> {
        let mut iov = libc::iovec {
            iov_base: img.as_ptr() as *mut libc::c_void,
            iov_len: img.len(),
        };
        // SAFETY: PTRACE_SETREGSET on our stopped tracee with an iovec describing `img`, which
        // the kernel only reads.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGSET,
                self.pid,
                NT_X86_XSTATE as *mut libc::c_void,
                &mut iov as *mut libc::iovec as *mut libc::c_void,
            )
        };
        if r < 0 {
            return Err(errno_string("PTRACE_SETREGSET NT_X86_XSTATE"));
        }
        Ok(())
    }

    /// Sets bits 255:128 of YMM0-15 (XSAVE component 2) in the tracee.
    fn set_ymm_hi(&self, ymm_hi: &[u128; 16]) -> Result<(), String> {
        let mut img = self.get_xstate()?;
        let at = ymm_offset();
        if img.len() < at + 256 {
            return Err("the host's XSAVE image has no YMM component".into());
        }
        for (i, v) in ymm_hi.iter().enumerate() {
            img[at + 16 * i..at + 16 * i + 16].copy_from_slice(&v.to_le_bytes());
        }
        img[512] |= 1 << 2; // XSTATE_BV: the YMM component is not in its initial state
        self.set_xstate(&img)
    }

    /// Bits 255:128 of YMM0-15 in the tracee (zeros when XSTATE_BV says initial state).
    fn get_ymm_hi(&self) -> Result<[u128; 16], String> {
        let img = self.get_xstate()?;
        let at = ymm_offset();
        let mut out = [0u128; 16];
        if img.len() >= at + 256 && img[512] & (1 << 2) != 0 {
            for (i, v) in out.iter_mut().enumerate() {
                *v = u128::from_le_bytes(img[at + 16 * i..at + 16 * i + 16].try_into().unwrap());
            }
        }
        Ok(out)
    }

    fn get_siginfo(&self) -> Result<libc::siginfo_t, String> {
        // SAFETY: siginfo_t is plain data; the kernel fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: PTRACE_GETSIGINFO on our tracee in a signal-delivery-stop.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETSIGINFO,
                self.pid,
                std::ptr::null_mut::<libc::c_void>(),
                &mut info as *mut _ as *mut libc::c_void,
            )
        };
        if r < 0 {
            return Err(errno_string("PTRACE_GETSIGINFO"));
        }
        Ok(info)
    }

    /// Runs one system call in the child through the gadget and returns its result.
    fn inject_syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, String> {
        let mut regs = self.base_regs;
        regs.rip = gadget_addr();
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs.eflags = 0x202;
        self.set_regs(&regs)?;
        match self.run_until_stop(DEFAULT_TIMEOUT_TICKS)? {
            Stop::Signal(libc::SIGTRAP) => {}
            Stop::Signal(sig) => return Err(format!("injected syscall {nr}: signal {sig}")),
            Stop::Timeout => return Err(format!("injected syscall {nr}: timeout")),
        }
        let after = self.get_regs()?;
        self.flags = after.eflags;
        if after.rip != gadget_addr() + 3 {
            return Err(format!(
                "injected syscall {nr}: stopped at {:#x}",
                after.rip
            ));
        }
        Ok(after.rax as i64)
    }

    /// Loads RFLAGS (including the bits PTRACE_SETREGS cannot set) by running POPF in the
    /// child, on its own stack (well below the frame it stopped in).
    fn load_flags(&mut self, value: u64) -> Result<(), String> {
        let mut regs = self.base_regs;
        regs.rip = popf_gadget_addr();
        regs.rsp = (self.base_regs.rsp - 1024) & !15;
        regs.rdi = value & !(1 << 8); // never TF
        regs.orig_rax = u64::MAX;
        self.set_regs(&regs)?;
        match self.run_until_stop(DEFAULT_TIMEOUT_TICKS)? {
            Stop::Signal(libc::SIGTRAP) => {}
            Stop::Signal(sig) => return Err(format!("POPF gadget: signal {sig}")),
            Stop::Timeout => return Err("POPF gadget: timeout".into()),
        }
        let after = self.get_regs()?;
        self.flags = after.eflags;
        if after.rip != popf_gadget_addr() + 3 {
            return Err(format!("POPF gadget stopped at {:#x}", after.rip));
        }
        Ok(())
    }

    /// Maps, unmaps and re-protects pages so the child's snippet pages are exactly `want`.
    fn sync_mappings(&mut self, want: &BTreeMap<u64, Prot>) -> Result<(), String> {
        let unmap: Vec<u64> = self
            .mapped
            .keys()
            .copied()
            .filter(|p| !want.contains_key(p))
            .collect();
        for (start, pages, _) in runs(unmap.iter().map(|&p| (p, Prot::Data))) {
            let r = self.inject_syscall(libc::SYS_munmap, [start, pages * PAGE, 0, 0, 0, 0])?;
            if r != 0 {
                return Err(format!("munmap({start:#x}) in child failed: {r}"));
            }
            for i in 0..pages {
                self.mapped.remove(&(start + i * PAGE));
            }
        }
        let reprotect: Vec<(u64, Prot)> = want
            .iter()
            .filter(|(p, prot)| self.mapped.get(p).is_some_and(|have| have != *prot))
            .map(|(p, prot)| (*p, *prot))
            .collect();
        for (start, pages, prot) in runs(reprotect.into_iter()) {
            let r = self.inject_syscall(
                libc::SYS_mprotect,
                [start, pages * PAGE, prot.bits() as u64, 0, 0, 0],
            )?;
            if r != 0 {
                return Err(format!("mprotect({start:#x}) in child failed: {r}"));
            }
            for i in 0..pages {
                self.mapped.insert(start + i * PAGE, prot);
            }
        }
        let new: Vec<(u64, Prot)> = want
            .iter()
            .filter(|(p, _)| !self.mapped.contains_key(p))
            .map(|(p, prot)| (*p, *prot))
            .collect();
        for (start, pages, prot) in runs(new.into_iter()) {
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
            let r = self.inject_syscall(
                libc::SYS_mmap,
                [
                    start,
                    pages * PAGE,
                    prot.bits() as u64,
                    flags as u64,
                    u64::MAX,
                    0,
                ],
            )?;
            if r as u64 != start {
                return Err(format!(
                    "mmap({start:#x}, {} pages) in child failed ({r}): the range collides with \
                     a mapping of the test process or is invalid",
                    pages
                ));
            }
            for i in 0..pages {
                self.mapped.insert(start + i * PAGE, prot);
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        snippet: &Snippet,
        state: &UserState,
        timeout_ticks: u32,
    ) -> Result<SnippetResult, String> {
        let want = wanted_pages(snippet)?;
        self.sync_mappings(&want)?;

        // Code pages: INT3 everywhere except the code itself (so the INT3 after it is implicit).
        let code_end = snippet.code_addr + snippet.code.len() as u64;
        for (&page, _) in want.iter().filter(|(_, prot)| **prot == Prot::Code) {
            let mut buf = vec![0xCCu8; PAGE as usize];
            for (i, b) in buf.iter_mut().enumerate() {
                let addr = page + i as u64;
                if addr >= snippet.code_addr && addr < code_end {
                    *b = snippet.code[(addr - snippet.code_addr) as usize];
                }
            }
            self.write_mem(page, &buf)?;
        }
        // Regions, zero-padded to whole pages.
        for region in &snippet.regions {
            let mut buf = region.data.clone();
            buf.resize(region_pages(region) as usize * PAGE as usize, 0);
            self.write_mem(region.addr, &buf)?;
        }

        if (self.flags ^ state.rflags) & NON_PTRACE_FLAGS != 0 {
            self.load_flags(state.rflags)?;
        }
        let mut regs = self.base_regs;
        let g = &state.gpr;
        regs.rax = g[0];
        regs.rcx = g[1];
        regs.rdx = g[2];
        regs.rbx = g[3];
        regs.rsp = g[4];
        regs.rbp = g[5];
        regs.rsi = g[6];
        regs.rdi = g[7];
        regs.r8 = g[8];
        regs.r9 = g[9];
        regs.r10 = g[10];
        regs.r11 = g[11];
        regs.r12 = g[12];
        regs.r13 = g[13];
        regs.r14 = g[14];
        regs.r15 = g[15];
        regs.rip = state.rip;
        regs.eflags = state.rflags;
        regs.fs_base = state.fs_base;
        regs.gs_base = state.gs_base;
        // Not in a system call: keeps the kernel from "restarting" one on resume.
        regs.orig_rax = u64::MAX;
        self.set_regs(&regs)?;
        let mut fp = self.base_fp;
        set_x87(&mut fp, &state.x87);
        fp.mxcsr = state.mxcsr;
        for (i, x) in state.xmm.iter().enumerate() {
            for j in 0..4 {
                fp.xmm_space[i * 4 + j] = (x >> (32 * j)) as u32;
            }
        }
        self.set_fpregs(&fp)?;
        if has_avx() {
            self.set_ymm_hi(&state.ymm_hi)?;
        }

        let stop = self.run_until_stop(timeout_ticks)?;
        let regs = self.get_regs()?;
        self.flags = regs.eflags;
        let fp = self.get_fpregs()?;
        let mut out = UserState {
            gpr: [
                regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi,
                regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
            ],
            rip: regs.rip,
            rflags: regs.eflags,
            xmm: [0; 16],
            ymm_hi: if has_avx() {
                self.get_ymm_hi()?
            } else {
                [0; 16]
            },
            mxcsr: fp.mxcsr,
            fs_base: regs.fs_base,
            gs_base: regs.gs_base,
            x87: get_x87(&fp),
        };
        for (i, x) in out.xmm.iter_mut().enumerate() {
            for j in 0..4 {
                *x |= (fp.xmm_space[i * 4 + j] as u128) << (32 * j);
            }
        }
        let outcome = match stop {
            Stop::Timeout => SnippetEnd::OutOfBudget,
            Stop::Signal(sig) => {
                let info = self.get_siginfo()?;
                // SAFETY: si_addr is valid for the fault signals it is used with below.
                let si_addr = unsafe { info.si_addr() } as u64;
                let outcome = classify(sig, info.si_code, si_addr, regs.rip, code_end);
                x87_math_fault(outcome, snippet, &out.x87)
            }
        };
        let mut regions = Vec::with_capacity(snippet.regions.len());
        for region in &snippet.regions {
            let mut data = vec![0u8; region.data.len()];
            self.mem
                .read_exact_at(&mut data, region.addr)
                .map_err(|e| format!("read region {:#x}: {e}", region.addr))?;
            regions.push(Region {
                addr: region.addr,
                data,
            });
        }
        Ok(SnippetResult {
            state: out,
            regions,
            outcome,
            instructions: 0,
            stats: Default::default(),
        })
    }

    fn write_mem(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        self.mem
            .write_all_at(data, addr)
            .map_err(|e| format!("write child memory at {addr:#x}: {e}"))
    }
}

/// #MF and #XM both reach the tracer as SIGFPE with the same codes: a SIGFPE at an x87
/// instruction (or FWAIT, or one with an MMX register operand) with an unmasked x87
/// exception pending (FSW.ES) is #MF (16), the x87 check coming before any SIMD one.
fn x87_math_fault(
    outcome: SnippetEnd,
    snippet: &Snippet,
    x87: &krr_runtime::X87State,
) -> SnippetEnd {
    let SnippetEnd::Exception {
        vector: 19,
        error_code,
        address,
        rip,
    } = outcome
    else {
        return outcome;
    };
    let Some(off) = rip
        .checked_sub(snippet.code_addr)
        .filter(|&o| o < snippet.code.len() as u64)
    else {
        return outcome;
    };
    let ins = iced_x86::Decoder::with_ip(
        64,
        &snippet.code[off as usize..],
        rip,
        iced_x86::DecoderOptions::NONE,
    )
    .decode();
    let mmx_reg = (0..ins.op_count())
        .any(|i| ins.op_kind(i) == iced_x86::OpKind::Register && ins.op_register(i).is_mm());
    if (super::gen::is_x87(ins.code()) || mmx_reg) && x87.fsw & 0x80 != 0 {
        SnippetEnd::Exception {
            vector: 16,
            error_code,
            address,
            rip,
        }
    } else {
        outcome
    }
}

/// Puts the x87/MMX state into the FXSAVE image `PTRACE_SETFPREGS` loads.
fn set_x87(fp: &mut libc::user_fpregs_struct, x: &krr_runtime::X87State) {
    fp.cwd = x.fcw;
    fp.swd = x.fsw;
    fp.ftw = x.ftw as u16;
    fp.fop = x.fop;
    fp.rip = x.fip;
    fp.rdp = x.fdp;
    for (i, st) in x.st.iter().enumerate() {
        for j in 0..4 {
            let w = u32::from_le_bytes(st[4 * j..4 * j + 4].try_into().expect("4 bytes"));
            // Bytes 10-15 of each slot are reserved: zero.
            fp.st_space[i * 4 + j] = match j {
                2 => w & 0xffff,
                3 => 0,
                _ => w,
            };
        }
    }
}

/// The x87/MMX state of an FXSAVE image from `PTRACE_GETFPREGS` (ST/MM slots' reserved bytes
/// dropped).
fn get_x87(fp: &libc::user_fpregs_struct) -> krr_runtime::X87State {
    let mut x = krr_runtime::X87State {
        fcw: fp.cwd,
        fsw: fp.swd,
        ftw: fp.ftw as u8,
        fop: fp.fop,
        fip: fp.rip,
        fdp: fp.rdp,
        st: [[0; 16]; 8],
    };
    for (i, st) in x.st.iter_mut().enumerate() {
        for j in 0..4 {
            st[4 * j..4 * j + 4].copy_from_slice(&fp.st_space[i * 4 + j].to_le_bytes());
        }
        st[10..].fill(0);
    }
    x
}

/// Maps a signal stop to an outcome (see [`NativeRunner::run`]).
/// `NT_X86_XSTATE`, the regset of the XSAVE image (linux/elf.h).
const NT_X86_XSTATE: usize = 0x202;
/// Room for any XSAVE image this host's kernel hands out.
const XSTATE_MAX: usize = 16384;

fn has_avx() -> bool {
    is_x86_feature_detected!("avx")
}

/// Where the YMM component lies in the standard-format XSAVE image (CPUID.(0DH,2):EBX).
fn ymm_offset() -> usize {
    std::arch::x86_64::__cpuid_count(0xd, 2).ebx as usize
}

fn classify(sig: i32, si_code: i32, si_addr: u64, rip: u64, code_end: u64) -> SnippetEnd {
    // si_code values (include/uapi/asm-generic/siginfo.h).
    const SI_KERNEL: i32 = 0x80;
    const FPE_INTDIV: i32 = 1;
    const FPE_INTOVF: i32 = 2;
    const SEGV_MAPERR: i32 = 1;
    const SEGV_ACCERR: i32 = 2;
    const SEGV_PKUERR: i32 = 4;
    const BUS_ADRALN: i32 = 1;
    let exception = |vector: u8, address: u64, rip: u64| SnippetEnd::Exception {
        vector,
        error_code: None,
        address,
        rip,
    };
    match sig {
        libc::SIGTRAP if rip == code_end + 1 => SnippetEnd::Completed,
        libc::SIGTRAP if si_code == SI_KERNEL => exception(3, 0, rip),
        libc::SIGTRAP => exception(1, 0, rip),
        libc::SIGFPE if si_code == FPE_INTDIV || si_code == FPE_INTOVF => exception(0, 0, rip),
        libc::SIGFPE => exception(19, 0, rip),
        libc::SIGILL => exception(6, 0, rip),
        libc::SIGSEGV if matches!(si_code, SEGV_MAPERR | SEGV_ACCERR | SEGV_PKUERR) => {
            let p = if si_code == SEGV_MAPERR { 0 } else { PF_P };
            SnippetEnd::Exception {
                vector: 14,
                error_code: Some(p | PF_U),
                address: si_addr,
                rip,
            }
        }
        libc::SIGSEGV => exception(13, 0, rip),
        libc::SIGBUS if si_code == BUS_ADRALN => exception(17, 0, rip),
        _ => exception(12, 0, rip),
    }
}

fn region_pages(region: &Region) -> u64 {
    (region.data.len() as u64).div_ceil(PAGE)
}

/// The pages the snippet needs, with their protection.
fn wanted_pages(snippet: &Snippet) -> Result<BTreeMap<u64, Prot>, String> {
    let valid = |lo: u64, hi: u64| lo >= 0x10000 && hi <= 0x7fff_ffff_0000 && lo < hi;
    let mut want = BTreeMap::new();
    let code_lo = snippet.code_addr & !(PAGE - 1);
    let code_hi = (snippet.code_addr + snippet.code.len() as u64 + 1).next_multiple_of(PAGE);
    if !valid(code_lo, code_hi) {
        return Err(format!(
            "code address {:#x} out of range",
            snippet.code_addr
        ));
    }
    for page in (code_lo..code_hi).step_by(PAGE as usize) {
        want.insert(page, Prot::Code);
    }
    for region in &snippet.regions {
        if region.addr % PAGE != 0 {
            return Err(format!("region {:#x} is not page-aligned", region.addr));
        }
        let hi = region.addr + region_pages(region) * PAGE;
        if region.data.is_empty() || !valid(region.addr, hi) {
            return Err(format!(
                "region {:#x}+{:#x} out of range",
                region.addr,
                region.data.len()
            ));
        }
        for page in (region.addr..hi).step_by(PAGE as usize) {
            if want.insert(page, Prot::Data).is_some() {
                return Err(format!("page {page:#x} is used twice by the snippet"));
            }
        }
    }
    Ok(want)
}

/// Groups sorted pages into runs of consecutive pages with equal protection:
/// `(start, page count, protection)`.
fn runs(pages: impl Iterator<Item = (u64, Prot)>) -> Vec<(u64, u64, Prot)> {
    let mut out: Vec<(u64, u64, Prot)> = Vec::new();
    for (page, prot) in pages {
        match out.last_mut() {
            Some((start, n, p)) if *p == prot && *start + *n * PAGE == page => *n += 1,
            _ => out.push((page, 1, prot)),
        }
    }
    out
}
