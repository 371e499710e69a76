//! The trap points' actions (krr-spec 3.5-3.7), as more of the replay driver: copy_from_user,
//! get_user, PTE and page-map data written into guest memory before the kernel reads it
//! (KRR's forward search, GFU skip rule and page-fault deferral), exceptions consumed at
//! their handlers, and the exec lock's spin count (multi-vCPU).

use super::driver::{Driver, End, Pending};
use crate::krr_rec::events::Event;
use crate::vmlinux::traps::TrapPoint;
use krr_runtime::arch::vector;
use krr_runtime::gpr::{RDI, RSI};

/// PTE `_PAGE_USER`.
const PTE_USER: u64 = 1 << 2;

impl Driver {
    fn reg(&self, r: usize) -> u64 {
        self.core.cpu().gpr[r]
    }

    /// Write `data` at virtual address `va` through the current page tables, as KRR's
    /// replayer does (a debugger's write: no permission checks, no accessed/dirty bits);
    /// false if a page is not mapped.
    fn write_virt(&mut self, va: u64, data: &[u8]) -> bool {
        let cr3 = self.core.cpu().cr3;
        let mem = self.core.mem();
        let Some(pieces) = super::virt::pieces(|pa| mem.read_u64(pa).ok(), cr3, va, data.len())
        else {
            return false;
        };
        let mut done = 0;
        for (pa, n) in pieces {
            if self
                .core
                .mem_mut()
                .write(pa, &data[done..done + n])
                .is_err()
            {
                return false;
            }
            self.engine.notify_write(&mut self.core, pa, n as u64);
            done += n;
        }
        true
    }

    fn read_virt_u64(&self, va: u64) -> Option<u64> {
        let cr3 = self.core.cpu().cr3;
        let mem = self.core.mem();
        let pieces = super::virt::pieces(|pa| mem.read_u64(pa).ok(), cr3, va, 8)?;
        let mut b = [0u8; 8];
        let mut done = 0;
        for (pa, n) in pieces {
            mem.read(pa, &mut b[done..done + n]).ok()?;
            done += n;
        }
        Some(u64::from_le_bytes(b))
    }

    /// The head if `head_ok` accepts it, else the first later event `find` accepts.
    fn head_or_find(
        &self,
        head_ok: impl Fn(&Event) -> bool,
        find: impl Fn(&Event) -> bool,
    ) -> Option<usize> {
        match self.bus.queue.head() {
            Some((i, e)) if head_ok(e) => Some(i),
            _ => self.bus.queue.find(find),
        }
    }

    fn missing(&mut self, what: String) -> Option<End> {
        let head = self.bus.queue.head().map(|(i, _)| i);
        let c = self.core.cpu();
        let msg = format!(
            "{what} at RIP {:#x} (count {}): no such event follows",
            c.rip,
            self.bus.count(c)
        );
        Some(self.diverge(head, msg))
    }

    pub(super) fn trap_action(&mut self, point: TrapPoint) -> Option<End> {
        use TrapPoint as T;
        match point {
            T::CfuBegin => {
                let from = self.reg(RDI);
                let Some(i) = self.head_or_find(
                    |e| matches!(e, Event::Cfu(_)),
                    |e| matches!(e, Event::Cfu(c) if c.src_addr == from),
                ) else {
                    return self.missing(format!("copy_from_user from {from:#x}"));
                };
                let Event::Cfu(c) = self.bus.queue.event(i).clone() else {
                    unreachable!()
                };
                // len = n + 1: the n bytes the kernel copies.
                let n = c.data.len().saturating_sub(1);
                let data = c.data[..n].to_vec();
                if !self.write_virt(c.src_addr, &data) {
                    self.pending = Some(Pending {
                        event: i,
                        va: c.src_addr,
                        data,
                    });
                }
                self.bus.queue.take(i);
            }
            T::PageMap | T::IoUringRecordEntry => {
                let want = self.reg(RSI);
                let i = if point == T::PageMap {
                    match self.bus.queue.head() {
                        Some((i, Event::Cfu(c))) if c.src_addr != want => {
                            let msg = format!(
                                "page map of {want:#x}: the next copy_from_user event is of {:#x}",
                                c.src_addr
                            );
                            return Some(self.diverge(Some(i), msg));
                        }
                        _ => self.head_or_find(
                            |e| matches!(e, Event::Cfu(_)),
                            |e| matches!(e, Event::Cfu(c) if c.src_addr == want),
                        ),
                    }
                } else {
                    self.head_or_find(|e| matches!(e, Event::Cfu(_)), |_| false)
                };
                let Some(i) = i else {
                    return self.missing(format!("{} of {want:#x}", point.name()));
                };
                let Event::Cfu(c) = self.bus.queue.event(i).clone() else {
                    unreachable!()
                };
                let n = c.data.len();
                if !self.write_virt(c.src_addr, &c.data[..n]) {
                    let msg = format!("{}: {:#x} is not mapped", point.name(), c.src_addr);
                    return Some(self.diverge(Some(i), msg));
                }
                self.bus.queue.take(i);
            }
            T::GfuBegin | T::IoUringBegin => {
                let ptr = self.reg(RDI);
                let i = if point == T::GfuBegin {
                    self.head_or_find(
                        |e| matches!(e, Event::Gfu(_)),
                        |e| matches!(e, Event::Gfu(g) if g.ptr == ptr),
                    )
                } else {
                    self.head_or_find(|e| matches!(e, Event::Gfu(_)), |_| false)
                };
                let Some(i) = i else {
                    return self.missing(format!("get_user of {ptr:#x}"));
                };
                let Event::Gfu(g) = self.bus.queue.event(i).clone() else {
                    unreachable!()
                };
                if point == T::GfuBegin {
                    // A word-at-a-time reader's call for the word before the recorded one:
                    // wait for the next call (KRR's skip rule).
                    if ptr.wrapping_add(8) == g.ptr {
                        return None;
                    }
                    if g.ptr != ptr {
                        let msg =
                            format!("get_user of {ptr:#x}, the recorded one reads {:#x}", g.ptr);
                        return Some(self.diverge(Some(i), msg));
                    }
                }
                let size = (g.size.clamp(0, 8)) as usize;
                let data = g.val.to_le_bytes()[..size].to_vec();
                if !self.write_virt(g.ptr, &data) {
                    self.pending = Some(Pending {
                        event: i,
                        va: g.ptr,
                        data,
                    });
                }
                self.bus.queue.take(i);
            }
            T::PteClear | T::PteRead | T::PteReadOnce => {
                let ptr = self.reg(RDI);
                let Some(pte) = self.read_virt_u64(ptr) else {
                    let msg = format!("{}: the pte_t at {ptr:#x} is not mapped", point.name());
                    return Some(self.diverge(None, msg));
                };
                if pte & PTE_USER == 0 {
                    return None;
                }
                let i = match self.bus.queue.head() {
                    Some((i, Event::Pte(p))) => {
                        if p.ptr != ptr {
                            return None;
                        }
                        Some(i)
                    }
                    _ => self
                        .bus
                        .queue
                        .find(|e| matches!(e, Event::Pte(p) if p.ptr == ptr)),
                };
                let Some(i) = i else {
                    return self.missing(format!("a user PTE read at {ptr:#x}"));
                };
                let Event::Pte(p) = self.bus.queue.event(i).clone() else {
                    unreachable!()
                };
                self.write_virt(ptr, &p.val.to_le_bytes());
                self.bus.queue.take(i);
            }
            T::PfExec | T::GpExec => {
                let want = if point == T::PfExec {
                    vector::PF
                } else {
                    vector::GP
                };
                if want == vector::GP && std::mem::take(&mut self.user_gp_injected) {
                    return None;
                }
                let c = self.core.cpu();
                let cr2 = c.cr2;
                match self.bus.queue.head() {
                    Some((i, Event::Exception(e))) => {
                        let (vec, ecr2, spin) = (e.exception_index, e.cr2, e.spin_count);
                        if want == vector::PF && ecr2 != cr2 {
                            let msg =
                                format!("page fault at CR2 {cr2:#x}, recorded at CR2 {ecr2:#x}");
                            return Some(self.diverge(Some(i), msg));
                        }
                        if vec as u8 != want {
                            let msg = format!(
                                "exception {want} entered its handler, the recorded one is {vec}"
                            );
                            return Some(self.diverge(Some(i), msg));
                        }
                        self.bus.cache_spin(spin, i);
                        self.bus.queue.take(i);
                    }
                    _ => {
                        let what = if want == vector::PF {
                            format!("a page fault (CR2 {cr2:#x})")
                        } else {
                            "a general-protection fault".to_string()
                        };
                        return self.missing(format!("{what} entered its handler"));
                    }
                }
            }
            T::PfExecEnd => {
                if let Some(p) = self.pending.take() {
                    if !self.write_virt(p.va, &p.data) {
                        let msg = format!(
                            "the deferred user write at {:#x} still finds no page after the fault",
                            p.va
                        );
                        return Some(self.diverge(Some(p.event), msg));
                    }
                }
            }
            T::LockAcquireRet => {
                // The lock is always free in replay: the recorded spin count is the return
                // value, and the count advances by KRR's 3 per spin unless INST_SYNC just set
                // it (krr-spec 3.5, 5).
                let spin = std::mem::take(&mut self.bus.cached_spin);
                let synced = std::mem::take(&mut self.bus.skip_sync);
                if spin > 0 {
                    self.core.arch_mut().gpr[0] = spin;
                    if !synced {
                        self.bus.delta += 3 * spin as i64;
                        // A count divergence from here on may be the spin count's.
                        if let Some(k) = self.bus.spin_source {
                            let spins = &mut self.bus.count_source.spins;
                            if spins.len() == 8 {
                                spins.remove(0);
                            }
                            spins.push(k);
                        }
                    }
                }
            }
            T::LockRelease => match self.bus.queue.head() {
                Some((i, Event::Release(r))) => {
                    // The agent records the RELEASE under the lock, so it is the releasing
                    // vCPU's.
                    if r.id != self.current as i32 {
                        let msg = format!(
                            "vCPU {} released the exec lock, the recorded RELEASE is vCPU {}'s",
                            self.current, r.id
                        );
                        return Some(self.diverge(Some(i), msg));
                    }
                    self.bus.queue.take(i);
                }
                Some((i, e)) if self.release_events => {
                    let msg = format!(
                        "vCPU {} released the exec lock (LOCK_RELEASE), but the next event is {e}, not its RELEASE (this recording has one at every release)",
                        self.current
                    );
                    return Some(self.diverge(Some(i), msg));
                }
                _ => {}
            },
        }
        None
    }
}
