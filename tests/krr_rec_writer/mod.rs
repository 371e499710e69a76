//! A test-only writer of KRR's file formats, from krr-spec.md's layouts (sections 1-2): the
//! field offsets below are the spec's numbers, written out here independently of the
//! readers' `krr::krr_rec::layout` (which `assert_spec_layout` checks against them).
#![allow(dead_code)]

pub mod migration;

use krr::krr_rec::checkpoint::Checkpoint;
use krr::krr_rec::dma::DmaEntry;
use krr::krr_rec::events::{Event, KvmRegs, Node, QueueHeader};
use krr::krr_rec::layout as l;

/// The spec's struct sizes and field offsets (krr-spec.md 1.1, 1.3-1.5), asserted against
/// the readers' layout table.
pub fn assert_spec_layout() {
    assert_eq!(l::QUEUE_HEADER_SIZE, 48);
    use l::queue_header as q;
    assert_eq!(
        [
            q::CURRENT_POS,
            q::TOTAL_POS,
            q::HEADER_SIZE,
            q::ENTRY_SIZE,
            q::RR_ENABLED
        ],
        [0, 4, 8, 12, 16]
    );
    assert_eq!(
        [q::CURRENT_BYTE, q::TOTAL_SIZE, q::ROTATED_BYTES],
        [24, 32, 40]
    );
    assert_eq!(l::KVM_REGS_SIZE, 144);
    let sizes: Vec<Option<usize>> = (0..16).map(l::payload_size).collect();
    // INTERRUPT 192, EXCEPTION 192, SYSCALL 184, IO_IN 32, CFU 48 (+len), RANDOM 1048,
    // RDTSC 32, DMA_DONE 16, GFU 32, STRNLEN 48, RDSEED 32, RELEASE/INST_SYNC 1088, MMIO 32,
    // PTE 32; 15 is no type.
    let spec = [
        192, 192, 184, 32, 48, 1048, 32, 16, 32, 48, 32, 1088, 1088, 32, 32,
    ];
    for (t, s) in spec.iter().enumerate() {
        assert_eq!(sizes[t], Some(*s), "payload size of type {t}");
    }
    assert_eq!(sizes[15], None);
    use l::interrupt as i;
    assert_eq!(
        [
            i::ID,
            i::VECTOR,
            i::ECX,
            i::FROM,
            i::SPIN_COUNT,
            i::INST_CNT,
            i::RIP,
            i::REGS
        ],
        [0, 4, 8, 16, 24, 32, 40, 48]
    );
    use l::exception as e;
    assert_eq!(
        [
            e::ID,
            e::EXCEPTION_INDEX,
            e::ERROR_CODE,
            e::CR2,
            e::CR3,
            e::REGS,
            e::SPIN_COUNT,
            e::INST_CNT
        ],
        [0, 4, 8, 16, 24, 32, 176, 184]
    );
    use l::syscall as s;
    assert_eq!(
        [
            s::ID,
            s::REGS,
            s::KERNEL_GSBASE,
            s::MSR_GSBASE,
            s::CR3,
            s::SPIN_COUNT
        ],
        [0, 8, 152, 160, 168, 176]
    );
    use l::io_input as io;
    assert_eq!([io::ID, io::VALUE, io::INST_CNT, io::RIP], [0, 8, 16, 24]);
    use l::gfu as g;
    assert_eq!([g::ID, g::VAL, g::PTR, g::SIZE], [0, 8, 16, 24]);
    use l::cfu as c;
    assert_eq!(
        [c::ID, c::SRC_ADDR, c::DEST_ADDR, c::LEN, c::RDX],
        [0, 8, 16, 24, 32]
    );
    use l::random as r;
    assert_eq!([r::ID, r::BUF, r::LEN, r::DATA], [0, 8, 16, 24]);
    assert_eq!([l::dma_done::ID, l::dma_done::INST_CNT], [0, 8]);
    use l::event_node as n;
    assert_eq!(
        [n::TYPE, n::ID, n::SPIN_COUNT, n::INST_CNT, n::RIP],
        [0, 4, 32, 1064, 1072]
    );
    assert_eq!(l::DMA_ENTRY_SIZE, 96);
    use l::dma_entry as d;
    assert_eq!(
        [
            d::LEN,
            d::REPLAYED_SGS,
            d::INST_CNT,
            d::RIP,
            d::FOLLOW_NUM,
            d::CPU_ID,
            d::OWNER_ID,
            d::DEV_TYPE,
            d::DEV_INDEX
        ],
        [0, 16, 24, 32, 40, 48, 52, 56, 72]
    );
    assert_eq!(l::SG_SIZE, 48);
    assert_eq!(
        [l::sg::ADDR, l::sg::LEN, l::sg::CHECKSUM, l::sg::DO_CHECK],
        [0, 8, 16, 24]
    );
    assert_eq!(l::CHECKPOINT_SIZE, 344);
    use l::checkpoint as k;
    assert_eq!(
        [
            k::INST_CNT,
            k::RIP,
            k::REGS,
            k::CR,
            k::SEGS,
            k::SEG_SIZE,
            k::EFLAGS
        ],
        [0, 8, 16, 144, 184, 24, 328]
    );
}

/// A zeroed C struct being filled at the spec's offsets.
struct S(Vec<u8>);

impl S {
    fn new(size: usize) -> S {
        S(vec![0; size])
    }
    fn i32(&mut self, off: usize, v: i32) -> &mut S {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut S {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut S {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn regs(&mut self, off: usize, r: &KvmRegs) -> &mut S {
        let v = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r[0], r.r[1], r.r[2], r.r[3],
            r.r[4], r.r[5], r.r[6], r.r[7], r.rip, r.rflags,
        ];
        for (i, x) in v.iter().enumerate() {
            self.u64(off + 8 * i, *x);
        }
        self
    }
}

pub fn header_bytes(h: &QueueHeader) -> Vec<u8> {
    let mut s = S::new(48);
    s.u32(0, h.current_pos)
        .u32(4, h.total_pos)
        .u32(8, h.header_size)
        .u32(12, h.entry_size)
        .u32(16, h.rr_enabled)
        .u64(24, h.current_byte)
        .u64(32, h.total_size)
        .u64(40, h.rotated_bytes);
    s.0
}

/// A ring header as KRR's record start leaves it: a 4 GiB ring, entries from 4096.
pub fn header(current_pos: u32, rr_enabled: u32) -> QueueHeader {
    let mut h = QueueHeader {
        current_pos,
        total_pos: ((4u64 << 30) - 4096) as u32 / 8192,
        header_size: 4096,
        entry_size: 8192,
        rr_enabled,
        current_byte: 4096,
        total_size: (4u64 << 30) - 4096,
        rotated_bytes: 0,
        raw: [0; 48],
    };
    let raw = header_bytes(&h);
    h.raw.copy_from_slice(&raw);
    h
}

fn node(t: u32, n: &Node) -> Vec<u8> {
    let mut s = S::new(1088);
    s.u32(0, t)
        .i32(4, n.id)
        .u64(32, n.spin_count)
        .u64(1056, 0xdead_beef_0000_1056) // garbage pointer
        .u64(1064, n.inst_cnt)
        .u64(1072, 0xdead_beef_0000_1072); // garbage rip
    s.0
}

/// One event as `persist_event` writes it: the type, then the payload.
pub fn event_bytes(e: &Event) -> Vec<u8> {
    let payload = match e {
        Event::Interrupt(i) => {
            let mut s = S::new(192);
            s.i32(0, i.id)
                .i32(4, i.vector)
                .u64(8, i.ecx)
                .i32(16, i.from)
                .u64(24, i.spin_count)
                .u64(32, i.inst_cnt)
                .u64(40, i.rip)
                .regs(48, &i.regs);
            s.0
        }
        Event::Exception(x) => {
            let mut s = S::new(192);
            s.i32(0, x.id)
                .i32(4, x.exception_index)
                .i32(8, x.error_code)
                .u64(16, x.cr2)
                .u64(24, x.cr3)
                .regs(32, &x.regs)
                .u64(176, x.spin_count)
                .u64(184, x.inst_cnt);
            s.0
        }
        Event::Syscall(x) => {
            let mut s = S::new(184);
            s.i32(0, x.id)
                .regs(8, &x.regs)
                .u64(152, x.kernel_gsbase)
                .u64(160, x.msr_gsbase)
                .u64(168, x.cr3)
                .u64(176, x.spin_count);
            s.0
        }
        Event::IoIn(x) | Event::Rdtsc(x) | Event::Mmio(x) => {
            let mut s = S::new(32);
            s.i32(0, x.id)
                .u64(8, x.value)
                .u64(16, x.inst_cnt)
                .u64(24, x.rip);
            s.0
        }
        Event::Cfu(c) => {
            let mut s = S::new(48);
            s.i32(0, c.id)
                .u64(8, c.src_addr)
                .u64(16, c.dest_addr)
                .u64(24, c.data.len() as u64)
                .u64(40, 0x7f00_dead_beef); // host pointer: garbage
            s.0.extend_from_slice(&c.data);
            s.0
        }
        Event::Random(r) => {
            let mut s = S::new(1048);
            s.i32(0, r.id).u64(8, r.buf).u64(16, r.len);
            s.0[24..24 + r.data.len().min(1024)].copy_from_slice(&r.data[..r.data.len().min(1024)]);
            s.0
        }
        Event::DmaDone { id, inst_cnt } => {
            let mut s = S::new(16);
            s.i32(0, *id).u64(8, *inst_cnt);
            s.0
        }
        Event::Gfu(g) | Event::Rdseed(g) | Event::Pte(g) => {
            let mut s = S::new(32);
            s.i32(0, g.id).u64(8, g.val).u64(16, g.ptr).i32(24, g.size);
            s.0
        }
        Event::Strnlen(b) => {
            let mut s = S::new(48);
            s.0[..b.len().min(48)].copy_from_slice(&b[..b.len().min(48)]);
            s.0
        }
        Event::Release(n) => node(11, n),
        Event::InstSync(n) => node(12, n),
    };
    let mut out = e.type_number().to_le_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

/// A whole `kernel_rr.log`.
pub fn log_bytes(initial: &QueueHeader, fin: &QueueHeader, events: &[Event]) -> Vec<u8> {
    let mut out = header_bytes(initial);
    out.extend_from_slice(&header_bytes(fin));
    for e in events {
        out.extend_from_slice(&event_bytes(e));
    }
    out
}

/// A DMA / network log.
pub fn dma_bytes(entries: &[DmaEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut s = S::new(96);
        s.i32(0, e.sgs.len() as i32)
            .u64(8, 0x7f00_0000_0008) // next: garbage
            .u64(24, e.inst_cnt)
            .u64(32, e.rip)
            .u64(40, e.follow_num)
            .i32(48, e.cpu_id)
            .i32(52, e.owner_id)
            .i32(56, e.dev_type)
            .i32(72, e.dev_index);
        out.extend_from_slice(&s.0);
        for sg in &e.sgs {
            let mut s = S::new(48);
            s.u64(0, sg.addr)
                .u64(8, sg.data.len() as u64)
                .u64(32, 0x7f00_0000_0032);
            out.extend_from_slice(&s.0);
            out.extend_from_slice(&sg.data);
        }
    }
    out
}

/// A `checkpoint-<cpu>` file.
pub fn checkpoint_bytes(cps: &[Checkpoint]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in cps {
        let mut s = S::new(344);
        s.u64(0, c.inst_cnt).u64(8, c.rip);
        for (i, r) in c.regs.iter().enumerate() {
            s.u64(16 + 8 * i, *r);
        }
        for (i, r) in c.cr.iter().enumerate() {
            s.u64(144 + 8 * i, *r);
        }
        for (i, g) in c.segs.iter().enumerate() {
            let b = 184 + 24 * i;
            s.u32(b, g.selector)
                .u64(b + 8, g.base)
                .u32(b + 16, g.limit)
                .u32(b + 20, g.flags);
        }
        s.u64(328, c.eflags).u64(336, 0x7f00_0000_0336);
        out.extend_from_slice(&s.0);
    }
    out
}
