//! The replayer's bus: every port, MMIO, MSR, RDTSC and RDRAND input comes from the trace's
//! next synchronous event, checked against the instruction asking for it.

use super::Divergence;
use crate::trace::{EventCounts, EventData, EventKind, EventStream, TraceError};
use krr_runtime::{Bus, CpuState};
use std::io::Write;

pub(super) struct ReplayBus {
    pub(super) stream: EventStream,
    pub(super) console: Option<Box<dyn Write>>,
    pub(super) counts: EventCounts,
    pub(super) divergence: Option<Divergence>,
    pub(super) error: Option<TraceError>,
}

impl ReplayBus {
    /// Consume the next event, which must be a `kind` event at the instruction `cpu` is
    /// executing; `check` takes the event's data apart.
    fn take<T>(
        &mut self,
        cpu: &CpuState,
        kind: EventKind,
        asked: impl Fn() -> String,
        check: impl FnOnce(&EventData) -> Option<T>,
    ) -> Option<T> {
        if self.divergence.is_some() || self.error.is_some() {
            return None;
        }
        let index = self.stream.position;
        let diverge = |what: String| Divergence {
            event_index: index,
            icount: cpu.icount,
            rip: cpu.rip,
            what,
            regs: Some((cpu.gpr, cpu.rflags)),
            insn: String::new(),
            function: String::new(),
        };
        let e = match self.stream.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => {
                self.divergence = Some(diverge(format!(
                    "the guest asked for {} ({}), but the trace has no more events",
                    kind.name(),
                    asked()
                )));
                return None;
            }
            Err(err) => {
                self.error = Some(err);
                return None;
            }
        };
        if e.kind() != kind || e.icount != cpu.icount || e.rip != cpu.rip {
            self.divergence = Some(diverge(format!(
                "the guest asked for {} ({}) at instruction {} RIP {:#x}; the trace has {e}",
                kind.name(),
                asked(),
                cpu.icount,
                cpu.rip
            )));
            return None;
        }
        match check(&e.data) {
            Some(v) => {
                self.counts.add(kind);
                Some(v)
            }
            None => {
                self.divergence = Some(diverge(format!(
                    "the guest asked for {} ({}); the trace has {e}",
                    kind.name(),
                    asked()
                )));
                None
            }
        }
    }
}

fn all_ones(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

impl Bus for ReplayBus {
    fn port_in(&mut self, cpu: &CpuState, port: u16, size: u8) -> u32 {
        self.take(
            cpu,
            EventKind::PortIn,
            || format!("port {port:#x}, {size} bytes"),
            |d| match *d {
                EventData::PortIn {
                    port: p,
                    size: s,
                    value,
                } if p == port && s == size => Some(value),
                _ => None,
            },
        )
        .unwrap_or(all_ones(size) as u32)
    }

    fn port_out(&mut self, cpu: &CpuState, port: u16, size: u8, value: u32) {
        let console = self.take(
            cpu,
            EventKind::PortOut,
            || format!("port {port:#x}, {size} bytes, value {value:#x}"),
            |d| match *d {
                EventData::PortOut {
                    port: p,
                    size: s,
                    value: v,
                    console,
                } if p == port && s == size && v == value => Some(console),
                _ => None,
            },
        );
        if console == Some(true) {
            if let Some(out) = &mut self.console {
                let _ = out.write_all(&[value as u8]);
                if value as u8 == b'\n' {
                    let _ = out.flush();
                }
            }
        }
    }

    fn mmio_read(&mut self, cpu: &CpuState, phys: u64, size: u8) -> u64 {
        self.take(
            cpu,
            EventKind::MmioRead,
            || format!("address {phys:#x}, {size} bytes"),
            |d| match *d {
                EventData::MmioRead {
                    phys: p,
                    size: s,
                    value,
                } if p == phys && s == size => Some(value),
                _ => None,
            },
        )
        .unwrap_or(all_ones(size))
    }

    fn mmio_write(&mut self, cpu: &CpuState, phys: u64, size: u8, value: u64) {
        self.take(
            cpu,
            EventKind::MmioWrite,
            || format!("address {phys:#x}, {size} bytes, value {value:#x}"),
            |d| match *d {
                EventData::MmioWrite {
                    phys: p,
                    size: s,
                    value: v,
                } if p == phys && s == size && v == value => Some(()),
                _ => None,
            },
        );
    }

    fn rdtsc(&mut self, cpu: &CpuState) -> u64 {
        self.take(
            cpu,
            EventKind::Rdtsc,
            || "RDTSC".to_string(),
            |d| match *d {
                EventData::Rdtsc { value } => Some(value),
                _ => None,
            },
        )
        .unwrap_or(0)
    }

    fn rdrand(&mut self, cpu: &CpuState, size: u8, seed: bool) -> Option<u64> {
        self.take(
            cpu,
            EventKind::Rdrand,
            || format!("{}, {size} bytes", if seed { "RDSEED" } else { "RDRAND" }),
            |d| match *d {
                EventData::Rdrand {
                    seed: sd,
                    size: s,
                    value,
                } if sd == seed && s == size => Some(value),
                _ => None,
            },
        )
        .flatten()
    }

    fn msr_read(&mut self, cpu: &CpuState, index: u32) -> Option<u64> {
        self.take(
            cpu,
            EventKind::MsrRead,
            || format!("MSR {index:#x}"),
            |d| match *d {
                EventData::MsrRead { index: i, value } if i == index => Some(value),
                _ => None,
            },
        )
        .flatten()
    }

    fn msr_write(&mut self, cpu: &CpuState, index: u32, value: u64) -> bool {
        self.take(
            cpu,
            EventKind::MsrWrite,
            || format!("MSR {index:#x}, value {value:#x}"),
            |d| match *d {
                EventData::MsrWrite {
                    index: i,
                    value: v,
                    accepted,
                } if i == index && v == value => Some(accepted),
                _ => None,
            },
        )
        .unwrap_or(false)
    }

    fn cr8_read(&mut self, cpu: &CpuState) -> Option<u64> {
        self.msr_read(cpu, krr_runtime::arch::msr::CR8_EVENT)
    }

    fn cr8_write(&mut self, cpu: &CpuState, value: u64) {
        self.msr_write(cpu, krr_runtime::arch::msr::CR8_EVENT, value);
    }

    fn wants_exit(&self, _cpu: &CpuState) -> bool {
        self.divergence.is_some() || self.error.is_some()
    }
}
