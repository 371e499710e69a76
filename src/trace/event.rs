//! Trace events: every input the CPU took from outside itself, at its exact position.
//!
//! A position is the instruction count before the instruction (`icount`) and its RIP. For an
//! interrupt the position is the boundary it was taken at, plus RCX (as in KRR: that tells an
//! interrupted REP string instruction's iterations apart). Synchronous events (port and MMIO
//! reads and writes, RDTSC, RDRAND, device MSR reads and writes) are consumed when the guest
//! asks; asynchronous ones
//! (interrupts, checkpoints) are where replay stops the engine with an instruction budget.

/// What happened. The discriminants are the on-disk tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    Interrupt = 1,
    PortIn = 2,
    PortOut = 3,
    MmioRead = 4,
    MmioWrite = 5,
    Rdtsc = 6,
    Rdrand = 7,
    Checkpoint = 8,
    DmaWrite = 9,
    MsrRead = 10,
    MsrWrite = 11,
    Nmi = 12,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::Interrupt,
        EventKind::PortIn,
        EventKind::PortOut,
        EventKind::MmioRead,
        EventKind::MmioWrite,
        EventKind::Rdtsc,
        EventKind::Rdrand,
        EventKind::Checkpoint,
        EventKind::DmaWrite,
        EventKind::MsrRead,
        EventKind::MsrWrite,
        EventKind::Nmi,
    ];

    pub fn from_tag(tag: u8) -> Option<EventKind> {
        EventKind::ALL.get((tag as usize).wrapping_sub(1)).copied()
    }

    /// The name used in summaries (`Name: count`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Interrupt => "Interrupt",
            EventKind::PortIn => "IO Input",
            EventKind::PortOut => "IO Output",
            EventKind::MmioRead => "MMIO Read",
            EventKind::MmioWrite => "MMIO Write",
            EventKind::Rdtsc => "RDTSC",
            EventKind::Rdrand => "RDRAND/RDSEED",
            EventKind::Checkpoint => "Checkpoint",
            EventKind::DmaWrite => "DMA Write",
            EventKind::MsrRead => "MSR Read",
            EventKind::MsrWrite => "MSR Write",
            EventKind::Nmi => "NMI",
        }
    }

    /// Asynchronous events are placed by instruction count; the rest happen when the guest
    /// executes the instruction that asks for them.
    pub fn is_async(self) -> bool {
        matches!(
            self,
            EventKind::Interrupt | EventKind::Checkpoint | EventKind::DmaWrite | EventKind::Nmi
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventData {
    /// An external interrupt delivered through the IDT.
    Interrupt {
        vector: u8,
        rcx: u64,
    },
    PortIn {
        port: u16,
        size: u8,
        value: u32,
    },
    /// `console` marks a byte the serial port transmitted (replay prints it).
    PortOut {
        port: u16,
        size: u8,
        value: u32,
        console: bool,
    },
    MmioRead {
        phys: u64,
        size: u8,
        value: u64,
    },
    MmioWrite {
        phys: u64,
        size: u8,
        value: u64,
    },
    Rdtsc {
        value: u64,
    },
    /// `value: None` is a failed RDRAND/RDSEED (CF=0).
    Rdrand {
        seed: bool,
        size: u8,
        value: Option<u64>,
    },
    /// RDMSR of an MSR a device owns (the local APIC's); `value: None` is a refused read
    /// (#GP).
    MsrRead {
        index: u32,
        value: Option<u64>,
    },
    /// WRMSR of an MSR a device owns; `accepted: false` is a refused write (#GP).
    MsrWrite {
        index: u32,
        value: u64,
        accepted: bool,
    },
    /// The recorder's state check: a hash of the architectural CPU state (`state::regs_hash`)
    /// and the RAM digest (`Core::ram_hash`).
    Checkpoint {
        regs_hash: u64,
        ram_hash: u64,
    },
    /// A device wrote guest RAM (DMA) at this instruction boundary.
    DmaWrite {
        phys: u64,
        data: Box<[u8]>,
    },
    /// A non-maskable interrupt delivered through IDT vector 2 (RCX as for interrupts).
    Nmi {
        rcx: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub icount: u64,
    pub rip: u64,
    pub data: EventData,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self.data {
            EventData::Interrupt { .. } => EventKind::Interrupt,
            EventData::PortIn { .. } => EventKind::PortIn,
            EventData::PortOut { .. } => EventKind::PortOut,
            EventData::MmioRead { .. } => EventKind::MmioRead,
            EventData::MmioWrite { .. } => EventKind::MmioWrite,
            EventData::Rdtsc { .. } => EventKind::Rdtsc,
            EventData::Rdrand { .. } => EventKind::Rdrand,
            EventData::Checkpoint { .. } => EventKind::Checkpoint,
            EventData::DmaWrite { .. } => EventKind::DmaWrite,
            EventData::MsrRead { .. } => EventKind::MsrRead,
            EventData::MsrWrite { .. } => EventKind::MsrWrite,
            EventData::Nmi { .. } => EventKind::Nmi,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at instruction {} RIP {:#x}",
            self.kind().name(),
            self.icount,
            self.rip
        )?;
        match self.data {
            EventData::Interrupt { vector, rcx } => {
                write!(f, " (vector {vector:#x}, RCX {rcx:#x})")
            }
            EventData::Nmi { rcx } => write!(f, " (RCX {rcx:#x})"),
            EventData::PortIn { port, size, value } => {
                write!(f, " (port {port:#x}, {size} bytes, value {value:#x})")
            }
            EventData::PortOut {
                port, size, value, ..
            } => write!(f, " (port {port:#x}, {size} bytes, value {value:#x})"),
            EventData::MmioRead { phys, size, value }
            | EventData::MmioWrite { phys, size, value } => {
                write!(f, " (address {phys:#x}, {size} bytes, value {value:#x})")
            }
            EventData::Rdtsc { value } => write!(f, " (value {value:#x})"),
            EventData::Rdrand { seed, size, value } => write!(
                f,
                " ({}, {size} bytes, {})",
                if seed { "RDSEED" } else { "RDRAND" },
                match value {
                    Some(v) => format!("value {v:#x}"),
                    None => "failed".to_string(),
                }
            ),
            EventData::Checkpoint {
                regs_hash,
                ram_hash,
            } => write!(
                f,
                " (CPU state hash {regs_hash:016x}, RAM hash {ram_hash:016x})"
            ),
            EventData::DmaWrite { phys, ref data } => {
                write!(f, " (address {phys:#x}, {} bytes)", data.len())
            }
            EventData::MsrRead { index, value } => match value {
                Some(v) => write!(f, " (MSR {index:#x}, value {v:#x})"),
                None => write!(f, " (MSR {index:#x}, #GP)"),
            },
            EventData::MsrWrite {
                index,
                value,
                accepted,
            } => write!(
                f,
                " (MSR {index:#x}, value {value:#x}{})",
                if accepted { "" } else { ", #GP" }
            ),
        }
    }
}

/// Counts per event kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCounts(pub [u64; EventKind::ALL.len()]);

impl EventCounts {
    pub fn add(&mut self, kind: EventKind) {
        self.0[kind as usize - 1] += 1;
    }
    pub fn get(&self, kind: EventKind) -> u64 {
        self.0[kind as usize - 1]
    }
    /// The sum (saturating: a damaged trace's counts may add up past `u64::MAX`).
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, &c| a.saturating_add(c))
    }
    /// `Name: count` lines in the on-disk kind order, then the total.
    pub fn lines(&self) -> Vec<String> {
        let mut v: Vec<String> = EventKind::ALL
            .iter()
            .map(|&k| format!("{}: {}", k.name(), self.get(k)))
            .collect();
        v.push(format!("Total Events: {}", self.total()));
        v
    }
}

/// Encoding inside an event chunk: tag, instruction-count delta (LEB128) from the previous
/// event, RIP (8 bytes), then the kind's fields (little-endian, fixed width).
pub fn encode(out: &mut Vec<u8>, prev_icount: u64, e: &Event) {
    let mut tag = e.kind() as u8;
    if let EventData::PortOut { console: true, .. } = e.data {
        tag |= CONSOLE_FLAG;
    }
    out.push(tag);
    put_varint(out, e.icount - prev_icount);
    out.extend_from_slice(&e.rip.to_le_bytes());
    match e.data {
        EventData::Interrupt { vector, rcx } => {
            out.push(vector);
            out.extend_from_slice(&rcx.to_le_bytes());
        }
        EventData::Nmi { rcx } => out.extend_from_slice(&rcx.to_le_bytes()),
        EventData::PortIn { port, size, value }
        | EventData::PortOut {
            port, size, value, ..
        } => {
            out.extend_from_slice(&port.to_le_bytes());
            out.push(size);
            out.extend_from_slice(&value.to_le_bytes());
        }
        EventData::MmioRead { phys, size, value } | EventData::MmioWrite { phys, size, value } => {
            out.extend_from_slice(&phys.to_le_bytes());
            out.push(size);
            out.extend_from_slice(&value.to_le_bytes());
        }
        EventData::Rdtsc { value } => out.extend_from_slice(&value.to_le_bytes()),
        EventData::Rdrand { seed, size, value } => {
            out.push(seed as u8 | (value.is_some() as u8) << 1);
            out.push(size);
            out.extend_from_slice(&value.unwrap_or(0).to_le_bytes());
        }
        EventData::Checkpoint {
            regs_hash,
            ram_hash,
        } => {
            out.extend_from_slice(&regs_hash.to_le_bytes());
            out.extend_from_slice(&ram_hash.to_le_bytes());
        }
        EventData::DmaWrite { phys, ref data } => {
            out.extend_from_slice(&phys.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        EventData::MsrRead { index, value } => {
            out.extend_from_slice(&index.to_le_bytes());
            out.push(value.is_some() as u8);
            out.extend_from_slice(&value.unwrap_or(0).to_le_bytes());
        }
        EventData::MsrWrite {
            index,
            value,
            accepted,
        } => {
            out.extend_from_slice(&index.to_le_bytes());
            out.push(accepted as u8);
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

const CONSOLE_FLAG: u8 = 0x80;

/// The shortest encoded event (an IO event with a one-byte delta): tag, delta, RIP, port,
/// size, value.
pub const MIN_EVENT_LEN: usize = 1 + 1 + 8 + 2 + 1 + 4;

/// Decode one event from `buf` at `*pos`; `Err` says what is wrong, the caller adds where.
pub fn decode(buf: &[u8], pos: &mut usize, prev_icount: u64) -> Result<Event, String> {
    let mut r = crate::trace::bytes::Reader::new(&buf[*pos..]);
    let tag = r.u8()?;
    let kind = EventKind::from_tag(tag & !CONSOLE_FLAG)
        .ok_or_else(|| format!("unknown event tag {tag:#x}"))?;
    if tag & CONSOLE_FLAG != 0 && kind != EventKind::PortOut {
        return Err(format!("unknown event tag {tag:#x}"));
    }
    let delta = r.varint()?;
    let icount = prev_icount
        .checked_add(delta)
        .ok_or("instruction count overflows")?;
    let rip = r.u64()?;
    let data = match kind {
        EventKind::Interrupt => EventData::Interrupt {
            vector: r.u8()?,
            rcx: r.u64()?,
        },
        EventKind::Nmi => EventData::Nmi { rcx: r.u64()? },
        EventKind::PortIn | EventKind::PortOut => {
            let port = r.u16()?;
            let size = r.u8()?;
            let value = r.u32()?;
            if kind == EventKind::PortIn {
                EventData::PortIn { port, size, value }
            } else {
                EventData::PortOut {
                    port,
                    size,
                    value,
                    console: tag & CONSOLE_FLAG != 0,
                }
            }
        }
        EventKind::MmioRead | EventKind::MmioWrite => {
            let phys = r.u64()?;
            let size = r.u8()?;
            let value = r.u64()?;
            if kind == EventKind::MmioRead {
                EventData::MmioRead { phys, size, value }
            } else {
                EventData::MmioWrite { phys, size, value }
            }
        }
        EventKind::Rdtsc => EventData::Rdtsc { value: r.u64()? },
        EventKind::Rdrand => {
            let flags = r.u8()?;
            let size = r.u8()?;
            let v = r.u64()?;
            EventData::Rdrand {
                seed: flags & 1 != 0,
                size,
                value: (flags & 2 != 0).then_some(v),
            }
        }
        EventKind::Checkpoint => EventData::Checkpoint {
            regs_hash: r.u64()?,
            ram_hash: r.u64()?,
        },
        EventKind::DmaWrite => {
            let phys = r.u64()?;
            let len = r.u32()? as usize;
            EventData::DmaWrite {
                phys,
                data: r.bytes(len)?.into(),
            }
        }
        EventKind::MsrRead | EventKind::MsrWrite => {
            let index = r.u32()?;
            let flag = match r.u8()? {
                f @ (0 | 1) => f == 1,
                f => return Err(format!("MSR event flag {f:#x} (0 or 1)")),
            };
            let value = r.u64()?;
            if kind == EventKind::MsrRead {
                EventData::MsrRead {
                    index,
                    value: flag.then_some(value),
                }
            } else {
                EventData::MsrWrite {
                    index,
                    value,
                    accepted: flag,
                }
            }
        }
    };
    *pos += r.consumed();
    Ok(Event { icount, rip, data })
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Event> {
        let datas = [
            EventData::Interrupt {
                vector: 0x20,
                rcx: 7,
            },
            EventData::PortIn {
                port: 0x3fd,
                size: 1,
                value: 0x60,
            },
            EventData::PortOut {
                port: 0x3f8,
                size: 1,
                value: b'A' as u32,
                console: true,
            },
            EventData::PortOut {
                port: 0x20,
                size: 1,
                value: 0x20,
                console: false,
            },
            EventData::MmioRead {
                phys: 0xfee0_0030,
                size: 4,
                value: 0x50014,
            },
            EventData::MmioWrite {
                phys: 0xfec0_0000,
                size: 8,
                value: u64::MAX,
            },
            EventData::Rdtsc { value: 1 << 40 },
            EventData::Rdrand {
                seed: true,
                size: 8,
                value: Some(42),
            },
            EventData::Rdrand {
                seed: false,
                size: 2,
                value: None,
            },
            EventData::Checkpoint {
                regs_hash: 0x1234_5678_9abc_def0,
                ram_hash: 0x0fed_cba9_8765_4321,
            },
            EventData::DmaWrite {
                phys: 0x10_0000,
                data: b"sector data".to_vec().into(),
            },
            EventData::MsrRead {
                index: 0x6e0,
                value: Some(123_456_789),
            },
            EventData::MsrRead {
                index: 0x830,
                value: None,
            },
            EventData::MsrWrite {
                index: 0x6e0,
                value: 987_654_321,
                accepted: true,
            },
            EventData::MsrWrite {
                index: 0x80b,
                value: 1,
                accepted: false,
            },
            EventData::Nmi { rcx: 3 },
        ];
        datas
            .iter()
            .enumerate()
            .map(|(i, data)| Event {
                icount: (i as u64) * 1000 + (i as u64).pow(5),
                rip: 0xffff_ffff_8100_0000 + i as u64,
                data: data.clone(),
            })
            .collect()
    }

    #[test]
    fn every_kind_round_trips() {
        let events = samples();
        let mut buf = Vec::new();
        let mut prev = 0;
        for e in &events {
            encode(&mut buf, prev, e);
            prev = e.icount;
        }
        let mut pos = 0;
        let mut prev = 0;
        for e in &events {
            let d = decode(&buf, &mut pos, prev).unwrap();
            assert_eq!(&d, e);
            prev = d.icount;
        }
        assert_eq!(pos, buf.len());
    }

    #[test]
    fn truncated_and_unknown_events_are_errors() {
        let events = samples();
        let mut buf = Vec::new();
        encode(&mut buf, 0, &events[1]);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut], &mut 0, 0).is_err(), "cut at {cut}");
        }
        buf[0] = 0x7f;
        let err = decode(&buf, &mut 0, 0).unwrap_err();
        assert!(err.contains("unknown event tag"), "{err}");
    }

    #[test]
    fn an_msr_event_flag_other_than_0_or_1_is_an_error() {
        let e = Event {
            icount: 5,
            rip: 0x1000,
            data: EventData::MsrWrite {
                index: 0x6e0,
                value: 9,
                accepted: true,
            },
        };
        let mut buf = Vec::new();
        encode(&mut buf, 0, &e);
        // tag, one-byte delta, RIP, index, then the flag.
        buf[1 + 1 + 8 + 4] = 2;
        let err = decode(&buf, &mut 0, 0).unwrap_err();
        assert!(err.contains("MSR event flag"), "{err}");
    }

    #[test]
    fn counts_print_every_kind_and_the_total() {
        let mut c = EventCounts::default();
        for e in samples() {
            c.add(e.kind());
        }
        let lines = c.lines();
        assert_eq!(lines.len(), EventKind::ALL.len() + 1);
        assert!(lines.contains(&"IO Output: 2".to_string()));
        assert!(lines.contains(&"MSR Write: 2".to_string()));
        assert!(lines.contains(&"NMI: 1".to_string()));
        assert_eq!(lines.last().unwrap(), "Total Events: 16");
    }
}
