//! The replay's bus: what the kernel reads from outside the CPU comes from the event list at
//! the instruction that reads it (port IN, RDTSC, RDRAND/RDSEED, RDPMC; krr-spec 3.5), the
//! ring's host-side changes are queued for the driver (`ring.rs`), hypercalls are KRR's
//! (INST_SYNC, queue full), and the
//! reads KRR did not record go to small models (`devices.rs`). It also keeps KRR's
//! instruction count (3.3) as an offset from krr's own count, because port inputs and
//! INST_SYNC resynchronise it inside an instruction.

use super::devices::Devices;
use super::queue::Queue;
use super::ring::{Ring, RingOp};
use crate::krr_rec::events::Event;
use crate::krr_rec::layout::ty;
use krr_runtime::{Bus, CpuState};

/// The PIIX IDE function's bus-master DMA as KRR's replay plays it (krr-spec 3.5 DMA_DONE,
/// 1.4): the guest's start of a read DMA (device to memory) consumes a DMA_DONE at the head
/// and the device's next DMA log entry, whose data is written to guest memory.
#[derive(Clone)]
pub struct IdeDma {
    /// BAR4's I/O base (primary channel's command register; the secondary's is at +8).
    pub bmdma_base: u16,
    pub entries: std::sync::Arc<Vec<crate::krr_rec::dma::DmaEntry>>,
    pub next: usize,
    /// The DMA_DONE event (its index in the log) each entry was written with, in order.
    pub placed: Vec<usize>,
    cmd: [u8; 2],
}

impl IdeDma {
    pub fn new(bmdma_base: u16, entries: Vec<crate::krr_rec::dma::DmaEntry>) -> IdeDma {
        IdeDma {
            bmdma_base,
            entries: std::sync::Arc::new(entries),
            next: 0,
            placed: Vec::new(),
            cmd: [0; 2],
        }
    }
}

/// Where a vCPU's count comes from: the event at which it was last set or checked (an
/// interrupt, a port input, INST_SYNC, a #DB), and the events whose spin counts advanced it
/// since (RR_LOCK_ACQUIRE_RET). A count divergence names them: an INST_SYNC's count, or a
/// spin count, can only be checked later.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountSource {
    pub synced: Option<usize>,
    pub spins: Vec<usize>,
}

impl CountSource {
    pub fn synced(&mut self, event: usize) {
        self.synced = Some(event);
        self.spins.clear();
    }
}

/// Where and why the replay left the recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// The event concerned (index in the log) and its description.
    pub event: Option<usize>,
    pub message: String,
}

#[derive(Clone)]
pub struct ReplayBus {
    pub queue: Queue,
    pub ring: Option<Ring>,
    /// Host-side ring changes not yet written (the driver applies them before the next
    /// instruction: `stop_after_instruction`).
    pub ring_ops: Vec<RingOp>,
    pub devices: Devices,
    /// KRR's count = krr's retired instructions + `delta` (+1 inside a paused REP that has
    /// run iterations): resynchronised where KRR overwrites its count.
    pub delta: i64,
    /// The vCPU being replayed.
    pub vcpu: i32,
    pub divergence: Option<Divergence>,
    /// The spin count cached from the last entry event (SMP: patched in at
    /// RR_LOCK_ACQUIRE_RET) and whether INST_SYNC has just set the count.
    pub cached_spin: u64,
    /// The event `cached_spin` came from.
    pub spin_source: Option<usize>,
    pub skip_sync: bool,
    /// Where the running vCPU's count comes from.
    pub count_source: CountSource,
    /// Count resynchronisations at port inputs (|Δ| <= 2, as KRR tolerates).
    pub io_resyncs: u64,
    /// Instructions whose results the CPU model gave though KRR never recorded them, with
    /// the first RIP of each.
    pub model_answers: Vec<(&'static str, u64, u64)>,
    pub pic_guessed: bool,
    /// The recording had RDTSC exiting on (`rr_trap_rdtsc=1`): KVM wrote the RIP and count
    /// of kernel RDTSCs into their events, which are then checked (docs/KRR-EVENT-CHECKS.md).
    pub rdtsc_exiting: bool,
    /// RIP and krr count of the last port input: a REP INS repeats it, and KRR then ignores
    /// the count.
    last_in: (u64, u64),
    /// (RIP, retired count) of the last port access: another at the same pair is the next
    /// iteration of one REP INS/OUTS.
    last_port_access: (u64, u64),
    pub ide: Option<IdeDma>,
    /// DMA data to write into guest-physical memory (the driver does, at the next exit).
    pub pending_dma: Vec<(u64, Vec<u8>)>,
    /// IDE read DMAs started while the head was not a DMA_DONE (KRR then does nothing).
    pub unmatched_dma_starts: u64,
    /// The e1000's register BAR (base, size): its reads are MMIO events.
    pub e1000_bar: Option<(u64, u64)>,
}

impl ReplayBus {
    pub fn new(queue: Queue, ring: Option<Ring>, devices: Devices) -> ReplayBus {
        ReplayBus {
            queue,
            ring,
            ring_ops: Vec::new(),
            devices,
            delta: 0,
            vcpu: 0,
            divergence: None,
            cached_spin: 0,
            spin_source: None,
            skip_sync: false,
            count_source: CountSource::default(),
            io_resyncs: 0,
            model_answers: Vec::new(),
            pic_guessed: false,
            rdtsc_exiting: false,
            last_in: (u64::MAX, 0),
            last_port_access: (u64::MAX, u64::MAX),
            ide: None,
            pending_dma: Vec::new(),
            unmatched_dma_starts: 0,
            e1000_bar: None,
        }
    }

    /// KRR's count at the current instruction boundary (not inside a paused REP).
    pub fn count(&self, cpu: &CpuState) -> u64 {
        (cpu.icount as i64 + self.delta) as u64
    }

    /// Make KRR's count `count` at this boundary.
    pub fn resync(&mut self, cpu: &CpuState, count: u64) {
        self.delta = count as i64 - cpu.icount as i64;
    }

    /// KRR's count of string port IO (`rr_inc_inst`, krr-spec 3.3): its single-stepped REP
    /// INS/OUTS is one block execution per iteration, counted once when it starts; a later
    /// iteration of REP OUTS counts one more, and the last one (RCX = 1 before it) one more
    /// again; of REP INS only the last one counts one more. krr counts the instruction once,
    /// so the difference goes into the count's offset as the iterations run.
    fn count_string_io(&mut self, cpu: &CpuState, output: bool) {
        let here = (cpu.rip, cpu.icount);
        if std::mem::replace(&mut self.last_port_access, here) != here {
            return;
        }
        let last = cpu.gpr[krr_runtime::gpr::RCX] == 1;
        self.delta += output as i64 + last as i64;
    }

    /// Cache the spin count of event `event` for RR_LOCK_ACQUIRE_RET.
    pub fn cache_spin(&mut self, spin: u64, event: usize) {
        self.cached_spin = spin;
        self.spin_source = Some(event);
    }

    /// " (this vCPU's count was last synchronised at event ..., then advanced by the spin
    /// counts of ...)" for a count divergence.
    pub fn count_note(&self) -> String {
        let s = &self.count_source;
        let mut parts = Vec::new();
        if let Some(k) = s.synced {
            parts.push(format!("last synchronised at {}", self.queue.describe(k)));
        }
        if !s.spins.is_empty() {
            let events: Vec<String> = s.spins.iter().map(|&k| self.queue.describe(k)).collect();
            parts.push(format!(
                "advanced by the spin count{} of {}",
                if events.len() > 1 { "s" } else { "" },
                events.join(", ")
            ));
        }
        if parts.is_empty() {
            return String::new();
        }
        format!(" (this vCPU's count was {})", parts.join(", then "))
    }

    pub fn diverge(&mut self, event: Option<usize>, message: String) {
        if self.divergence.is_none() {
            let message = match event {
                Some(i) => format!("{}: {message}", self.queue.describe(i)),
                None => message,
            };
            self.divergence = Some(Divergence { event, message });
        }
    }

    /// A write to a BMDMA command register: a read DMA starting (start bit set, direction
    /// device-to-memory) takes a DMA_DONE at the head and the next DMA log entry.
    fn ide_command(&mut self, cpu: &CpuState, port: u16, value: u8) {
        let Some(ide) = &mut self.ide else { return };
        let channel = match port.wrapping_sub(ide.bmdma_base) {
            0 => 0,
            8 => 1,
            _ => return,
        };
        let old = std::mem::replace(&mut ide.cmd[channel], value);
        if value & 1 == 0 || old & 1 != 0 || value & 8 == 0 {
            return;
        }
        match self.queue.head() {
            Some((i, Event::DmaDone { .. })) => {
                let Some(ide) = &mut self.ide else { return };
                let Some(entry) = ide.entries.get(ide.next) else {
                    let msg = format!(
                        "IDE read DMA started at RIP {:#x}, but the DMA log has only {} entries",
                        cpu.rip,
                        ide.entries.len()
                    );
                    self.diverge(Some(i), msg);
                    return;
                };
                ide.next += 1;
                ide.placed.push(i);
                for sg in &entry.sgs {
                    self.pending_dma.push((sg.addr, sg.data.clone()));
                }
                self.append_recorded(i);
                self.queue.take(i);
            }
            _ => {
                self.unmatched_dma_starts += 1;
                log::warn!(
                    "IDE read DMA started at RIP {:#x} while the next event is not a DMA_DONE (KRR does nothing then)",
                    cpu.rip
                );
            }
        }
    }

    /// Ring append of event `i`'s recorded payload, as the host appended it at record.
    pub fn append_recorded(&mut self, i: usize) {
        let kind = self.queue.event(i).type_number();
        let payload = self.queue.payload(i).to_vec();
        if self.ring.is_some() {
            self.ring_ops.push(RingOp::Append(kind, payload));
        }
    }

    /// Write the queued ring changes into guest memory.
    pub fn flush_ring(&mut self, mem: &mut krr_runtime::GuestMemory) -> Result<(), String> {
        if let Some(r) = &mut self.ring {
            for op in self.ring_ops.drain(..) {
                r.apply(mem, op)?;
            }
        }
        Ok(())
    }

    /// The head if it is of type `kind` (for this vCPU when the event names one), else a
    /// divergence naming what was found.
    fn expect_head(&mut self, cpu: &CpuState, kind: u32, what: &str) -> Option<usize> {
        match self.queue.head() {
            Some((i, e)) if e.type_number() == kind => Some(i),
            Some((i, e)) => {
                let msg = format!(
                    "the kernel executed {what} at RIP {:#x} (count {}), but the recording's next event is {e}",
                    cpu.rip,
                    self.count(cpu)
                );
                self.diverge(Some(i), msg);
                None
            }
            None => {
                let msg = format!(
                    "the kernel executed {what} at RIP {:#x} after the last event",
                    cpu.rip
                );
                self.diverge(None, msg);
                None
            }
        }
    }
}

impl Bus for ReplayBus {
    fn port_in(&mut self, cpu: &CpuState, port: u16, size: u8) -> u32 {
        self.count_string_io(cpu, false);
        if let Some(model) = self.devices.port_in(port, size) {
            return model.unwrap_or_else(|| {
                self.pic_guessed = true;
                0xff
            });
        }
        let what = format!("IN from port {port:#x}");
        let Some(i) = self.expect_head(cpu, ty::IO_IN, &what) else {
            return u32::MAX;
        };
        let Event::IoIn(e) = self.queue.event(i).clone() else {
            unreachable!()
        };
        if e.rip != cpu.rip {
            let msg = format!("{what} at RIP {:#x}, recorded at RIP {:#x}", cpu.rip, e.rip);
            self.diverge(Some(i), msg);
            return u32::MAX;
        }
        // KVM wrote the vCPU's id (KRR's replayer requires it).
        if e.id != self.vcpu {
            let msg = format!("{what} on vCPU {}, recorded on vCPU {}", self.vcpu, e.id);
            self.diverge(Some(i), msg);
            return u32::MAX;
        }
        // The count KVM sampled before the IN retired; KRR resynchronises within 2 and
        // ignores it for an input repeated at one RIP (REP INS).
        let count = self.count(cpu);
        let diff = count.abs_diff(e.inst_cnt);
        // KRR's rule: the RIP of the last input and its count or one more (a REP INS's
        // iterations); a later input at the same RIP is checked.
        let (last_rip, last_icount) = std::mem::replace(&mut self.last_in, (cpu.rip, cpu.icount));
        let repeated = last_rip == cpu.rip && cpu.icount.wrapping_sub(last_icount) <= 1;
        if diff != 0 && !repeated {
            if diff <= 2 {
                self.io_resyncs += 1;
                self.resync(cpu, e.inst_cnt);
            } else {
                let msg = format!(
                    "{what} at RIP {:#x} at count {count}, recorded at count {}{}",
                    cpu.rip,
                    e.inst_cnt,
                    self.count_note()
                );
                self.diverge(Some(i), msg);
            }
        }
        if !repeated {
            self.count_source.synced(i);
        }
        self.append_recorded(i);
        self.queue.take(i);
        let mask = if size >= 4 {
            u32::MAX as u64
        } else {
            (1u64 << (8 * size as u32)) - 1
        };
        (e.value & mask) as u32
    }

    fn port_out(&mut self, cpu: &CpuState, port: u16, size: u8, value: u32) {
        self.count_string_io(cpu, true);
        self.devices.port_out(port, value);
        if size == 1 {
            self.ide_command(cpu, port, value as u8);
        }
    }

    fn mmio_read(&mut self, cpu: &CpuState, phys: u64, size: u8) -> u64 {
        if let Some(v) = self.devices.mmio_read(phys, size) {
            return v;
        }
        if self
            .e1000_bar
            .is_some_and(|(base, len)| phys >= base && phys < base + len)
        {
            // QEMU's e1000 recorded each register read it performed (krr-spec 3.5 MMIO).
            let what = format!("an e1000 register read at {phys:#x}");
            let Some(i) = self.expect_head(cpu, ty::MMIO, &what) else {
                return u64::MAX >> (64 - 8 * size as u32);
            };
            let Event::Mmio(e) = self.queue.event(i) else {
                unreachable!()
            };
            let v = e.value;
            self.append_recorded(i);
            self.queue.take(i);
            return v & (u64::MAX >> (64 - 8 * size as u32));
        }
        log::debug!(
            "MMIO read of {size} bytes at {phys:#x} (RIP {:#x}): no device",
            cpu.rip
        );
        u64::MAX >> (64 - 8 * size as u32)
    }

    fn mmio_write(&mut self, _cpu: &CpuState, phys: u64, _size: u8, value: u64) {
        self.devices.mmio_write(phys, value);
    }

    fn rdtsc(&mut self, cpu: &CpuState) -> u64 {
        // KRR pops the head even when it is not an RDTSC; the count is never checked.
        let Some(i) = self.expect_head(cpu, ty::RDTSC, "RDTSC") else {
            if let Some((i, _)) = self.queue.head() {
                self.queue.take(i);
            }
            return 0;
        };
        let Event::Rdtsc(e) = self.queue.event(i).clone() else {
            unreachable!()
        };
        if self.rdtsc_exiting && cpu.cpl() == 0 {
            let count = self.count(cpu);
            if e.rip != cpu.rip || count.abs_diff(e.inst_cnt) > 2 {
                let msg = format!(
                    "RDTSC at RIP {:#x} count {count}, recorded at RIP {:#x} count {}{}",
                    cpu.rip,
                    e.rip,
                    e.inst_cnt,
                    self.count_note()
                );
                self.diverge(Some(i), msg);
            }
        }
        self.queue.take(i);
        e.value
    }

    fn rdrand(&mut self, cpu: &CpuState, size: u8, seed: bool) -> Option<u64> {
        // QEMU's one helper serves RDRAND and RDSEED from RDSEED events (krr-spec 3.5).
        let what = if seed { "RDSEED" } else { "RDRAND" };
        let i = self.expect_head(cpu, ty::RDSEED, what)?;
        let Event::Rdseed(e) = self.queue.event(i) else {
            unreachable!()
        };
        let v = if size >= 8 {
            e.val
        } else {
            e.val & ((1u64 << (8 * size as u32)) - 1)
        };
        self.queue.take(i);
        Some(v)
    }

    fn rdpmc(&mut self, cpu: &CpuState, _counter: u32) -> Option<u64> {
        // KVM recorded RDPMC values as IO_IN events; only the RIP is checked, and the head is
        // consumed even on a mismatch.
        let (i, e) = self.queue.head()?;
        let value = match e {
            Event::IoIn(io) => {
                let (rip, value) = (io.rip, io.value);
                if rip != cpu.rip {
                    let msg = format!("RDPMC at RIP {:#x}, recorded at RIP {rip:#x}", cpu.rip);
                    self.diverge(Some(i), msg);
                }
                value
            }
            other => {
                let msg = format!(
                    "the kernel executed RDPMC at RIP {:#x}, but the recording's next event is {other}",
                    cpu.rip
                );
                self.diverge(Some(i), msg);
                0
            }
        };
        self.append_recorded(i);
        self.queue.take(i);
        Some(value)
    }

    fn hypercall(&mut self, cpu: &CpuState) -> bool {
        match cpu.gpr[0] {
            // INST_SYNC: KVM sampled the count at the hypercall's exit, before it skipped
            // (and counted) the VMCALL (krr-spec 3.3): the recorded count is the one before
            // this instruction, as for a port input.
            20 => {
                if let Some(i) = self.expect_head(cpu, ty::INST_SYNC, "hypercall 20 (INST_SYNC)") {
                    let Event::InstSync(n) = self.queue.event(i) else {
                        unreachable!()
                    };
                    let (count, spin) = (n.inst_cnt, n.spin_count);
                    self.resync(cpu, count);
                    self.count_source.synced(i);
                    self.cache_spin(spin, i);
                    self.skip_sync = true;
                    // KRR's replayer appends the guest form with only inst_cnt set.
                    let mut guest_form = vec![0u8; 1072];
                    guest_form[1056..1064].copy_from_slice(&count.to_le_bytes());
                    if self.ring.is_some() {
                        self.ring_ops
                            .push(RingOp::Append(ty::INST_SYNC, guest_form));
                    }
                    self.queue.take(i);
                }
            }
            102 if self.ring.is_some() => self.ring_ops.push(RingOp::Rotate),
            // 100 start, 101 end, 14, 17, 18: no-ops in replay; 13/15/16 are legacy inputs no
            // current guest agent issues.
            13 | 15 | 16 => {
                let msg = format!(
                    "legacy KRR hypercall {} at RIP {:#x} (not replayed by krr)",
                    cpu.gpr[0], cpu.rip
                );
                self.diverge(None, msg);
            }
            _ => {}
        }
        true
    }

    fn model_answered(&mut self, cpu: &CpuState, mnemonic: &'static str) {
        match self.model_answers.iter_mut().find(|m| m.0 == mnemonic) {
            Some(m) => m.2 += 1,
            None => {
                log::warn!(
                    "the replayed kernel executed {mnemonic} at RIP {:#x}: KRR does not record it, the CPU model answers (a divergence is possible)",
                    cpu.rip
                );
                self.model_answers.push((mnemonic, cpu.rip, 1));
            }
        }
    }

    fn stop_after_instruction(&self, _cpu: &CpuState) -> bool {
        self.divergence.is_some()
            || self.queue.is_empty()
            || !self.ring_ops.is_empty()
            || !self.pending_dma.is_empty()
    }

    fn wants_exit(&self, _cpu: &CpuState) -> bool {
        self.divergence.is_some() || !self.pending_dma.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::krr_rec::dma::{DmaEntry, DmaSg};
    use crate::krr_rec::events::{Gfu, IoInput, KrrLog, Node};

    fn bus(events: Vec<Event>) -> ReplayBus {
        let n = events.len();
        let log = KrrLog {
            headers: None,
            events,
            // Every payload is 32 bytes of 0xab in this made-up file.
            offsets: (0..n as u64).map(|i| 96 + 36 * i).collect(),
            file_len: 96 + 36 * n as u64,
        };
        let mut bytes = vec![0u8; 96];
        for _ in 0..n {
            bytes.extend_from_slice(&[0; 4]);
            bytes.extend_from_slice(&[0xab; 32]);
        }
        let ring = Ring::new(0xf000_0000, 4096 + (1 << 20));
        ReplayBus::new(
            Queue::new(&log, &bytes),
            Some(ring),
            Devices::new(&[None], [None, None], None),
        )
    }

    fn io(value: u64, inst_cnt: u64, rip: u64) -> Event {
        Event::IoIn(IoInput {
            id: 0,
            value,
            inst_cnt,
            rip,
        })
    }

    #[test]
    fn port_inputs_are_checked_resynchronised_and_appended() {
        let mut core = krr_runtime::Core::new(1 << 20).unwrap();
        core.arch_mut().rip = 0x1000;
        core.arch_mut().icount = 50;
        let mut b = bus(vec![
            io(0x1234, 51, 0x1000),
            io(7, 90, 0x1000),
            io(1, 0, 0x2000),
        ]);
        // Count 50 against 51: within 2, resynchronised.
        assert_eq!(b.port_in(core.cpu(), 0x60, 1), 0x34);
        assert_eq!((b.io_resyncs, b.count(core.cpu())), (1, 51));
        assert_eq!(b.ring_ops, [RingOp::Append(3, vec![0xab; 32])]);
        assert!(b.stop_after_instruction(core.cpu()));
        // The same RIP again (a REP INS): the count is not compared.
        assert_eq!(b.port_in(core.cpu(), 0x60, 2), 7);
        assert!(b.divergence.is_none());
        // Another RIP than recorded: a divergence naming the event, not consumed.
        core.arch_mut().rip = 0x1800;
        b.port_in(core.cpu(), 0x60, 4);
        let d = b.divergence.clone().unwrap();
        assert_eq!(d.event, Some(2));
        assert!(d.message.starts_with("event 3 (IO Input"), "{}", d.message);
        assert!(
            d.message.contains("recorded at RIP 0x2000"),
            "{}",
            d.message
        );
        assert_eq!(b.queue.remaining(), 1);
    }

    #[test]
    fn rep_outs_and_rep_ins_count_as_krrs_single_step_does() {
        use krr_runtime::gpr::RCX;
        let mut core = krr_runtime::Core::new(1 << 20).unwrap();
        core.arch_mut().rip = 0x1000;
        core.arch_mut().icount = 10;
        let mut b = bus(vec![]);
        // REP OUTSB of 4: RCX 4, 3, 2, 1 before the iterations. KRR: 1 + 1 + 1 + (1 + 1).
        for rcx in (1..=4).rev() {
            core.arch_mut().gpr[RCX] = rcx;
            b.port_out(core.cpu(), 0x3f8, 1, 0);
        }
        core.arch_mut().icount += 1;
        assert_eq!(b.count(core.cpu()), 11 + 4);
        // A plain OUT at the same RIP after it retired, twice (a loop): once each.
        for _ in 0..2 {
            b.port_out(core.cpu(), 0x80, 1, 0);
            core.arch_mut().icount += 1;
        }
        assert_eq!(b.count(core.cpu()), 13 + 4);
        // REP OUTSB of 1: counted once.
        core.arch_mut().rip = 0x2000;
        core.arch_mut().gpr[RCX] = 1;
        b.port_out(core.cpu(), 0x80, 1, 0);
        core.arch_mut().icount += 1;
        assert_eq!(b.count(core.cpu()), 14 + 4);
        // REP INSB of 3 (the ports are the models': no events): the last iteration adds one.
        core.arch_mut().rip = 0x3000;
        for rcx in (1..=3).rev() {
            core.arch_mut().gpr[RCX] = rcx;
            b.port_in(core.cpu(), 0x21, 1);
        }
        core.arch_mut().icount += 1;
        assert_eq!(b.count(core.cpu()), 15 + 4 + 1);
    }

    #[test]
    fn rdtsc_rdseed_and_inst_sync() {
        let mut core = krr_runtime::Core::new(1 << 20).unwrap();
        core.arch_mut().icount = 10;
        let mut b = bus(vec![
            Event::Rdtsc(IoInput {
                id: 0,
                value: 0x1_0000_0002,
                inst_cnt: 0,
                rip: 0,
            }),
            Event::Rdseed(Gfu {
                id: 0,
                val: 0xdead_beef_cafe,
                ptr: 0,
                size: 8,
            }),
            Event::InstSync(Node {
                id: 0,
                spin_count: 3,
                inst_cnt: 500,
            }),
        ]);
        assert_eq!(b.rdtsc(core.cpu()), 0x1_0000_0002);
        assert_eq!(b.rdrand(core.cpu(), 4, false), Some(0xbeef_cafe));
        core.arch_mut().gpr[0] = 20;
        assert!(b.hypercall(core.cpu()));
        // The recorded count is the one before the VMCALL; KVM counted the VMCALL too.
        assert_eq!(b.count(core.cpu()), 500);
        core.arch_mut().icount = 11;
        assert_eq!(b.count(core.cpu()), 501);
        assert_eq!((b.cached_spin, b.skip_sync), (3, true));
        assert!(b.queue.is_empty());
        // An RDTSC after the last event: a divergence.
        b.rdtsc(core.cpu());
        assert!(b
            .divergence
            .unwrap()
            .message
            .contains("after the last event"));
    }

    #[test]
    fn an_ide_read_dma_start_takes_a_dma_done_and_the_next_entry() {
        let core = krr_runtime::Core::new(1 << 20).unwrap();
        let mut b = bus(vec![Event::DmaDone { id: 0, inst_cnt: 0 }, io(1, 0, 0)]);
        let entry = DmaEntry {
            inst_cnt: 0,
            rip: 0,
            follow_num: 0,
            cpu_id: 0,
            owner_id: 0,
            dev_type: 0,
            dev_index: 0,
            sgs: vec![DmaSg {
                addr: 0x8000,
                data: vec![5; 512],
            }],
            offset: 0,
        };
        b.ide = Some(IdeDma::new(0xc040, vec![entry]));
        // A write DMA (bit 3 clear) and other ports take nothing.
        b.port_out(core.cpu(), 0xc040, 1, 1);
        b.port_out(core.cpu(), 0xc040, 1, 0);
        b.port_out(core.cpu(), 0xc041, 1, 9);
        assert_eq!(b.queue.remaining(), 2);
        b.port_out(core.cpu(), 0xc048, 1, 9);
        assert_eq!(b.queue.remaining(), 1);
        assert_eq!(b.pending_dma, vec![(0x8000, vec![5; 512])]);
        assert!(b.wants_exit(core.cpu()));
        assert_eq!(b.ring_ops, [RingOp::Append(7, vec![0xab; 32])]);
    }
}
