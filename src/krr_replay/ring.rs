//! The ivshmem ring as the replay emulates it (krr-spec 1.2, 3.8): the guest agent still runs
//! in replay and reads the header (`current_byte`, `current_pos`, `total_size`) when it
//! allocates entries, so every entry the host appended at record time (KVM: interrupts, port
//! inputs, INST_SYNC; QEMU: IDE DMA_DONE, e1000 MMIO reads) is appended again at the same
//! point, in the same format. The ring is device memory owned by the replay's bus: appends
//! happen inside the instruction that causes them (IN, VMCALL) or at the injection, exactly
//! where KRR's QEMU writes them.

use crate::krr_rec::events::QueueHeader;
use crate::krr_rec::layout as l;

/// Offsets of the header fields KRR's replayer updates (krr-spec 1.1).
const CURRENT_POS: usize = l::queue_header::CURRENT_POS;
const CURRENT_BYTE: usize = l::queue_header::CURRENT_BYTE;
const TOTAL_SIZE: usize = l::queue_header::TOTAL_SIZE;
const ROTATED_BYTES: usize = l::queue_header::ROTATED_BYTES;
const HEADER_SIZE: usize = l::queue_header::HEADER_SIZE;
/// The exec-lock owner word, which ivshmem's realize hook sets to 0 in replay.
const LOCK_OWNER: usize = 48;
/// The per-vCPU interrupt slots KVM fills when it cannot append.
const INTERRUPT_SLOTS: usize = 56;

pub struct Ring {
    /// Guest-physical address of BAR2.
    pub gpa: u64,
    bytes: Vec<u8>,
    /// Entries appended by the replay (the host's side), for the report.
    pub appended: u64,
    pub rotations: u64,
}

impl Ring {
    /// A ring of `size` bytes at `gpa`, holding the log's initial header (`replay_ready`).
    pub fn new(gpa: u64, size: u64, initial: &QueueHeader) -> Ring {
        let mut bytes = vec![0u8; size as usize];
        bytes[..initial.raw.len()].copy_from_slice(&initial.raw);
        bytes[LOCK_OWNER..LOCK_OWNER + 4].copy_from_slice(&0u32.to_le_bytes());
        Ring {
            gpa,
            bytes,
            appended: 0,
            rotations: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn contains(&self, phys: u64, size: u8) -> bool {
        phys >= self.gpa && phys - self.gpa + size as u64 <= self.len()
    }

    fn u32_at(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes[off..off + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.bytes[off..off + 8].try_into().expect("8 bytes"))
    }

    fn put(&mut self, off: usize, data: &[u8]) {
        let end = (off + data.len()).min(self.bytes.len());
        if off < end {
            self.bytes[off..end].copy_from_slice(&data[..end - off]);
        }
    }

    /// A guest load from the ring (`size` 1, 2, 4 or 8 bytes at `phys`).
    pub fn read(&self, phys: u64, size: u8) -> u64 {
        let off = (phys - self.gpa) as usize;
        let mut v = [0u8; 8];
        v[..size as usize].copy_from_slice(&self.bytes[off..off + size as usize]);
        u64::from_le_bytes(v)
    }

    /// A guest store to the ring.
    pub fn write(&mut self, phys: u64, size: u8, value: u64) {
        let off = (phys - self.gpa) as usize;
        self.put(off, &value.to_le_bytes()[..size as usize]);
    }

    pub fn current_byte(&self) -> u64 {
        self.u64_at(CURRENT_BYTE)
    }

    pub fn current_pos(&self) -> u32 {
        self.u32_at(CURRENT_POS)
    }

    /// Hypercall 102 (queue full), as QEMU rotated at record: the drained bytes are counted,
    /// allocation starts again after the header.
    pub fn rotate(&mut self) {
        let header = self.u32_at(HEADER_SIZE) as u64;
        let rotated = self.u64_at(ROTATED_BYTES) + self.current_byte().saturating_sub(header);
        self.put(ROTATED_BYTES, &rotated.to_le_bytes());
        self.put(CURRENT_BYTE, &header.to_le_bytes());
        self.put(CURRENT_POS, &0u32.to_le_bytes());
        self.rotations += 1;
    }

    /// Append an entry of `kind` with `payload` at `current_byte` (`append_to_queue`): rotate
    /// first when it would not fit, as KRR's replayer does (KVM never rotated; krr-spec 3.5).
    pub fn append(&mut self, kind: u32, payload: &[u8]) {
        let total = self.u64_at(TOTAL_SIZE);
        if self.current_byte() + payload.len() as u64 + 4 >= total {
            self.rotate();
        }
        let at = self.current_byte() as usize;
        self.put(at, &kind.to_le_bytes());
        self.put(at + 4, payload);
        let next = (at + 4 + payload.len()) as u64;
        self.put(CURRENT_BYTE, &next.to_le_bytes());
        let pos = self.current_pos() + 1;
        self.put(CURRENT_POS, &pos.to_le_bytes());
        self.appended += 1;
    }

    /// An interrupt that the agent records itself (`from` != 0): its 192-byte event goes to
    /// the vCPU's slot, where the agent's memcpy finds it.
    pub fn fill_interrupt_slot(&mut self, cpu: u32, payload: &[u8]) {
        self.put(INTERRUPT_SLOTS + 192 * cpu as usize, payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(total: u64) -> QueueHeader {
        let mut raw = [0u8; 48];
        raw[8..12].copy_from_slice(&4096u32.to_le_bytes());
        raw[12..16].copy_from_slice(&8192u32.to_le_bytes());
        raw[16..20].copy_from_slice(&1u32.to_le_bytes());
        raw[24..32].copy_from_slice(&4096u64.to_le_bytes());
        raw[32..40].copy_from_slice(&total.to_le_bytes());
        QueueHeader::from_bytes(&raw)
    }

    #[test]
    fn appends_advance_and_rotate_as_krr_does() {
        let mut r = Ring::new(0xf_0000_0000, 4096 + 200, &header(200 + 4096));
        assert_eq!((r.current_byte(), r.current_pos()), (4096, 0));
        r.append(3, &[0xaa; 32]);
        assert_eq!((r.current_byte(), r.current_pos()), (4096 + 36, 1));
        assert_eq!(r.read(r.gpa + 4096, 4), 3);
        assert_eq!(r.read(r.gpa + 4100, 8), 0xaaaa_aaaa_aaaa_aaaa);
        // 4096 + 36 + 4 + 192 >= 4296: rotate first.
        r.append(0, &[0x55; 192]);
        assert_eq!(r.rotations, 1);
        assert_eq!(r.current_pos(), 1);
        assert_eq!(r.current_byte(), 4096 + 196);
        assert_eq!(r.read(r.gpa + ROTATED_BYTES as u64, 8), 36);
        // Guest stores land in the ring.
        r.write(r.gpa + 48, 4, 0xffff_ffff);
        assert_eq!(r.read(r.gpa + 48, 4), 0xffff_ffff);
        assert!(r.contains(r.gpa + 4296 - 8, 8));
        assert!(!r.contains(r.gpa + 4296 - 4, 8));
    }
}
