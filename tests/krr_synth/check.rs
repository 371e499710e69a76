//! A check that a synthetic recording is replayable: a minimal KRR-style replay (krr-spec 3)
//! of the files alone (snapshot, `kernel_rr.log`, the vmlinux's trap points) in krr's
//! engine, stricter than KRR's replayer: at every interrupt the GPRs and the instruction
//! count must equal the recorded ones, every IO_IN must come at its RIP and count, and the
//! final state must be the recorder's. Not a replayer for krr (src/krr_replay is): it knows
//! this kernel (the VMCALL's and the REP's addresses, one vCPU) and runs a REP's partial
//! iterations itself, as the recorder did.

use super::machine::{self as m, translate};
use super::ring::Ring;
use super::FinalState;
use krr::krr_rec::events::{Event, KvmRegs};
use krr::krr_rec::recording::{Recording, RecordingFiles};
use krr::vmlinux::traps::{SourceLine, TrapPoint, TrapPoints};
use krr::vmlinux::Vmlinux;
use krr_jit::{Engine, EngineConfig, Exit};
use krr_runtime::{Core, CpuState};
use std::path::Path;

/// The event list: consumed in order, or out of order by a forward search (KRR unlinks).
struct Events {
    list: Vec<Event>,
    /// Each event's bytes in the log (type + payload), for the ring appends.
    raw: Vec<Vec<u8>>,
    done: Vec<bool>,
    head: usize,
    ring: Ring,
}

impl Events {
    fn head(&mut self) -> Option<&Event> {
        while self.head < self.list.len() && self.done[self.head] {
            self.head += 1;
        }
        self.list.get(self.head)
    }

    /// The index of the first unconsumed event.
    fn head_index(&mut self) -> usize {
        self.head();
        self.head
    }

    fn pop(&mut self) -> Event {
        let i = self.head_index();
        self.done[i] = true;
        self.list[i].clone()
    }

    /// The first unconsumed event `want` accepts (KRR's forward search), consumed.
    fn take(&mut self, want: impl Fn(&Event) -> bool) -> Option<Event> {
        self.head();
        let i = (self.head..self.list.len()).find(|&i| !self.done[i] && want(&self.list[i]))?;
        self.done[i] = true;
        Some(self.list[i].clone())
    }

    /// Re-create a host append in the ring: the event's bytes at `current_byte`.
    fn append(&mut self, i: usize) {
        let raw = &self.raw[i];
        let t = u32::from_le_bytes(raw[..4].try_into().unwrap());
        self.ring.append(t, &raw[4..]);
    }
}

struct Bus {
    ev: Events,
}

impl krr_runtime::Bus for Bus {
    fn port_in(&mut self, cpu: &CpuState, port: u16, _: u8) -> u32 {
        let i = self.ev.head_index();
        match self.ev.pop() {
            Event::IoIn(io) => {
                assert_eq!(io.rip, cpu.rip, "IO_IN {i} (port {port:#x}) RIP");
                assert_eq!(io.inst_cnt, cpu.icount, "IO_IN {i} count");
                self.ev.append(i);
                io.value as u32
            }
            other => panic!("IN at {:#x}: head {i} is {other:?}", cpu.rip),
        }
    }
    fn port_out(&mut self, _: &CpuState, port: u16, _: u8, _: u32) {
        panic!("OUT {port:#x}");
    }
    fn mmio_read(&mut self, _: &CpuState, phys: u64, _: u8) -> u64 {
        panic!("MMIO read {phys:#x}");
    }
    fn mmio_write(&mut self, _: &CpuState, _: u64, _: u8, _: u64) {}
    fn rdtsc(&mut self, cpu: &CpuState) -> u64 {
        match self.ev.pop() {
            Event::Rdtsc(t) => {
                assert_eq!((t.rip, t.inst_cnt), (cpu.rip, cpu.icount), "RDTSC");
                t.value
            }
            other => panic!("RDTSC: head is {other:?}"),
        }
    }
    fn rdrand(&mut self, _: &CpuState, _: u8, seed: bool) -> Option<u64> {
        assert!(seed, "RDRAND is not recorded");
        match self.ev.pop() {
            Event::Rdseed(g) => Some(g.val),
            other => panic!("RDSEED: head is {other:?}"),
        }
    }
}

/// krr's GPR array from a `kvm_regs`.
fn gprs(r: &KvmRegs) -> [u64; 16] {
    let mut g = [0u64; 16];
    g[..8].copy_from_slice(&[r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi]);
    g[8..].copy_from_slice(&r.r);
    g
}

/// Write `data` at virtual `va` through the current page tables; false if unmapped.
fn write_virt(core: &mut Core, va: u64, data: &[u8]) -> bool {
    let cr3 = core.cpu().cr3;
    let pas: Option<Vec<u64>> = (0..data.len() as u64)
        .map(|i| translate(core, cr3, va + i))
        .collect();
    let Some(pas) = pas else { return false };
    for (pa, b) in pas.into_iter().zip(data) {
        core.mem_mut().write(pa, &[*b]).unwrap();
    }
    true
}

/// Replay the recording beside `snapshot` with `vmlinux`; the state after the last event.
pub fn replay(snapshot: &Path, vmlinux: &Path) -> FinalState {
    let rec = Recording::open(RecordingFiles::beside(snapshot).unwrap()).unwrap();
    let v = Vmlinux::open(vmlinux).unwrap();
    let sym = |n: &str| v.symbol(n).unwrap().addr;
    let s = &rec.snapshot;
    let bar2 = s.ivshmem.as_ref().unwrap().bar2();
    let ring_bytes = rec.log.ring_bytes().unwrap();
    let mut core = Core::new(bar2 + ring_bytes).unwrap();
    for (&off, page) in &s.ram.pages {
        core.mem_mut()
            .write(s.ram.gpa_of(off).unwrap(), page)
            .unwrap();
    }
    let (initial, _) = rec.log.headers.unwrap();
    core.mem_mut().write(bar2, &initial.raw).unwrap();
    let (arch, _) = krr::krr_replay::cpu::arch_state(&s.vcpus[0].cpu).unwrap();
    *core.arch_mut() = arch;
    for e in core.cpuid_mut().entries.iter_mut() {
        if e.leaf == 7 && (e.subleaf == 0 || e.subleaf == u32::MAX) {
            e.ebx |= 1 << 18;
        }
    }
    core.flush_tlb();
    let traps = TrapPoints::resolve(&v, 0, false, &SourceLine::krr_lock_release()).unwrap();
    let bytes = std::fs::read(rec.files.events.clone().unwrap()).unwrap();
    let offs = &rec.log.offsets;
    let raw = (0..offs.len())
        .map(|i| {
            let end = offs.get(i + 1).copied().unwrap_or(bytes.len() as u64);
            bytes[offs[i] as usize..end as usize].to_vec()
        })
        .collect();
    let n = rec.log.events.len();
    let ring = Ring::new((core.mem().host_address() + bar2) as *mut u8, ring_bytes);
    let mut bus = Bus {
        ev: Events {
            list: rec.log.events.clone(),
            raw,
            done: vec![false; n],
            head: 0,
            ring,
        },
    };
    let mut engine = Engine::new(EngineConfig {
        deliver_exceptions: true,
        ..Default::default()
    })
    .unwrap();
    let (rep, vmcall) = (sym("krr_copy_rep"), sym("krr_vmcall"));
    let mut stops: Vec<u64> = traps.iter().map(|t| t.1).collect();
    stops.extend([rep, vmcall]);
    engine.set_stop_addresses(stops);
    engine.set_stop_at_user_mode(true);
    // A CFU/GFU write waiting for its page (KRR's deferral to PF_EXEC_END).
    let mut pending: Option<(u64, Vec<u8>)> = None;
    loop {
        let irq = match bus.ev.head() {
            Some(Event::Interrupt(i)) if i.rip >= m::KERNEL_VA => Some(i.clone()),
            _ => None,
        };
        core.set_icount_limit(irq.as_ref().map_or(u64::MAX, |i| i.inst_cnt));
        let exit = engine.run_with_bus(&mut core, &mut bus);
        let cpu = core.cpu();
        match exit {
            Exit::Budget => {
                let i = irq.expect("a budget only for an interrupt");
                assert_eq!(cpu.rip, i.rip, "interrupt RIP at count {}", i.inst_cnt);
                let (rcx, src, dst, cr3) = (cpu.gpr[1], cpu.gpr[6], cpu.gpr[7], cpu.cr3);
                if rcx != i.regs.rcx {
                    // Inside the REP MOVSB: its first iterations, then the interrupt.
                    assert_eq!(cpu.rip, rep);
                    let k = rcx - i.regs.rcx;
                    let mut b = vec![0u8; k as usize];
                    for (j, x) in b.iter_mut().enumerate() {
                        let pa = translate(&core, cr3, src + j as u64).unwrap();
                        core.mem().read(pa, std::slice::from_mut(x)).unwrap();
                    }
                    assert!(write_virt(&mut core, dst, &b));
                    let a = core.arch_mut();
                    (a.gpr[1], a.gpr[6], a.gpr[7]) = (i.regs.rcx, src + k, dst + k);
                }
                assert_eq!(core.cpu().gpr, gprs(&i.regs), "GPRs at the interrupt");
                let at = bus.ev.head_index();
                bus.ev.pop();
                bus.ev.append(at);
                engine.inject_interrupt(&mut core, i.vector as u8).unwrap();
            }
            Exit::UserMode => {
                let at = bus.ev.head_index();
                let Some(e) = bus.ev.head().cloned() else {
                    break;
                };
                match e {
                    Event::Syscall(sc) => {
                        bus.ev.pop();
                        // SYSCALL from the loop's instruction, then the recorded GPRs.
                        let count = core.cpu().icount;
                        core.arch_mut().rip = m::USER_CODE;
                        engine.set_stop_at_user_mode(false);
                        core.set_icount_limit(count + 1);
                        assert_eq!(engine.run_with_bus(&mut core, &mut bus), Exit::Budget);
                        engine.set_stop_at_user_mode(true);
                        let a = core.arch_mut();
                        a.icount = count;
                        a.gpr = gprs(&sc.regs);
                    }
                    Event::Interrupt(i) => {
                        bus.ev.pop();
                        bus.ev.append(at);
                        let a = core.arch_mut();
                        a.gpr = gprs(&i.regs);
                        a.rip = i.rip;
                        engine.inject_interrupt(&mut core, i.vector as u8).unwrap();
                    }
                    Event::Exception(x) => {
                        if x.exception_index != 14 {
                            bus.ev.pop(); // a PF is consumed at exc_page_fault
                        }
                        // SAFETY: the engine is not running.
                        let cpu = unsafe { core.state_mut() };
                        cpu.gpr = gprs(&x.regs);
                        cpu.rip = x.regs.rip;
                        cpu.rflags = x.regs.rflags & !0x8d5 | 2;
                        cpu.cc_op = 0;
                        cpu.cc_res = x.regs.rflags & 0x8d5;
                        cpu.exec.exception.address = x.cr2;
                        let flags = cpu.rflags_value();
                        krr_runtime::interrupt::deliver(
                            cpu,
                            x.exception_index as u8,
                            krr_runtime::interrupt::EventKind::Exception,
                            Some(x.error_code as u32),
                            flags,
                            x.regs.rip,
                            x.regs.rip,
                        )
                        .unwrap();
                        cpu.cr2 = x.cr2;
                    }
                    other => panic!("user mode: unexpected event {at}: {other:?}"),
                }
            }
            Exit::Stop { rip } if rip == vmcall => {
                ring.set_u64(40, ring.u64(40) + ring.current_byte() - 4096);
                ring.set_u64(24, 4096);
                ring.set_u32(0, 0);
                let a = core.arch_mut();
                a.rip += 3;
                a.icount += 1;
            }
            Exit::Stop { rip } => {
                let (rdi, cr2, cr3) = (cpu.gpr[7], cpu.cr2, cpu.cr3);
                match traps.at(rip) {
                    Some(TrapPoint::CfuBegin) => {
                        let e = bus
                            .ev
                            .take(|e| matches!(e, Event::Cfu(c) if c.src_addr == rdi));
                        let Some(Event::Cfu(c)) = e else {
                            panic!("no CFU from {rdi:#x}")
                        };
                        let data = c.data[..c.data.len() - 1].to_vec();
                        if !write_virt(&mut core, c.src_addr, &data) {
                            pending = Some((c.src_addr, data));
                        }
                    }
                    Some(TrapPoint::GfuBegin) => {
                        let e = bus.ev.take(|e| matches!(e, Event::Gfu(g) if g.ptr == rdi));
                        let Some(Event::Gfu(g)) = e else {
                            panic!("no GFU at {rdi:#x}")
                        };
                        let data = g.val.to_le_bytes()[..g.size as usize].to_vec();
                        if !write_virt(&mut core, g.ptr, &data) {
                            pending = Some((g.ptr, data));
                        }
                    }
                    Some(TrapPoint::PteClear | TrapPoint::PteRead | TrapPoint::PteReadOnce) => {
                        let pa = translate(&core, cr3, rdi).unwrap();
                        if core.mem().read_u64(pa).unwrap() & m::PTE_US != 0 {
                            let e = bus.ev.take(|e| matches!(e, Event::Pte(p) if p.ptr == rdi));
                            let Some(Event::Pte(p)) = e else {
                                panic!("no PTE at {rdi:#x}")
                            };
                            core.mem_mut().write_u64(pa, p.val).unwrap();
                        }
                    }
                    Some(TrapPoint::PfExec) => match bus.ev.pop() {
                        Event::Exception(x) if x.exception_index == 14 => {
                            assert_eq!(x.cr2, cr2, "#PF address")
                        }
                        other => panic!("exc_page_fault: head is {other:?}"),
                    },
                    Some(TrapPoint::PfExecEnd) => {
                        if let Some((va, data)) = pending.take() {
                            assert!(write_virt(&mut core, va, &data));
                        }
                    }
                    _ => {}
                }
                engine.resume_past_stop(core.cpu());
            }
            other => panic!("replay stopped: {other:?} at {:#x}", cpu.rip),
        }
    }
    let c = core.cpu();
    let read = |va: u64| core.mem().read_u64(m::kernel_pa(va)).unwrap();
    FinalState {
        rip: c.rip,
        gpr: c.gpr,
        rflags: c.rflags_value(),
        inst_cnt: c.icount,
        checksum_addr: sym("krr_checksum"),
        checksum: read(sym("krr_checksum")),
        jiffies_addr: sym("krr_jiffies"),
        jiffies: read(sym("krr_jiffies")),
    }
}
