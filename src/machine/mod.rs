//! The machine: a small deterministic PC around the engine. Guest RAM, the CPU, the devices on
//! the port bus, virtual time and the run loop that injects interrupts at instruction
//! boundaries.
//!
//! Virtual time is the instruction count: one retired instruction is one nanosecond (a 1 GHz
//! guest clock; the TSC runs at 1 GHz too). While the CPU halts, time jumps to the next device
//! event and the skipped span is added to an idle offset, so `now = icount + idle`. Two runs of
//! the same guest therefore see exactly the same times.

pub mod devices;
pub mod linux;

use devices::{DeviceCtx, IrqLines, MachineRequest, PortDevice};
use krr_jit::{Engine, EngineConfig, Exit};
use krr_runtime::{Bus, CpuState, GuestMemory};
use std::collections::HashSet;
use std::io::Write;

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
            Box::new(pci::PciHost::new()),
            vec![(pci::PCI_BASE, pci::NUM_PORTS, pci::PCI_BASE)],
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
    devices: Vec<Box<dyn PortDevice>>,
    ports: PortMap,
    pic: devices::pic::PicPair,
    irq: IrqLines,
    requests: Vec<MachineRequest>,
    /// Time spent halted, added to the instruction count to give virtual time.
    idle_ns: u64,
    /// Ports nobody answers, logged once each.
    unknown_ports: HashSet<u16>,
    unknown_mmio: HashSet<u64>,
    pub counters: BusCounters,
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
}

impl Board {
    fn now(&self, cpu: &CpuState) -> u64 {
        cpu.icount + self.idle_ns
    }

    /// Run `f` on device `dev` (`None`: COM1) with a context at the current virtual time.
    fn with_device<R>(
        &mut self,
        cpu: &CpuState,
        dev: Option<usize>,
        f: impl FnOnce(&mut dyn PortDevice, &mut DeviceCtx) -> R,
    ) -> R {
        let now = self.now(cpu);
        let mut ctx = DeviceCtx {
            now_ns: now,
            irq: &mut self.irq,
            requests: &mut self.requests,
        };
        let d: &mut dyn PortDevice = match dev {
            Some(i) => self.devices[i].as_mut(),
            None => &mut self.serial,
        };
        let r = f(d, &mut ctx);
        self.pic.update(self.irq);
        r
    }

    /// Which device answers `port`: `Some(None)` is COM1.
    fn route(&self, port: u16) -> Option<(Option<usize>, u16)> {
        if (SERIAL_BASE..SERIAL_BASE + 8).contains(&port) {
            return Some((None, port - SERIAL_BASE));
        }
        self.ports.find(port).map(|(d, off)| (Some(d), off))
    }

    /// Bring every device up to the current virtual time.
    fn advance_all(&mut self, now: u64) {
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
        self.pic.update(self.irq);
    }

    fn next_event(&self) -> Option<u64> {
        self.devices
            .iter()
            .filter_map(|d| d.next_event_ns())
            .chain(self.serial.next_event_ns())
            .min()
    }
}

impl Bus for Board {
    fn port_in(&mut self, cpu: &CpuState, port: u16, size: u8) -> u32 {
        self.counters.port_in += 1;
        if devices::pic::PicPair::PORTS.contains(&port) {
            return self.pic.read(port) as u32;
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

    fn port_out(&mut self, cpu: &CpuState, port: u16, size: u8, value: u32) {
        self.counters.port_out += 1;
        if devices::pic::PicPair::PORTS.contains(&port) {
            self.pic.write(port, value as u8);
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

    fn mmio_read(&mut self, _cpu: &CpuState, phys: u64, size: u8) -> u64 {
        self.counters.mmio_read += 1;
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

    fn mmio_write(&mut self, _cpu: &CpuState, phys: u64, _size: u8, value: u64) {
        self.counters.mmio_write += 1;
        if self.unknown_mmio.insert(phys & !0xfff) {
            log::info!(
                "write of {value:#x} to unmodelled MMIO page {:#x} (ignored; logged once)",
                phys & !0xfff
            );
        }
    }

    fn rdtsc(&mut self, cpu: &CpuState) -> u64 {
        self.counters.rdtsc += 1;
        self.now(cpu)
    }

    fn rdrand(&mut self, _cpu: &CpuState, _size: u8, _seed: bool) -> Option<u64> {
        // The CPU model does not advertise RDRAND/RDSEED; report failure (CF=0) if used.
        None
    }

    fn wants_exit(&self, cpu: &CpuState) -> bool {
        // The engine asks at every block boundary: test the CPU's flag before the PIC's
        // priority logic.
        !self.requests.is_empty() || (Engine::interrupts_enabled(cpu) && self.pic.pending())
    }
}

/// Options for building the machine.
pub struct MachineConfig {
    pub mem_bytes: u64,
    pub engine: EngineConfig,
}

pub struct Machine {
    pub mem: GuestMemory,
    pub cpu: Box<CpuState>,
    pub engine: Engine,
    pub board: Board,
    console: Box<dyn Write>,
}

impl Machine {
    pub fn new(config: MachineConfig, console: Box<dyn Write>) -> Result<Machine, MachineError> {
        let mut mem = GuestMemory::new(config.mem_bytes)?;
        let mut cpu = CpuState::new_flat64(&mut mem);
        cpu.icount_limit = u64::MAX;
        let engine = Engine::new(EngineConfig {
            deliver_exceptions: true,
            ..config.engine
        })?;
        let (devices, ports) = standard_pc(config.mem_bytes);
        let board = Board {
            serial: devices::serial::Serial16550::new(SERIAL_IRQ),
            devices,
            ports,
            pic: devices::pic::PicPair::new(),
            irq: IrqLines::default(),
            requests: Vec::new(),
            idle_ns: 0,
            unknown_ports: HashSet::new(),
            unknown_mmio: HashSet::new(),
            counters: BusCounters::default(),
        };
        Ok(Machine {
            mem,
            cpu,
            engine,
            board,
            console,
        })
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
        loop {
            let now = self.board.now(&self.cpu);
            self.board.advance_all(now);
            self.drain_console();
            if let Some(r) = self.board.requests.first().copied() {
                self.board.requests.clear();
                return Ok(match r {
                    MachineRequest::PowerOff => RunEnd::PowerOff,
                    MachineRequest::Reset => RunEnd::Reset,
                    MachineRequest::Exit(code) => RunEnd::DebugExit(code),
                });
            }
            if self.board.pic.pending() && Engine::interrupts_enabled(&self.cpu) {
                let vector = self.board.pic.acknowledge();
                self.board.counters.interrupts += 1;
                log::debug!(
                    "interrupt {vector:#x} delivered at instruction {} (RIP {:#x})",
                    self.cpu.icount,
                    self.cpu.rip
                );
                if let Err(e) = self.engine.inject_interrupt(&mut self.cpu, vector) {
                    return Err(self.fatal(e));
                }
            }
            // Run until the next device event (in virtual time = instructions).
            let limit = max_instructions.unwrap_or(u64::MAX);
            if self.cpu.icount >= limit {
                return Ok(RunEnd::InstructionLimit);
            }
            let next = self
                .board
                .next_event()
                .map(|t| t.saturating_sub(self.board.idle_ns));
            self.cpu.icount_limit = next.unwrap_or(u64::MAX).max(self.cpu.icount + 1).min(limit);
            let exit = self.engine.run_with_bus(&mut self.cpu, &mut self.board);
            match exit {
                Exit::Budget | Exit::BusRequest => {}
                Exit::Halt => {
                    if self.cpu.rflags & krr_runtime::rflags::IF == 0 {
                        self.drain_console();
                        return Ok(RunEnd::HaltedForever);
                    }
                    // Idle until the next device event.
                    let now = self.board.now(&self.cpu);
                    self.board.pic.update(self.board.irq);
                    if !self.board.pic.pending() {
                        match self.board.next_event() {
                            Some(t) if t > now => self.board.idle_ns += t - now,
                            Some(_) => {}
                            None => {
                                self.drain_console();
                                return Ok(RunEnd::HaltedForever);
                            }
                        }
                    }
                }
                other => return Err(self.fatal(other)),
            }
        }
    }

    fn fatal(&mut self, exit: Exit) -> MachineError {
        self.drain_console();
        let (rip, icount) = (self.cpu.rip, self.cpu.icount);
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
