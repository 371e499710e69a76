//! The KRR ring in ivshmem's BAR2 as the host sides see it (krr-spec 1.2, 1.3): KVM's
//! appends (IO_IN, INTERRUPT from=0) and its RDTSC-exit patch into the guest's entry, and
//! QEMU's draining of the ring into `kernel_rr.log` (at hypercall 102 and at the end).
//!
//! The ring is reached through a raw host pointer into the core's guest memory: KVM writes
//! into the shared file while the vCPU runs, and the bus callbacks (port IN, RDTSC) only get
//! the CPU state, not the memory.

/// Field offsets of the 48-byte queue header.
const CURRENT_POS: usize = 0;
const CURRENT_BYTE: usize = 24;
const TOTAL_SIZE: usize = 32;
const ROTATED_BYTES: usize = 40;
const RR_ENABLED: usize = 16;
pub const HEADER_SIZE: u64 = 4096;
/// `rr_event_log_guest` (type, id, the 1048-byte union, inst_cnt, rip).
pub const GUEST_FORM: usize = 1072;

/// Payload size of an entry of type `t` in the ring (CFU: plus `len` data bytes); only the
/// types this machine's agent and host produce.
pub fn payload_size(t: u32) -> usize {
    match t {
        0 | 1 => 192,
        2 => 184,
        3 | 6 | 8 | 10 | 14 => 32,
        4 => 48,
        7 => 16,  // DMA_DONE (the device scenario's QEMU)
        13 => 32, // MMIO
        // RELEASE (the agent) and INST_SYNC (KVM): the guest form, `rr_event_log_guest`.
        11 | 12 => GUEST_FORM,
        _ => panic!("ring entry of type {t}: not produced by the synthetic machine"),
    }
}

#[derive(Clone, Copy)]
pub struct Ring {
    base: *mut u8,
    size: u64,
}

impl Ring {
    /// The ring at host address `base` (BAR2 inside the core's guest memory), `size` bytes.
    pub fn new(base: *mut u8, size: u64) -> Ring {
        Ring { base, size }
    }

    pub fn read(&self, off: u64, buf: &mut [u8]) {
        assert!(off + buf.len() as u64 <= self.size);
        // SAFETY: inside the BAR2 range of the core's memory mapping, which outlives the
        // recorder; the vCPU is not running concurrently (same thread).
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(off as usize), buf.as_mut_ptr(), buf.len())
        }
    }

    pub fn write(&self, off: u64, data: &[u8]) {
        assert!(
            off + data.len() as u64 <= self.size,
            "a host append past the end of the ring (KVM never rotates)"
        );
        // SAFETY: as in `read`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off as usize), data.len())
        }
    }

    pub fn u64(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.read(off, &mut b);
        u64::from_le_bytes(b)
    }

    pub fn u32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn set_u64(&self, off: u64, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    pub fn set_u32(&self, off: u64, v: u32) {
        self.write(off, &v.to_le_bytes());
    }

    pub fn header(&self) -> [u8; 48] {
        let mut h = [0u8; 48];
        self.read(0, &mut h);
        h
    }

    pub fn enabled(&self) -> bool {
        self.u32(RR_ENABLED as u64) == 1
    }

    pub fn current_byte(&self) -> u64 {
        self.u64(CURRENT_BYTE as u64)
    }

    /// QEMU's `rr_record` start: `current_pos` reset, `rr_enabled` set. Returns the initial
    /// header (the log's first 48 bytes).
    pub fn start_recording(&self) -> [u8; 48] {
        self.set_u32(CURRENT_POS as u64, 0);
        self.set_u32(RR_ENABLED as u64, 1);
        self.header()
    }

    /// A host append (KVM): type + payload at `current_byte`, `current_pos` += 1. Like KVM it
    /// never rotates.
    pub fn append(&self, t: u32, payload: &[u8]) {
        assert_eq!(payload.len(), payload_size(t));
        let at = self.current_byte();
        self.write(at, &t.to_le_bytes());
        self.write(at + 4, payload);
        self.set_u64(CURRENT_BYTE as u64, at + 4 + payload.len() as u64);
        let pos = self.u32(CURRENT_POS as u64);
        self.set_u32(CURRENT_POS as u64, pos + 1);
        let total = self.u64(TOTAL_SIZE as u64);
        assert!(
            at + 4 + payload.len() as u64 <= total + HEADER_SIZE,
            "KVM's append overran the ring"
        );
    }
}

/// `kernel_rr.log` as QEMU writes it: both headers rewritten at every save, event batches
/// appended; events counted by type.
pub struct LogWriter {
    pub bytes: Vec<u8>,
    pub counts: [u64; 15],
    pub total: u64,
    pub rotations: u64,
    /// The largest `current_byte` drained: above `total_size` when a host append (which
    /// never rotates) went past it.
    pub max_end: u64,
}

/// The host pointer QEMU's `rr_cfu` node holds in its `data` field (written to the file with
/// the struct: garbage, as in KRR's files).
const CFU_DATA_POINTER: u64 = 0x5555_5555_a2c0;

impl LogWriter {
    pub fn new(initial: [u8; 48]) -> LogWriter {
        let mut bytes = initial.to_vec();
        bytes.extend_from_slice(&initial);
        LogWriter {
            bytes,
            counts: [0; 15],
            total: 0,
            rotations: 0,
            max_end: 0,
        }
    }

    /// Save the ring's entries [4096, current_byte) (QEMU reads each entry into a node and
    /// persists it; for these types the file form is the ring form, except the CFU's data
    /// pointer) and rewrite the final header with the cumulative event count.
    pub fn drain(&mut self, ring: &Ring) {
        let end = ring.current_byte();
        self.max_end = self.max_end.max(end);
        let mut at = HEADER_SIZE;
        while at < end {
            let t = ring.u32(at);
            let mut size = payload_size(t) as u64;
            let start = self.bytes.len();
            if t == 4 {
                size += ring.u64(at + 4 + 24);
            }
            let mut entry = vec![0u8; 4 + size as usize];
            ring.read(at, &mut entry);
            if t == 4 {
                entry[4 + 40..4 + 48].copy_from_slice(&CFU_DATA_POINTER.to_le_bytes());
            }
            if t == 11 || t == 12 {
                entry = node(t, &entry[4..]);
            }
            self.bytes.extend_from_slice(&entry);
            debug_assert_eq!(self.bytes.len() - start, entry.len());
            self.counts[t as usize] += 1;
            self.total += 1;
            at += 4 + size;
        }
        assert_eq!(at, end, "the ring's entries end at current_byte");
        let mut fin = ring.header();
        fin[CURRENT_POS..CURRENT_POS + 4].copy_from_slice(&(self.total as u32).to_le_bytes());
        self.bytes[48..96].copy_from_slice(&fin);
    }

    /// Hypercall 102: drain, then rotate (`rotated_bytes += current_byte - header_size;
    /// current_byte = header_size; current_pos = 0`).
    pub fn rotate(&mut self, ring: &Ring) {
        self.drain(ring);
        let cb = ring.current_byte();
        let rotated = ring.u64(ROTATED_BYTES as u64);
        ring.set_u64(ROTATED_BYTES as u64, rotated + cb - HEADER_SIZE);
        ring.set_u64(CURRENT_BYTE as u64, HEADER_SIZE);
        ring.set_u32(CURRENT_POS as u64, 0);
        self.rotations += 1;
    }
}

/// The file form of a RELEASE / INST_SYNC ring entry (`persist_event` writes QEMU's
/// 1088-byte `rr_event_log` node, krr-spec 1.3): type, then the node: type, id, the union
/// (only INST_SYNC's spin_count copied), next (a host pointer), inst_cnt (INST_SYNC only),
/// rip and user_mode (never set: malloc'd memory, here a fixed pattern).
fn node(t: u32, guest: &[u8]) -> Vec<u8> {
    let mut n = vec![0u8; 4 + 1088];
    n[..4].copy_from_slice(&t.to_le_bytes());
    let node = &mut n[4..];
    node[..4].copy_from_slice(&t.to_le_bytes());
    node[4..8].copy_from_slice(&guest[4..8]);
    if t == 12 {
        node[32..40].copy_from_slice(&guest[32..40]);
        node[1064..1072].copy_from_slice(&guest[1056..1064]);
    }
    node[1056..1064].copy_from_slice(&NODE_NEXT_POINTER.to_le_bytes());
    node[1072..1080].copy_from_slice(&0x5555_5555_0bad_0bad_u64.to_le_bytes());
    n
}

/// The `next` pointer QEMU's node holds when it is persisted (garbage in the file).
const NODE_NEXT_POINTER: u64 = 0x5555_5555_b3e0;

/// A KVM-format `kvm_regs` (16 GPRs in KVM's order, RIP, RFLAGS) from krr's GPR array
/// (architectural order RAX RCX RDX RBX RSP RBP RSI RDI R8..R15).
pub fn kvm_regs(gpr: &[u64; 16], rip: u64, rflags: u64) -> [u8; 144] {
    let order = [0, 3, 1, 2, 6, 7, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15];
    let mut out = [0u8; 144];
    for (i, &r) in order.iter().enumerate() {
        out[8 * i..8 * i + 8].copy_from_slice(&gpr[r].to_le_bytes());
    }
    out[128..136].copy_from_slice(&rip.to_le_bytes());
    out[136..144].copy_from_slice(&rflags.to_le_bytes());
    out
}
