//! The machine: a small deterministic PC around the engine. Guest RAM, the CPU, the devices on
//! the port bus, virtual time and the run loop that injects interrupts at instruction
//! boundaries.
//!
//! Virtual time is the instruction count: one retired instruction is one nanosecond (a 1 GHz
//! guest clock; the TSC runs at 1 GHz too). While the CPU halts, time jumps to the next device
//! event and the skipped span is added to an idle offset, so `now = icount + idle`. Two runs of
//! the same guest therefore see exactly the same times.

pub mod acpi;
pub mod devices;
pub mod interrupts;
pub mod linux;
mod ram_dma;

use crate::trace::{Event, EventData};
use devices::{DeviceCtx, IrqLines, MachineRequest, PortDevice};
use krr_jit::{Engine, EngineConfig, Exit};
use krr_runtime::{Bus, Core, CpuState};
use std::collections::HashSet;
use std::io::Write;

/// What the recorder's sink receives: events, in order, with the CPU state at the time of
/// the call; or the moment for a snapshot (every event before it has been given; the CPU is
/// at an instruction boundary where the replay stops too: every event at this instruction
/// count delivered, nothing of the next instruction done).
pub enum RecordItem<'a> {
    Events(&'a mut Vec<Event>, &'a CpuState),
    Snapshot(&'a mut Core),
}

pub type EventSink<'a> = dyn FnMut(RecordItem) -> Result<(), String> + 'a;

/// The recorder's periodic outputs: checkpoint events and snapshots, each every so many
/// instructions (a snapshot interval of 0: none).
pub struct RecordPeriods {
    pub checkpoint: u64,
    pub snapshot: u64,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    PowerOff,
    Reset,
    /// The guest wrote the isa-debug-exit port.
    DebugExit(u32),
    /// HLT with interrupts disabled: nothing can wake the CPU.
    HaltedForever,
    /// The instruction limit given to the run was reached.
    InstructionLimit,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("triple fault at RIP {rip:#x} after {icount} instructions (#{first} then #{second} while delivering it)")]
    TripleFault {
        rip: u64,
        icount: u64,
        first: u8,
        second: u8,
    },
    #[error("access to physical address {phys:#x} with no RAM or device behind it, at RIP {rip:#x} after {icount} instructions")]
    Unbacked { phys: u64, rip: u64, icount: u64 },
    #[error("boot: {0}")]
    Boot(#[from] linux::BootError),
    #[error("guest memory: {0}")]
    Memory(#[from] krr_runtime::MemoryError),
    #[error("engine: {0}")]
    Engine(#[from] krr_jit::EngineError),
    #[error("recording: {0}")]
    Record(String),
}

/// Port ranges `(first port, count, device, base)`: the device sees `port - base`.
struct PortMap {
    ranges: Vec<(u16, u16, usize, u16)>,
}

impl PortMap {
    fn find(&self, port: u16) -> Option<(usize, u16)> {
        self.ranges
            .iter()
            .find(|&&(start, len, _, _)| port >= start && port < start + len)
            .map(|&(_, _, dev, base)| (dev, port - base))
    }
}

/// COM1.
const SERIAL_BASE: u16 = 0x3f8;
const SERIAL_IRQ: u8 = 4;
/// The disk (virtio-blk) sits at PCI 00:01.0 with its INTA# on ISA IRQ 11
/// ([`acpi::PCI_IRQ`], the line the ACPI tables route every slot to).
pub const DISK_PCI_SLOT: u8 = 1;
/// The RTC's clock starts at 2024-01-01 00:00:00 UTC in every run.
const RTC_EPOCH: i64 = 1_704_067_200;

/// krr's PC: the devices and their ports (COM1 is kept apart: the machine drains its output).
fn standard_pc(mem_bytes: u64) -> (Vec<Box<dyn PortDevice>>, PortMap) {
    use devices::*;
    let (pit_ports, port61) = pit::Pit::new().into_shared();
    let below_4g = mem_bytes.min(0xc000_0000);
    let above_4g = mem_bytes - below_4g;
    type Wiring = (Box<dyn PortDevice>, Vec<(u16, u16, u16)>);
    let list: Vec<Wiring> = vec![
        (Box::new(pit_ports), vec![(0x40, 4, 0x40)]),
        (Box::new(port61), vec![(0x61, 1, 0x61)]),
        (
            Box::new(i8042::I8042::new()),
            vec![(0x60, 1, 0x60), (0x64, 1, 0x60)],
        ),
        (
            Box::new(rtc::Rtc::new(RTC_EPOCH, below_4g, above_4g)),
            vec![(0x70, 2, 0x70)],
        ),
        (
            Box::new(debug_exit::DebugExit::new()),
            vec![(debug_exit::DEBUG_EXIT_PORT, 1, debug_exit::DEBUG_EXIT_PORT)],
        ),
        (
            Box::new(pm::Pm::new()),
            vec![(pm::PM_BASE, pm::NUM_PORTS, pm::PM_BASE)],
        ),
    ];
    let mut devs = Vec::new();
    let mut ranges = Vec::new();
    for (i, (d, rs)) in list.into_iter().enumerate() {
        devs.push(d);
        for (start, len, base) in rs {
            ranges.push((start, len, i, base));
        }
    }
    (devs, PortMap { ranges })
}

/// The devices and everything the bus needs while the engine runs.
pub struct Board {
    serial: devices::serial::Serial16550,
    /// PCI configuration ports, the host bridge and the PCI functions (their BARs are MMIO).
    pci: devices::pci::PciHost,
    devices: Vec<Box<dyn PortDevice>>,
    ports: PortMap,
    /// The 8259s, the IO-APIC and the local APIC.
    intc: interrupts::Interrupts,
    irq: IrqLines,
    requests: Vec<MachineRequest>,
    /// Time spent halted, added to the instruction count to give virtual time.
    idle_ns: u64,
    /// A device access moved a device's next event before the engine's budget
    /// (`cpu.icount_limit`): the engine must return so the run loop sets a new one, or the
    /// event (e.g. a one-shot timer armed during the run) would be skipped.
    event_moved: bool,
    /// Ports nobody answers, logged once each.
    unknown_ports: HashSet<u16>,
    unknown_mmio: HashSet<u64>,
    pub counters: BusCounters,
    /// Inputs and outputs for the recorder, in order (`None`: not recording).
    pub log: Option<Vec<Event>>,
    /// Host time instead of virtual time (a realistic, nondeterministic run).
    host_clock: Option<std::time::Instant>,
    /// Bytes typed on the host terminal, for COM1's receiver.
    console_input: Option<std::sync::mpsc::Receiver<u8>>,
}

/// What the guest did on the bus (for the run summary and the recorder's statistics).
#[derive(Clone, Debug, Default)]
pub struct BusCounters {
    pub port_in: u64,
    pub port_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub rdtsc: u64,
    pub interrupts: u64,
    pub nmis: u64,
    /// Device writes into guest RAM (DMA), and their bytes.
    pub dma_writes: u64,
    pub dma_bytes: u64,
}

/// Which device a port belongs to.
#[derive(Clone, Copy)]
enum PortOwner {
    Serial,
    Pci,
    Device(usize),
}

impl Board {
    fn now(&self, cpu: &CpuState) -> u64 {
        match self.host_clock {
            None => cpu.icount + self.idle_ns,
            Some(start) => start.elapsed().as_nanos() as u64,
        }
    }

    /// Virtual time in nanoseconds: instructions plus time spent halted.
    pub fn guest_ns(&self, cpu: &CpuState) -> u64 {
        self.now(cpu)
    }

    fn record(&mut self, cpu: &CpuState, data: EventData) {
        if let Some(log) = &mut self.log {
            log.push(Event {
                icount: cpu.icount,
                rip: cpu.rip,
                data,
            });
        }
    }

    /// Run `f` on the device owning a port with a context at the current virtual time.
    fn with_device<R>(
        &mut self,
        cpu: &CpuState,
        dev: PortOwner,
        f: impl FnOnce(&mut dyn PortDevice, &mut DeviceCtx) -> R,
    ) -> R {
        let now = self.now(cpu);
        let mut ctx = DeviceCtx {
            now_ns: now,
            irq: &mut self.irq,
            requests: &mut self.requests,
        };
        let d: &mut dyn PortDevice = match dev {
            PortOwner::Device(i) => self.devices[i].as_mut(),
            PortOwner::Serial => &mut self.serial,
            PortOwner::Pci => &mut self.pci,
        };
        let r = f(d, &mut ctx);
        self.intc.update(self.irq);
        self.note_event_moved(cpu);
        r
    }

    /// Which device answers `port`, and the offset it sees.
    fn route(&self, port: u16) -> Option<(PortOwner, u16)> {
        use devices::pci::{NUM_PORTS, PCI_BASE};
        if (SERIAL_BASE..SERIAL_BASE + 8).contains(&port) {
            return Some((PortOwner::Serial, port - SERIAL_BASE));
        }
        if (PCI_BASE..PCI_BASE + NUM_PORTS).contains(&port) {
            return Some((PortOwner::Pci, port - PCI_BASE));
        }
        self.ports
            .find(port)
            .map(|(d, off)| (PortOwner::Device(d), off))
    }

    /// Bring every device up to `now`. With the host clock the machine may look late: the
    /// device events it missed are played in order first, so a timer pulse (the PIT's OUT is
    /// low for one tick) still reaches the PIC as an edge.
    fn advance_all(&mut self, now: u64) {
        if self.host_clock.is_some() {
            // A bounded catch-up: ticks beyond it are lost, as on a late real machine.
            for _ in 0..64 {
                match self.next_event() {
                    Some(t) if t < now => self.advance_devices(t),
                    _ => break,
                }
            }
        }
        self.advance_devices(now);
    }

    fn advance_devices(&mut self, now: u64) {
        for d in self.devices.iter_mut() {
            let mut ctx = DeviceCtx {
                now_ns: now,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            d.advance(&mut ctx);
        }
        let mut ctx = DeviceCtx {
            now_ns: now,
            irq: &mut self.irq,
            requests: &mut self.requests,
        };
        self.serial.advance(&mut ctx);
        self.intc.advance(now);
        self.intc.update(self.irq);
    }

    /// Bring the interrupt controllers' view of the CPU up to date (IA32_APIC_BASE) before
    /// an access reaches them; returns the current virtual time.
    fn sync_interrupts(&mut self, cpu: &CpuState) -> u64 {
        self.intc.sync_apic_base(cpu.apic_base);
        self.now(cpu)
    }

    fn next_event(&self) -> Option<u64> {
        self.devices
            .iter()
            .filter_map(|d| d.next_event_ns())
            .chain(self.serial.next_event_ns())
            .chain(self.intc.next_event_ns())
            .min()
    }

    /// A device access moved the next device event before the engine's budget: make the
    /// engine return so the run loop sets a new one.
    fn note_event_moved(&mut self, cpu: &CpuState) {
        if let Some(t) = self.next_event() {
            if t.saturating_sub(self.idle_ns) < cpu.exec.icount_limit {
                self.event_moved = true;
            }
        }
    }
}

impl Bus for Board {
    fn port_in(&mut self, cpu: &CpuState, port: u16, size: u8) -> u32 {
        let value = self.port_in_value(cpu, port, size);
        self.record(cpu, EventData::PortIn { port, size, value });
        value
    }

    fn port_out(&mut self, cpu: &CpuState, port: u16, size: u8, value: u32) {
        let sent = self.serial.output().len();
        self.port_out_effect(cpu, port, size, value);
        let console = self.serial.output().len() != sent;
        self.record(
            cpu,
            EventData::PortOut {
                port,
                size,
                value,
                console,
            },
        );
    }

    fn mmio_read(&mut self, cpu: &CpuState, phys: u64, size: u8) -> u64 {
        let value = self.mmio_read_value(cpu, phys, size);
        self.record(cpu, EventData::MmioRead { phys, size, value });
        value
    }

    fn mmio_write(&mut self, cpu: &CpuState, phys: u64, size: u8, value: u64) {
        self.mmio_write_effect(cpu, phys, size, value);
        self.record(cpu, EventData::MmioWrite { phys, size, value });
    }

    fn rdtsc(&mut self, cpu: &CpuState) -> u64 {
        self.counters.rdtsc += 1;
        let value = self.now(cpu);
        self.record(cpu, EventData::Rdtsc { value });
        value
    }

    fn rdrand(&mut self, cpu: &CpuState, size: u8, seed: bool) -> Option<u64> {
        // The CPU model does not advertise RDRAND/RDSEED; report failure (CF=0) if used.
        let value = None;
        self.record(cpu, EventData::Rdrand { seed, size, value });
        value
    }

    fn msr_read(&mut self, cpu: &CpuState, index: u32) -> Option<u64> {
        let value = self.msr_read_value(cpu, index);
        self.record(cpu, EventData::MsrRead { index, value });
        value
    }

    fn msr_write(&mut self, cpu: &CpuState, index: u32, value: u64) -> bool {
        let accepted = self.msr_write_effect(cpu, index, value);
        self.record(
            cpu,
            EventData::MsrWrite {
                index,
                value,
                accepted,
            },
        );
        accepted
    }

    fn cr8_read(&mut self, cpu: &CpuState) -> Option<u64> {
        self.sync_interrupts(cpu);
        let value = self.intc.cr8_read();
        let index = krr_runtime::arch::msr::CR8_EVENT;
        self.record(cpu, EventData::MsrRead { index, value });
        value
    }

    fn cr8_write(&mut self, cpu: &CpuState, value: u64) {
        self.sync_interrupts(cpu);
        let accepted = self.intc.cr8_write(value);
        let index = krr_runtime::arch::msr::CR8_EVENT;
        self.record(
            cpu,
            EventData::MsrWrite {
                index,
                value,
                accepted,
            },
        );
    }

    fn wants_exit(&self, cpu: &CpuState) -> bool {
        // The engine asks at every block boundary: test the CPU's flag before the PIC's
        // priority logic.
        !self.requests.is_empty()
            || self.event_moved
            || self.pci.has_pending_work()
            || (Engine::nmi_deliverable(cpu) && self.intc.nmi_pending())
            || (Engine::interrupts_enabled(cpu) && self.intc.pending())
    }
}

/// The devices' side of each bus access (the `Bus` impl adds the recording).
impl Board {
    fn port_in_value(&mut self, cpu: &CpuState, port: u16, size: u8) -> u32 {
        self.counters.port_in += 1;
        if devices::pic::PicPair::PORTS.contains(&port) {
            // A poll command's read acknowledges.
            let v = self.intc.pic.read(port) as u32;
            self.intc.route_pic_output();
            return v;
        }
        match self.route(port) {
            Some((dev, off)) => self.with_device(cpu, dev, |d, ctx| d.read(off, size, ctx)),
            None => {
                if self.unknown_ports.insert(port) {
                    log::info!(
                        "read of unmodelled port {port:#x} (reads as all-ones; logged once)"
                    );
                }
                if size == 4 {
                    u32::MAX
                } else {
                    (1u32 << (size * 8)) - 1
                }
            }
        }
    }

    fn port_out_effect(&mut self, cpu: &CpuState, port: u16, size: u8, value: u32) {
        self.counters.port_out += 1;
        if devices::pic::PicPair::PORTS.contains(&port) {
            self.intc.pic.write(port, value as u8);
            self.intc.route_pic_output();
            return;
        }
        match self.route(port) {
            Some((dev, off)) => self.with_device(cpu, dev, |d, ctx| d.write(off, size, value, ctx)),
            None => {
                if self.unknown_ports.insert(port) {
                    log::info!(
                        "write of {value:#x} to unmodelled port {port:#x} (ignored; logged once)"
                    );
                }
            }
        }
    }

    fn mmio_read_value(&mut self, cpu: &CpuState, phys: u64, size: u8) -> u64 {
        self.counters.mmio_read += 1;
        let now = self.sync_interrupts(cpu);
        if let Some(v) = self.intc.mmio_read(phys, size, now) {
            return v;
        }
        if let Some(v) = self.pci.mmio_read(phys, size, &mut self.irq) {
            self.intc.update(self.irq);
            return v;
        }
        if self.unknown_mmio.insert(phys & !0xfff) {
            log::info!(
                "read of unmodelled MMIO page {:#x} (reads as all-ones; logged once)",
                phys & !0xfff
            );
        }
        if size == 8 {
            u64::MAX
        } else {
            (1u64 << (size * 8)) - 1
        }
    }

    fn mmio_write_effect(&mut self, cpu: &CpuState, phys: u64, size: u8, value: u64) {
        self.counters.mmio_write += 1;
        let now = self.sync_interrupts(cpu);
        if self.intc.mmio_write(phys, size, value, now) {
            self.note_event_moved(cpu);
            return;
        }
        if self.pci.mmio_write(phys, size, value, &mut self.irq) {
            self.intc.update(self.irq);
            return;
        }
        if self.unknown_mmio.insert(phys & !0xfff) {
            log::info!(
                "write of {value:#x} to unmodelled MMIO page {:#x} (ignored; logged once)",
                phys & !0xfff
            );
        }
    }
}

/// The devices' side of device-MSR accesses.
impl Board {
    /// The local APIC owns the device MSRs (x2APIC registers, IA32_TSC_DEADLINE).
    fn msr_read_value(&mut self, cpu: &CpuState, index: u32) -> Option<u64> {
        let now = self.sync_interrupts(cpu);
        self.intc.msr_read(index, now)
    }

    fn msr_write_effect(&mut self, cpu: &CpuState, index: u32, value: u64) -> bool {
        let now = self.sync_interrupts(cpu);
        let ok = self.intc.msr_write(index, value, now);
        self.note_event_moved(cpu);
        ok
    }
}

/// The local APIC as the CPU model describes it: APIC ID 0 (the only CPU, so the BSP),
/// MAXPHYADDR, x2APIC and the TSC-deadline timer as CPUID reports them.
fn lapic_config(cpuid: &krr_runtime::cpuid::CpuidTable) -> devices::lapic::LocalApicConfig {
    let ecx1 = cpuid.query(1, 0, 0, 0)[2];
    devices::lapic::LocalApicConfig {
        apic_id: 0,
        bsp: true,
        max_phys_addr: (cpuid.query(0x8000_0008, 0, 0, 0)[0] & 0xff) as u8,
        x2apic: ecx1 & (1 << 21) != 0,
        tsc_deadline: ecx1 & (1 << 24) != 0,
    }
}

/// Options for building the machine.
pub struct MachineConfig {
    pub mem_bytes: u64,
    pub engine: EngineConfig,
}

pub struct Machine {
    /// The CPU and guest RAM.
    pub core: Core,
    pub engine: Engine,
    pub board: Board,
    console: Box<dyn Write>,
}

impl Machine {
    pub fn new(config: MachineConfig, console: Box<dyn Write>) -> Result<Machine, MachineError> {
        let core = Core::new(config.mem_bytes)?;
        let engine = Engine::new(EngineConfig {
            deliver_exceptions: true,
            ..config.engine
        })?;
        let (devices, ports) = standard_pc(config.mem_bytes);
        let board = Board {
            serial: devices::serial::Serial16550::new(SERIAL_IRQ),
            pci: devices::pci::PciHost::new(),
            devices,
            ports,
            intc: interrupts::Interrupts::new(
                lapic_config(&core.cpu().cpuid),
                core.cpu().apic_base,
            ),
            irq: IrqLines::default(),
            requests: Vec::new(),
            idle_ns: 0,
            event_moved: false,
            unknown_ports: HashSet::new(),
            unknown_mmio: HashSet::new(),
            counters: BusCounters::default(),
            log: None,
            host_clock: None,
            console_input: None,
        };
        Ok(Machine {
            core,
            engine,
            board,
            console,
        })
    }

    /// Install the CPU model (its CPUID table) before the run starts; the local APIC takes
    /// what the model reports about it.
    pub fn set_cpuid(&mut self, cpuid: krr_runtime::cpuid::CpuidTable) {
        *self.core.cpuid_mut() = cpuid;
        self.board.intc =
            interrupts::Interrupts::new(lapic_config(&cpuid), self.core.cpu().apic_base);
    }

    /// Plug in a virtio-blk disk backed by `image` (never modified; the guest's writes go to
    /// `overlay` when given, else stay in memory).
    pub fn attach_disk(
        &mut self,
        image: &std::path::Path,
        overlay: Option<&std::path::Path>,
        read_only: bool,
    ) -> Result<(), String> {
        use devices::virtio::{blk::VirtioBlk, VirtioPci};
        let blk = VirtioBlk::open(image, overlay, read_only).map_err(|e| e.to_string())?;
        self.board
            .pci
            .add(
                DISK_PCI_SLOT,
                Box::new(VirtioPci::new(blk)),
                Some(acpi::PCI_IRQ),
            )
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Let the PCI functions do the work their last MMIO access left (a virtio queue
    /// notification), at this instruction boundary. Their writes into RAM are logged as DMA
    /// Write events and reported to the engine (they may overwrite translated code).
    fn process_dma(&mut self) {
        let mut dma = ram_dma::RamDma::new(self.core.mem_mut());
        self.board.pci.process(&mut dma, &mut self.board.irq);
        let writes = std::mem::take(&mut dma.writes);
        self.board.intc.update(self.board.irq);
        for (phys, data) in writes {
            self.board.counters.dma_writes += 1;
            self.board.counters.dma_bytes += data.len() as u64;
            self.engine
                .notify_write(&mut self.core, phys, data.len() as u64);
            self.board.record(
                self.core.cpu(),
                EventData::DmaWrite {
                    phys,
                    data: data.into_boxed_slice(),
                },
            );
        }
    }

    /// Take time from the host clock from now on: timers fire in real time, the TSC counts
    /// host nanoseconds, and a halted CPU sleeps. Two runs then differ (a recording of such a
    /// run still replays exactly: every input is in the trace).
    pub fn use_host_time(&mut self) {
        self.board.host_clock = Some(std::time::Instant::now());
    }

    /// Feed bytes from `input` to COM1's receiver as they arrive (typed on the terminal).
    pub fn attach_console_input(&mut self, input: std::sync::mpsc::Receiver<u8>) {
        self.board.console_input = Some(input);
    }

    fn take_console_input(&mut self) {
        let Some(rx) = &self.board.console_input else {
            return;
        };
        let bytes: Vec<u8> = rx.try_iter().collect();
        if !bytes.is_empty() {
            self.board.serial.push_input(&bytes);
        }
    }

    /// Instructions to run before the device event due at `t` (device time), at most
    /// `u64::MAX` when there is none.
    fn instructions_until(&self, t: Option<u64>) -> u64 {
        match (t, self.board.host_clock) {
            (None, _) => u64::MAX,
            // Virtual time: the event is due at an exact instruction count.
            (Some(t), None) => t.saturating_sub(self.board.idle_ns),
            // Host time: run a slice (about one instruction per nanosecond) and look again.
            (Some(t), Some(_)) => {
                let now = self.board.now(self.core.cpu());
                self.core.cpu().icount + t.saturating_sub(now).clamp(1_000, 10_000_000)
            }
        }
    }

    /// Forward what the UART transmitted to the console.
    fn drain_console(&mut self) {
        let out = self.board.serial.take_output();
        if !out.is_empty() {
            let _ = self.console.write_all(&out);
            let _ = self.console.flush();
        }
    }

    /// Run until the guest ends the run or `max_instructions` retire.
    pub fn run(&mut self, max_instructions: Option<u64>) -> Result<RunEnd, MachineError> {
        self.run_inner(max_instructions, None)
    }

    /// Run as [`Machine::run`] does, logging every input and output as trace events plus a
    /// checkpoint (CPU state hash and RAM hash) each time the instruction count reaches a multiple of
    /// `checkpoint_interval`. `sink` receives the events in order, each time the engine returns
    /// to the run loop and at the end.
    pub fn run_recorded(
        &mut self,
        max_instructions: Option<u64>,
        periods: RecordPeriods,
        sink: &mut EventSink,
    ) -> Result<RunEnd, MachineError> {
        self.board.log = Some(Vec::new());
        let r = self.run_inner(
            Some(max_instructions.unwrap_or(u64::MAX)),
            Some((periods, sink)),
        );
        self.board.log = None;
        r
    }

    fn run_inner(
        &mut self,
        max_instructions: Option<u64>,
        mut recording: Option<(RecordPeriods, &mut EventSink)>,
    ) -> Result<RunEnd, MachineError> {
        let next_multiple = |every: u64, now: u64| match every {
            0 => u64::MAX,
            e => (now / e + 1) * e,
        };
        let icount = self.core.cpu().icount;
        let (mut next_checkpoint, mut next_snapshot) = match &recording {
            Some((p, _)) => (
                next_multiple(p.checkpoint.max(1), icount),
                next_multiple(p.snapshot, icount),
            ),
            None => (u64::MAX, u64::MAX),
        };
        // The engine last stopped at an instruction boundary by its budget (a bus request
        // may leave a REP string instruction between iterations).
        let mut at_boundary = true;
        loop {
            if let Some((periods, sink)) = &mut recording {
                let every = &mut periods.checkpoint;
                if self.core.cpu().icount >= next_checkpoint {
                    let regs_hash = crate::trace::state::regs_hash(self.core.cpu());
                    let ram_hash = self.core.ram_hash();
                    self.board.record(
                        self.core.cpu(),
                        EventData::Checkpoint {
                            regs_hash,
                            ram_hash,
                        },
                    );
                    next_checkpoint = (self.core.cpu().icount / *every + 1) * *every;
                }
                if let Some(log) = &mut self.board.log {
                    if !log.is_empty() {
                        sink(RecordItem::Events(log, self.core.cpu()))
                            .map_err(MachineError::Record)?;
                        log.clear();
                    }
                }
            }
            self.take_console_input();
            let now = self.board.now(self.core.cpu());
            self.board.advance_all(now);
            if self.board.pci.has_pending_work() {
                self.process_dma();
            }
            self.drain_console();
            if let Some(r) = self.board.requests.first().copied() {
                self.board.requests.clear();
                self.flush_log(&mut recording)?;
                return Ok(match r {
                    MachineRequest::PowerOff => RunEnd::PowerOff,
                    MachineRequest::Reset => RunEnd::Reset,
                    MachineRequest::Exit(code) => RunEnd::DebugExit(code),
                });
            }
            self.board.intc.sync_apic_base(self.core.cpu().apic_base);
            if Engine::nmi_deliverable(self.core.cpu()) && self.board.intc.take_nmi() {
                self.board.counters.nmis += 1;
                log::debug!(
                    "NMI delivered at instruction {} (RIP {:#x})",
                    self.core.cpu().icount,
                    self.core.cpu().rip
                );
                let rcx = self.core.cpu().gpr[krr_runtime::gpr::RCX];
                self.board.record(self.core.cpu(), EventData::Nmi { rcx });
                if let Err(e) = self.engine.inject_nmi(&mut self.core) {
                    return Err(self.fatal(e));
                }
            }
            let vector = match Engine::interrupts_enabled(self.core.cpu()) {
                true if self.board.intc.pending() => self.board.intc.acknowledge(),
                _ => None,
            };
            if let Some(vector) = vector {
                self.board.counters.interrupts += 1;
                log::debug!(
                    "interrupt {vector:#x} delivered at instruction {} (RIP {:#x})",
                    self.core.cpu().icount,
                    self.core.cpu().rip
                );
                let rcx = self.core.cpu().gpr[krr_runtime::gpr::RCX];
                self.board
                    .record(self.core.cpu(), EventData::Interrupt { vector, rcx });
                if let Err(e) = self.engine.inject_interrupt(&mut self.core, vector) {
                    return Err(self.fatal(e));
                }
            }
            // Run until the next device event (in virtual time = instructions).
            let limit = max_instructions.unwrap_or(u64::MAX);
            if self.core.cpu().icount >= limit {
                self.flush_log(&mut recording)?;
                return Ok(RunEnd::InstructionLimit);
            }
            if self.core.cpu().icount >= next_snapshot && at_boundary {
                self.flush_log(&mut recording)?;
                if let Some((periods, sink)) = &mut recording {
                    sink(RecordItem::Snapshot(&mut self.core)).map_err(MachineError::Record)?;
                    next_snapshot = next_multiple(periods.snapshot, self.core.cpu().icount);
                }
            }
            let next = self.instructions_until(self.board.next_event());
            self.core.set_icount_limit(
                next.max(self.core.cpu().icount + 1)
                    .min(limit)
                    .min(next_checkpoint)
                    .min(next_snapshot),
            );
            self.board.event_moved = false;
            let exit = self.engine.run_with_bus(&mut self.core, &mut self.board);
            at_boundary = exit == Exit::Budget;
            match exit {
                Exit::Budget | Exit::BusRequest => {}
                Exit::Halt => {
                    // With IF = 0 only an NMI wakes the CPU: one pending now is taken at the
                    // top of the loop. One a device would raise later (an IO-APIC entry the
                    // guest programmed for NMI delivery) is not waited for: the run ends.
                    if self.core.cpu().rflags & krr_runtime::rflags::IF == 0
                        && !self.board.intc.nmi_pending()
                    {
                        self.drain_console();
                        self.flush_log(&mut recording)?;
                        return Ok(RunEnd::HaltedForever);
                    }
                    // The CPU stays halted until an interrupt is pending (or the guest's
                    // machine asks to stop): move virtual time from device event to device
                    // event meanwhile. It never resumes without one, as on hardware.
                    loop {
                        self.take_console_input();
                        let now = self.board.now(self.core.cpu());
                        self.board.advance_all(now);
                        self.drain_console();
                        if !self.board.requests.is_empty()
                            || self.board.intc.pending()
                            || self.board.intc.nmi_pending()
                        {
                            break;
                        }
                        match self.board.next_event() {
                            Some(t) if self.board.host_clock.is_some() => {
                                // Sleep until the event (a little at a time: typed input
                                // may arrive meanwhile).
                                let ns = t.saturating_sub(now).min(5_000_000);
                                std::thread::sleep(std::time::Duration::from_nanos(ns));
                            }
                            Some(t) => self.board.idle_ns += t.saturating_sub(now).max(1),
                            None => {
                                self.flush_log(&mut recording)?;
                                return Ok(RunEnd::HaltedForever);
                            }
                        }
                    }
                }
                other => {
                    self.flush_log(&mut recording)?;
                    return Err(self.fatal(other));
                }
            }
        }
    }

    /// Hand the last logged events to the recorder's sink.
    fn flush_log(
        &mut self,
        recording: &mut Option<(RecordPeriods, &mut EventSink)>,
    ) -> Result<(), MachineError> {
        if let (Some((_, sink)), Some(log)) = (recording, &mut self.board.log) {
            if !log.is_empty() {
                sink(RecordItem::Events(log, self.core.cpu())).map_err(MachineError::Record)?;
                log.clear();
            }
        }
        Ok(())
    }

    fn fatal(&mut self, exit: Exit) -> MachineError {
        self.drain_console();
        let (rip, icount) = (self.core.cpu().rip, self.core.cpu().icount);
        match exit {
            Exit::TripleFault { first, second } => MachineError::TripleFault {
                rip,
                icount,
                first,
                second,
            },
            Exit::Unbacked { phys } => MachineError::Unbacked { phys, rip, icount },
            other => unreachable!("the machine delivers exceptions itself, not {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine::new(
            MachineConfig {
                mem_bytes: 16 << 20,
                engine: EngineConfig::default(),
            },
            Box::new(std::io::sink()),
        )
        .expect("machine")
    }

    /// A one-shot timer armed while the engine runs with a later (or no) budget must make the
    /// engine return, so the run loop shortens the budget to the timer's expiry; otherwise
    /// the PIT's one-clock pulse passes unsampled and the kernel's timer interrupt is lost.
    #[test]
    fn arming_a_timer_during_a_run_ends_the_run() {
        let mut m = machine();
        m.core.arch_mut().icount = 1_000;
        m.core.set_icount_limit(u64::MAX);
        assert!(!m.board.wants_exit(m.core.cpu()));
        // Linux's "pit" clockevent: mode 4, then a 16-bit count (about 1 ms).
        m.board.port_out(m.core.cpu(), 0x43, 1, 0x38);
        m.board.port_out(m.core.cpu(), 0x40, 1, 0xa9);
        m.board.port_out(m.core.cpu(), 0x40, 1, 0x04);
        assert!(m.board.wants_exit(m.core.cpu()));
        // The run loop's new budget stops at the expiry; a later budget is left alone.
        m.board.event_moved = false;
        let next = m.board.next_event().expect("armed");
        m.core.set_icount_limit(next);
        m.board.port_in(m.core.cpu(), 0x61, 1);
        assert!(!m.board.wants_exit(m.core.cpu()));
    }
}
