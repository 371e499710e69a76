//! `kernel_rr.log` (krr-spec.md 1.3): two 48-byte ring headers, then events, each a 4-byte
//! type and the payload of that type (CFU adds `len` data bytes). No magic, no count: the
//! events run to the end of the file. An empty file is a recording of zero events.

use super::error::{Ctx, KrrError};
use super::layout::{self as l, ty};
use super::le::{Le, Rec};
use std::fmt;
use std::path::Path;

/// `struct kvm_regs` as KRR stores it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    /// R8..R15.
    pub r: [u64; 8],
    pub rip: u64,
    pub rflags: u64,
}

impl KvmRegs {
    pub fn from_bytes(b: &[u8]) -> KvmRegs {
        let r = Rec(b);
        KvmRegs {
            rax: r.u64(0),
            rbx: r.u64(8),
            rcx: r.u64(16),
            rdx: r.u64(24),
            rsi: r.u64(32),
            rdi: r.u64(40),
            rsp: r.u64(48),
            rbp: r.u64(56),
            r: r.u64s(64),
            rip: r.u64(128),
            rflags: r.u64(136),
        }
    }
}

/// `rr_event_guest_queue_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueHeader {
    pub current_pos: u32,
    pub total_pos: u32,
    pub header_size: u32,
    pub entry_size: u32,
    pub rr_enabled: u32,
    pub current_byte: u64,
    pub total_size: u64,
    pub rotated_bytes: u64,
    /// The 48 bytes as stored (replay copies the initial header back into the ring).
    pub raw: [u8; l::QUEUE_HEADER_SIZE],
}

impl QueueHeader {
    pub fn from_bytes(b: &[u8]) -> QueueHeader {
        use l::queue_header as q;
        let r = Rec(b);
        QueueHeader {
            current_pos: r.u32(q::CURRENT_POS),
            total_pos: r.u32(q::TOTAL_POS),
            header_size: r.u32(q::HEADER_SIZE),
            entry_size: r.u32(q::ENTRY_SIZE),
            rr_enabled: r.u32(q::RR_ENABLED),
            current_byte: r.u64(q::CURRENT_BYTE),
            total_size: r.u64(q::TOTAL_SIZE),
            rotated_bytes: r.u64(q::ROTATED_BYTES),
            raw: b[..l::QUEUE_HEADER_SIZE].try_into().expect("48 bytes"),
        }
    }
    /// The ring's size (the ivshmem BAR2 size): `total_size` + `header_size`.
    pub fn ring_bytes(&self) -> u64 {
        self.total_size.saturating_add(self.header_size as u64)
    }
}

/// An asynchronous interrupt (`rr_interrupt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupt {
    pub id: i32,
    pub vector: i32,
    pub ecx: u64,
    /// 0 = KVM at injection, 3 = guest after taking the exec lock.
    pub from: i32,
    pub spin_count: u64,
    pub inst_cnt: u64,
    pub rip: u64,
    pub regs: KvmRegs,
}

/// `rr_exception`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub id: i32,
    pub exception_index: i32,
    pub error_code: i32,
    pub cr2: u64,
    pub cr3: u64,
    pub regs: KvmRegs,
    pub spin_count: u64,
    /// Only valid for KVM-recorded #DB.
    pub inst_cnt: u64,
}

/// `rr_syscall`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syscall {
    pub id: i32,
    pub regs: KvmRegs,
    pub kernel_gsbase: u64,
    pub msr_gsbase: u64,
    pub cr3: u64,
    pub spin_count: u64,
}

/// `rr_io_input` (IO_IN, RDTSC, MMIO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoInput {
    pub id: i32,
    pub value: u64,
    pub inst_cnt: u64,
    pub rip: u64,
}

/// `rr_gfu` (GFU, PTE, RDSEED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gfu {
    pub id: i32,
    pub val: u64,
    pub ptr: u64,
    pub size: i32,
}

/// `rr_cfu` and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cfu {
    pub id: i32,
    pub src_addr: u64,
    pub dest_addr: u64,
    /// `len` bytes (n + 1 for copy_from_user).
    pub data: Vec<u8>,
}

/// `rr_random`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Random {
    pub id: i32,
    pub buf: u64,
    pub len: u64,
    /// The 1024-byte data array as stored.
    pub data: Vec<u8>,
}

/// A RELEASE / INST_SYNC node (`rr_event_log`, 1088 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub id: i32,
    pub spin_count: u64,
    pub inst_cnt: u64,
}

/// One event of `kernel_rr.log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Interrupt(Interrupt),
    Exception(Exception),
    Syscall(Syscall),
    IoIn(IoInput),
    Cfu(Cfu),
    Random(Random),
    Rdtsc(IoInput),
    DmaDone {
        id: i32,
        inst_cnt: u64,
    },
    Gfu(Gfu),
    /// No current producer; its 48-byte payload kept as stored.
    Strnlen(Vec<u8>),
    Rdseed(Gfu),
    Release(Node),
    InstSync(Node),
    Mmio(IoInput),
    Pte(Gfu),
}

/// Event kinds in the order of KRR's `=== Event Stats ===` where they appear there.
pub const KIND_NAMES: [&str; 15] = [
    "Interrupt",
    "Exception",
    "Syscall",
    "IO Input",
    "CFU",
    "Random",
    "RDTSC",
    "DMA Done",
    "GFU",
    "Strnlen",
    "RDSEED",
    "Release",
    "Inst Sync",
    "MMIO",
    "PTE",
];

impl Event {
    /// The event's type number.
    pub fn type_number(&self) -> u32 {
        match self {
            Event::Interrupt(_) => ty::INTERRUPT,
            Event::Exception(_) => ty::EXCEPTION,
            Event::Syscall(_) => ty::SYSCALL,
            Event::IoIn(_) => ty::IO_IN,
            Event::Cfu(_) => ty::CFU,
            Event::Random(_) => ty::RANDOM,
            Event::Rdtsc(_) => ty::RDTSC,
            Event::DmaDone { .. } => ty::DMA_DONE,
            Event::Gfu(_) => ty::GFU,
            Event::Strnlen(_) => ty::STRNLEN,
            Event::Rdseed(_) => ty::RDSEED,
            Event::Release(_) => ty::RELEASE,
            Event::InstSync(_) => ty::INST_SYNC,
            Event::Mmio(_) => ty::MMIO,
            Event::Pte(_) => ty::PTE,
        }
    }
    pub fn kind_name(&self) -> &'static str {
        KIND_NAMES[self.type_number() as usize]
    }
    /// The instruction count KRR's loader takes as the event's (`load_event`): INTERRUPT,
    /// IO_IN, RDTSC, RELEASE and INST_SYNC carry one; the others none.
    pub fn inst_cnt(&self) -> Option<u64> {
        match self {
            Event::Interrupt(i) => Some(i.inst_cnt),
            Event::IoIn(i) | Event::Rdtsc(i) => Some(i.inst_cnt),
            Event::Release(n) | Event::InstSync(n) => Some(n.inst_cnt),
            _ => None,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Interrupt(i) => write!(
                f,
                "Interrupt cpu {} vector {:#x} from {} rip {:#x} rcx {:#x} count {} spin {}",
                i.id, i.vector, i.from, i.rip, i.regs.rcx, i.inst_cnt, i.spin_count
            ),
            Event::Exception(e) => write!(
                f,
                "Exception cpu {} #{} error {:#x} cr2 {:#x} rip {:#x}",
                e.id, e.exception_index, e.error_code, e.cr2, e.regs.rip
            ),
            Event::Syscall(s) => write!(
                f,
                "Syscall cpu {} nr {} user rip {:#x}",
                s.id, s.regs.rax, s.regs.rcx
            ),
            Event::IoIn(i) | Event::Rdtsc(i) | Event::Mmio(i) => write!(
                f,
                "{} cpu {} value {:#x} rip {:#x} count {}",
                self.kind_name(),
                i.id,
                i.value,
                i.rip,
                i.inst_cnt
            ),
            Event::Cfu(c) => write!(
                f,
                "CFU src {:#x} dest {:#x} len {}",
                c.src_addr,
                c.dest_addr,
                c.data.len()
            ),
            Event::Random(r) => write!(f, "Random buf {:#x} len {}", r.buf, r.len),
            Event::DmaDone { .. } => write!(f, "DMA Done"),
            Event::Gfu(g) | Event::Rdseed(g) | Event::Pte(g) => write!(
                f,
                "{} ptr {:#x} size {} value {:#x}",
                self.kind_name(),
                g.ptr,
                g.size,
                g.val
            ),
            Event::Strnlen(_) => write!(f, "Strnlen"),
            Event::Release(n) | Event::InstSync(n) => write!(
                f,
                "{} cpu {} count {} spin {}",
                self.kind_name(),
                n.id,
                n.inst_cnt,
                n.spin_count
            ),
        }
    }
}

/// A read `kernel_rr.log`.
#[derive(Debug, Clone, Default)]
pub struct KrrLog {
    /// The initial and final headers; `None` for an empty file (zero events).
    pub headers: Option<(QueueHeader, QueueHeader)>,
    pub events: Vec<Event>,
    /// The file offset of each event's type field.
    pub offsets: Vec<u64>,
    pub file_len: u64,
}

impl KrrLog {
    pub fn open(path: &Path) -> Result<KrrLog, KrrError> {
        let ctx = Ctx::new(path);
        let bytes = std::fs::read(path).map_err(|e| ctx.io(e))?;
        KrrLog::parse(&bytes, path)
    }

    /// The ring size from the log's final header (`total_size + header_size`), if any.
    pub fn ring_bytes(&self) -> Option<u64> {
        self.headers.map(|(_, fin)| fin.ring_bytes())
    }

    /// Number of events by type number.
    pub fn counts(&self) -> [u64; 15] {
        let mut c = [0u64; 15];
        for e in &self.events {
            c[e.type_number() as usize] += 1;
        }
        c
    }

    /// A note when the final header's event count disagrees with the events found (KRR's
    /// loader reads `current_pos - 1` events; krr reads all and reports the difference).
    pub fn count_note(&self) -> Option<String> {
        let (_, fin) = self.headers?;
        let n = self.events.len() as u64;
        (fin.current_pos as u64 != n).then(|| {
            format!(
                "final header counts {} events, the file holds {n}",
                fin.current_pos
            )
        })
    }

    pub fn parse(bytes: &[u8], file: &Path) -> Result<KrrLog, KrrError> {
        let mut ctx = Ctx::new(file);
        let mut log = KrrLog {
            file_len: bytes.len() as u64,
            ..KrrLog::default()
        };
        if bytes.is_empty() {
            return Ok(log);
        }
        let mut r = Le::new(bytes, 0);
        let initial = QueueHeader::from_bytes(r.take(48, "the initial header", &ctx)?);
        let fin = QueueHeader::from_bytes(r.take(48, "the final header", &ctx)?);
        log.headers = Some((initial, fin));
        while !r.at_end() {
            let index = log.events.len() as u64;
            ctx.index = Some(index);
            let at = r.offset();
            let t = Rec(r.take(4, "an event type", &ctx)?).u32(0);
            let Some(size) = l::payload_size(t) else {
                return Err(ctx.invalid(at, format!("unknown event type {t}")));
            };
            let what = format!("a {} payload", KIND_NAMES[t as usize]);
            let p = Rec(r.take(size as u64, &what, &ctx)?);
            let ev = decode(t, &p, &mut r, &ctx)?;
            log.events.push(ev);
            log.offsets.push(at);
        }
        Ok(log)
    }
}

fn io_input(p: &Rec) -> IoInput {
    use l::io_input as o;
    IoInput {
        id: p.i32(o::ID),
        value: p.u64(o::VALUE),
        inst_cnt: p.u64(o::INST_CNT),
        rip: p.u64(o::RIP),
    }
}

fn gfu(p: &Rec) -> Gfu {
    use l::gfu as o;
    Gfu {
        id: p.i32(o::ID),
        val: p.u64(o::VAL),
        ptr: p.u64(o::PTR),
        size: p.i32(o::SIZE),
    }
}

fn node(p: &Rec) -> Node {
    use l::event_node as o;
    Node {
        id: p.i32(o::ID),
        spin_count: p.u64(o::SPIN_COUNT),
        inst_cnt: p.u64(o::INST_CNT),
    }
}

fn decode(t: u32, p: &Rec, r: &mut Le, ctx: &Ctx) -> Result<Event, KrrError> {
    Ok(match t {
        ty::INTERRUPT => {
            use l::interrupt as o;
            Event::Interrupt(Interrupt {
                id: p.i32(o::ID),
                vector: p.i32(o::VECTOR),
                ecx: p.u64(o::ECX),
                from: p.i32(o::FROM),
                spin_count: p.u64(o::SPIN_COUNT),
                inst_cnt: p.u64(o::INST_CNT),
                rip: p.u64(o::RIP),
                regs: KvmRegs::from_bytes(&p.0[o::REGS..]),
            })
        }
        ty::EXCEPTION => {
            use l::exception as o;
            Event::Exception(Exception {
                id: p.i32(o::ID),
                exception_index: p.i32(o::EXCEPTION_INDEX),
                error_code: p.i32(o::ERROR_CODE),
                cr2: p.u64(o::CR2),
                cr3: p.u64(o::CR3),
                regs: KvmRegs::from_bytes(&p.0[o::REGS..]),
                spin_count: p.u64(o::SPIN_COUNT),
                inst_cnt: p.u64(o::INST_CNT),
            })
        }
        ty::SYSCALL => {
            use l::syscall as o;
            Event::Syscall(Syscall {
                id: p.i32(o::ID),
                regs: KvmRegs::from_bytes(&p.0[o::REGS..]),
                kernel_gsbase: p.u64(o::KERNEL_GSBASE),
                msr_gsbase: p.u64(o::MSR_GSBASE),
                cr3: p.u64(o::CR3),
                spin_count: p.u64(o::SPIN_COUNT),
            })
        }
        ty::IO_IN => Event::IoIn(io_input(p)),
        ty::RDTSC => Event::Rdtsc(io_input(p)),
        ty::MMIO => Event::Mmio(io_input(p)),
        ty::CFU => {
            use l::cfu as o;
            let len = p.u64(o::LEN);
            // Checked against what is left before anything is allocated.
            let data = r.take(len, "CFU data", ctx)?.to_vec();
            Event::Cfu(Cfu {
                id: p.i32(o::ID),
                src_addr: p.u64(o::SRC_ADDR),
                dest_addr: p.u64(o::DEST_ADDR),
                data,
            })
        }
        ty::RANDOM => {
            use l::random as o;
            Event::Random(Random {
                id: p.i32(o::ID),
                buf: p.u64(o::BUF),
                len: p.u64(o::LEN),
                data: p.0[o::DATA..o::DATA + l::RANDOM_DATA_MAX].to_vec(),
            })
        }
        ty::DMA_DONE => Event::DmaDone {
            id: p.i32(l::dma_done::ID),
            inst_cnt: p.u64(l::dma_done::INST_CNT),
        },
        ty::GFU => Event::Gfu(gfu(p)),
        ty::RDSEED => Event::Rdseed(gfu(p)),
        ty::PTE => Event::Pte(gfu(p)),
        ty::STRNLEN => Event::Strnlen(p.0.to_vec()),
        ty::RELEASE => Event::Release(node(p)),
        ty::INST_SYNC => Event::InstSync(node(p)),
        _ => unreachable!("payload_size knows only these types"),
    })
}
