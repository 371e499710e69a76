//! Host stubs (one host instruction and `ret`), shared by the SSE and x87 host paths:
//! executable memory for them (chunks mapped with `memmap2`, filled while writable and then
//! made executable again; callers keep an [`ExecArena`] behind a lock and run stubs only
//! while no one writes: `place` under the write lock, calls under the read lock), and the
//! SIGFPE handler that turns an unmasked SIMD exception in a stub into a return from it.

use iced_x86::{Instruction, Register};
use memmap2::{Mmap, MmapMut};
use std::sync::OnceLock;

const CHUNK: usize = 64 * 1024;
const STUB_ALIGN: usize = 32;

/// Point `h`'s memory operand at `[rsi]` (a stub's operand buffer): no index, displacement
/// or segment override.
pub fn memory_at_rsi(h: &mut Instruction) {
    h.set_memory_base(Register::RSI);
    h.set_memory_index(Register::None);
    h.set_memory_index_scale(1);
    h.set_memory_displacement64(0);
    h.set_memory_displ_size(0);
    h.set_segment_prefix(Register::None);
}

#[derive(Default)]
pub struct ExecArena {
    /// Executable chunks; the last one may have room (`used` bytes taken). `None` only while
    /// it is being written.
    chunks: Vec<Option<Mmap>>,
    used: usize,
}

impl ExecArena {
    /// Copy `bytes` into executable memory; returns their address. The chunk written to is
    /// not executable meanwhile: the caller holds its lock's write side, and stubs run only
    /// under the read side, so no thread executes from it until it is executable again.
    pub fn place(&mut self, bytes: &[u8]) -> Option<usize> {
        let len = bytes.len().div_ceil(STUB_ALIGN) * STUB_ALIGN;
        if len > CHUNK {
            return None;
        }
        if self.chunks.is_empty() || self.used + len > CHUNK {
            let m = MmapMut::map_anon(CHUNK).ok()?;
            self.chunks.push(Some(m.make_exec().ok()?));
            self.used = 0;
        }
        let last = self.chunks.last_mut()?;
        let exec = last.take()?;
        let mut m = exec.make_mut().ok()?;
        m[self.used..self.used + bytes.len()].copy_from_slice(bytes);
        let exec = m.make_exec().ok()?;
        let addr = exec.as_ptr() as usize + self.used;
        *last = Some(exec);
        self.used += len;
        Some(addr)
    }
}

/// R11 while a stub runs: tells [`on_sigfpe`] that the fault is a stub's.
pub const IN_STUB: u64 = 0x6b72_725f_7374_7562;
/// R11 after a stub whose instruction raised an unmasked SIMD floating-point exception.
pub const FAULTED: u64 = 1;

static OLD_SIGFPE: OnceLock<libc::sigaction> = OnceLock::new();

/// SIGFPE handler: a stub's instruction (called as `call r10` with R11 = [`IN_STUB`]) raised
/// an unmasked SIMD floating-point exception (#XM). The hardware left its destination unchanged and set MXCSR's flags as it does for
/// such an exception; resume at the stub's return address with R11 = [`FAULTED`]. The FP
/// state (MXCSR with those flags) is restored from the signal frame on return. A SIGFPE from
/// anywhere else reinstates the previous disposition and returns, so the faulting
/// instruction runs again under it.
extern "C" fn on_sigfpe(_sig: libc::c_int, _info: *mut libc::siginfo_t, uctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `ucontext_t` to an SA_SIGINFO handler. When R11 holds
    // IN_STUB and RIP equals R10, the fault is a stub's instruction reached by `call r10` from
    // `run_stub`, so [RSP] is the return address that `call` pushed (the instruction does not
    // touch the stack). `sigaction` is async-signal-safe.
    unsafe {
        let uc = &mut *(uctx as *mut libc::ucontext_t);
        let g = &mut uc.uc_mcontext.gregs;
        if g[libc::REG_R11 as usize] as u64 == IN_STUB
            && g[libc::REG_RIP as usize] == g[libc::REG_R10 as usize]
        {
            let rsp = g[libc::REG_RSP as usize] as u64;
            g[libc::REG_RIP as usize] = *(rsp as *const u64) as i64;
            g[libc::REG_RSP as usize] = (rsp + 8) as i64;
            g[libc::REG_R11 as usize] = FAULTED as i64;
            return;
        }
        if let Some(old) = OLD_SIGFPE.get() {
            libc::sigaction(libc::SIGFPE, old, std::ptr::null_mut());
        }
    }
}

/// Install [`on_sigfpe`] (once per process).
pub fn install_sigfpe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain sigaction calls with zero-initialised, fully written structures; the
        // handler only touches the interrupted context (see `on_sigfpe`).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigfpe as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            let r = libc::sigaction(libc::SIGFPE, &sa, &mut old);
            assert_eq!(r, 0, "installing the SIGFPE handler failed");
            let _ = OLD_SIGFPE.set(old);
        }
    });
}
