//! One guest CPU and the physical memory it runs on, owned together.
//!
//! The CPU state carries raw pointers into guest memory (for the MMU's slow paths and the
//! code-page bitmap) and its TLB caches host addresses of guest pages. `Core` is the only
//! place that creates a [`CpuState`]: it keeps the state pinned next to its memory, hands out
//! the architectural part ([`ArchState`]) and read access to the rest, and gives the engine a
//! `&mut CpuState` only through [`Core::state_mut`], which first points the state at this
//! core's memory again (so even memory swapped between two cores cannot leave a dangling
//! pointer behind).

use crate::cpu::{ArchState, CpuState};
use crate::cpuid::CpuidTable;
use crate::memory::{GuestMemory, MemoryError};
use std::pin::Pin;

pub struct Core {
    // Declared first so that it is dropped before the memory its pointers lead into.
    cpu: Pin<Box<CpuState>>,
    mem: GuestMemory,
}

impl Core {
    /// `mem_bytes` of zeroed guest RAM and a CPU in 64-bit mode with flat segments
    /// ([`ArchState::flat64`]).
    pub fn new(mem_bytes: u64) -> Result<Core, MemoryError> {
        Ok(Core::with_memory(GuestMemory::new(mem_bytes)?))
    }

    /// Zeroed guest RAM in the windows `(gpa, len)` ([`GuestMemory::with_windows`]: the
    /// addresses between them are not RAM) and a [`ArchState::flat64`] CPU.
    pub fn with_windows(windows: &[(u64, u64)]) -> Result<Core, MemoryError> {
        Ok(Core::with_memory(GuestMemory::with_windows(windows)?))
    }

    /// A core over existing guest memory, with a [`ArchState::flat64`] CPU.
    pub fn with_memory(mut mem: GuestMemory) -> Core {
        let cpu = Box::pin(CpuState::new(ArchState::flat64(), &mut mem));
        Core { cpu, mem }
    }

    pub fn cpu(&self) -> &CpuState {
        &self.cpu
    }

    pub fn arch(&self) -> &ArchState {
        &self.cpu.arch
    }

    pub fn arch_mut(&mut self) -> &mut ArchState {
        // SAFETY: `ArchState` holds no pointers and is not structurally pinned: handing out
        // `&mut` to it cannot move the `CpuState` or invalidate its context.
        unsafe { &mut self.cpu.as_mut().get_unchecked_mut().arch }
    }

    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    pub fn mem_mut(&mut self) -> &mut GuestMemory {
        &mut self.mem
    }

    /// The architectural state and the memory together (a loader writes both).
    pub fn arch_and_mem(&mut self) -> (&mut ArchState, &mut GuestMemory) {
        // SAFETY: as in `arch_mut`.
        let arch = unsafe { &mut self.cpu.as_mut().get_unchecked_mut().arch };
        (arch, &mut self.mem)
    }

    /// What CPUID reports (the CPU model).
    pub fn cpuid_mut(&mut self) -> &mut CpuidTable {
        // SAFETY: the CPUID table holds no pointers (as in `arch_mut`).
        unsafe { &mut self.cpu.as_mut().get_unchecked_mut().cpuid }
    }

    /// The engine stops before retiring instruction number `limit`.
    pub fn set_icount_limit(&mut self, limit: u64) {
        // SAFETY: a plain integer of the context; nothing is moved.
        unsafe { self.cpu.as_mut().get_unchecked_mut().exec.icount_limit = limit }
    }

    /// Drop every cached translation (after the page tables or paging mode were replaced
    /// from outside the engine, e.g. a CPU image loaded from a trace).
    /// A debugger's watchpoints from now on (see [`crate::watch`]); their pages leave the TLB.
    pub fn set_watchpoints(&mut self, ranges: Vec<crate::watch::WatchRange>) {
        // SAFETY: only the watch list and the TLB change; nothing is moved.
        let cpu = unsafe { self.cpu.as_mut().get_unchecked_mut() };
        cpu.exec.watch.set(ranges);
        cpu.exec.tlb.flush();
    }

    /// The watchpoint hit that ended the last engine run, taken.
    pub fn take_watch_hit(&mut self) -> Option<crate::watch::WatchHit> {
        // SAFETY: as in `set_watchpoints`.
        unsafe { self.cpu.as_mut().get_unchecked_mut() }
            .exec
            .watch
            .hit
            .take()
    }

    pub fn flush_tlb(&mut self) {
        // SAFETY: flushing only invalidates entries; nothing is moved.
        unsafe { self.cpu.as_mut().get_unchecked_mut().exec.tlb.flush() }
    }

    /// The RAM digest checkpoints compare (see [`GuestMemory::digest`]): it rehashes only
    /// the pages written since the previous one. The TLB's write entries go first, so that a
    /// write after it marks its page again.
    pub fn ram_hash(&mut self) -> u64 {
        // SAFETY: flushing only invalidates entries; nothing is moved.
        unsafe {
            self.cpu
                .as_mut()
                .get_unchecked_mut()
                .exec
                .tlb
                .flush_writes()
        }
        self.mem.digest()
    }

    /// Read instruction bytes at linear address `linear` as the CPU fetches them (for reports
    /// on the instruction at RIP): `Ok(n)` bytes read, or why not.
    pub fn fetch_code(
        &mut self,
        linear: u64,
        out: &mut [u8],
    ) -> Result<usize, crate::mmu::MemFault> {
        // SAFETY: the state is used for this one call and not moved.
        let cpu = unsafe { self.state_mut() };
        crate::mmu::fetch_code(cpu, linear, out)
    }

    /// The whole CPU state, for the engine, pointed at this core's memory.
    ///
    /// # Safety
    /// The caller must not move the state out of the reference or replace it (no
    /// `std::mem::swap`/`replace`/assignment of the whole `CpuState`): its context must keep
    /// pointing into this core's memory. Fields may be read and written freely.
    pub unsafe fn state_mut(&mut self) -> &mut CpuState {
        // SAFETY: the caller promises not to move the state (the pinning contract).
        let cpu = unsafe { self.cpu.as_mut().get_unchecked_mut() };
        cpu.attach(&mut self.mem);
        cpu
    }
}
