//! The ivshmem ring as the replay emulates it (krr-spec 1.2, 3.8): the guest agent still runs
//! in replay and reads the header (`current_byte`, `current_pos`, `total_size`) when it
//! allocates entries, so every entry the host appended at record time (KVM: interrupts, port
//! inputs, INST_SYNC; QEMU: IDE DMA_DONE, e1000 MMIO reads) is appended again at the same
//! point, in the same format. The ring is RAM at BAR2 (a window of the replay's memory, so the
//! agent's accesses run at memory speed and may cross pages); the host's changes
//! ([`RingOp`]) are noted where the instruction or injection that causes them happens and
//! written before the next instruction runs.

use crate::krr_rec::events::QueueHeader;
use crate::krr_rec::layout as l;
use krr_runtime::GuestMemory;

/// Offsets of the header fields KRR's replayer updates (krr-spec 1.1).
const CURRENT_POS: usize = l::queue_header::CURRENT_POS;
const CURRENT_BYTE: usize = l::queue_header::CURRENT_BYTE;
const ROTATED_BYTES: usize = l::queue_header::ROTATED_BYTES;
const HEADER_SIZE: usize = l::queue_header::HEADER_SIZE;
/// The exec-lock owner word, which ivshmem's realize hook sets to 0 in replay.
const LOCK_OWNER: usize = 48;
/// The per-vCPU interrupt slots KVM fills when it cannot append.
const INTERRUPT_SLOTS: usize = 56;

#[derive(Clone)]
pub struct Ring {
    /// Guest-physical address of BAR2 (a RAM window of the replay's memory).
    pub gpa: u64,
    pub size: u64,
    /// Entries appended by the replay (the host's side), for the report.
    pub appended: u64,
    pub rotations: u64,
}

/// A host-side change to the ring, made where the instruction or injection that causes it
/// happens and applied before the next instruction runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingOp {
    Append(u32, Vec<u8>),
    Rotate,
    /// An interrupt the agent records itself (`from` != 0): its 192-byte event goes to the
    /// vCPU's slot, where the agent's memcpy finds it.
    InterruptSlot(u32, Vec<u8>),
}

impl Ring {
    pub fn new(gpa: u64, size: u64) -> Ring {
        Ring {
            gpa,
            size,
            appended: 0,
            rotations: 0,
        }
    }

    /// The ring as replay starts it (`replay_ready`): the log's initial header, the
    /// exec-lock owner word 0 (ivshmem's realize hook).
    pub fn init(&self, mem: &mut GuestMemory, initial: &QueueHeader) -> Result<(), String> {
        self.put(mem, 0, &initial.raw)?;
        self.put(mem, LOCK_OWNER, &0u32.to_le_bytes())
    }

    fn get(&self, mem: &GuestMemory, off: usize, buf: &mut [u8]) -> Result<(), String> {
        mem.read(self.gpa + off as u64, buf)
            .map_err(|e| format!("the ring at BAR2 {:#x}: {e}", self.gpa))
    }

    fn u32_at(&self, mem: &GuestMemory, off: usize) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.get(mem, off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64_at(&self, mem: &GuestMemory, off: usize) -> Result<u64, String> {
        let mut b = [0u8; 8];
        self.get(mem, off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn put(&self, mem: &mut GuestMemory, off: usize, data: &[u8]) -> Result<(), String> {
        let room = (self.size as usize).saturating_sub(off);
        let n = data.len().min(room);
        mem.write(self.gpa + off as u64, &data[..n])
            .map_err(|e| format!("the ring at BAR2 {:#x}: {e}", self.gpa))
    }

    pub fn current_byte(&self, mem: &GuestMemory) -> Result<u64, String> {
        self.u64_at(mem, CURRENT_BYTE)
    }

    pub fn current_pos(&self, mem: &GuestMemory) -> Result<u32, String> {
        self.u32_at(mem, CURRENT_POS)
    }

    /// Hypercall 102 (queue full), as QEMU rotated at record: the drained bytes are counted,
    /// allocation starts again after the header.
    pub fn rotate(&mut self, mem: &mut GuestMemory) -> Result<(), String> {
        let header = self.u32_at(mem, HEADER_SIZE)? as u64;
        let current = self.current_byte(mem)?;
        let rotated = self.u64_at(mem, ROTATED_BYTES)? + current.saturating_sub(header);
        self.put(mem, ROTATED_BYTES, &rotated.to_le_bytes())?;
        self.put(mem, CURRENT_BYTE, &header.to_le_bytes())?;
        self.put(mem, CURRENT_POS, &0u32.to_le_bytes())?;
        self.rotations += 1;
        Ok(())
    }

    /// Append an entry of `kind` with `payload` at `current_byte`, as the host did at
    /// record: KVM's and QEMU's appends never rotate the ring (krr-spec 1.2), even past
    /// `total_size` (the header page's worth of slack is there); the guest's next
    /// allocation finds it full and rotates with hypercall 102. KRR's replayer
    /// (`append_to_queue`) rotates first instead when the entry does not fit, which the
    /// recording never did: the guest then skips that hypercall and the replay leaves the
    /// recording (krr-spec 8.3).
    pub fn append(
        &mut self,
        mem: &mut GuestMemory,
        kind: u32,
        payload: &[u8],
    ) -> Result<(), String> {
        let at = self.current_byte(mem)? as usize;
        if (at + 4 + payload.len()) as u64 > self.size {
            return Err(format!(
                "a host-side append of {} bytes at ring offset {at:#x} runs past the ring's {:#x} bytes",
                4 + payload.len(),
                self.size
            ));
        }
        self.put(mem, at, &kind.to_le_bytes())?;
        self.put(mem, at + 4, payload)?;
        let next = (at + 4 + payload.len()) as u64;
        self.put(mem, CURRENT_BYTE, &next.to_le_bytes())?;
        let pos = self.current_pos(mem)? + 1;
        self.put(mem, CURRENT_POS, &pos.to_le_bytes())?;
        self.appended += 1;
        Ok(())
    }

    pub fn apply(&mut self, mem: &mut GuestMemory, op: RingOp) -> Result<(), String> {
        match op {
            RingOp::Append(kind, payload) => self.append(mem, kind, &payload),
            RingOp::Rotate => self.rotate(mem),
            RingOp::InterruptSlot(cpu, payload) => {
                self.put(mem, INTERRUPT_SLOTS + 192 * cpu as usize, &payload)
            }
        }
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
    fn host_appends_never_rotate_hypercall_102_does() {
        let gpa = 0xf_0000_0000;
        let mut mem = GuestMemory::with_windows(&[(gpa, 0x2000)]).unwrap();
        let mut r = Ring::new(gpa, 0x2000);
        r.init(&mut mem, &header(200 + 4096)).unwrap();
        let rd = |mem: &GuestMemory, off: u64| mem.read_u64(gpa + off).unwrap();
        assert_eq!(
            (r.current_byte(&mem).unwrap(), r.current_pos(&mem).unwrap()),
            (4096, 0)
        );
        r.apply(&mut mem, RingOp::Append(3, vec![0xaa; 32]))
            .unwrap();
        assert_eq!(
            (r.current_byte(&mem).unwrap(), r.current_pos(&mem).unwrap()),
            (4096 + 36, 1)
        );
        assert_eq!(rd(&mem, 4096) as u32, 3);
        assert_eq!(rd(&mem, 4100), 0xaaaa_aaaa_aaaa_aaaa);
        // 4096 + 36 + 4 + 192 >= 4296: past total_size, and still no rotation (the host
        // never rotates; the guest's next allocation does, with hypercall 102).
        r.apply(&mut mem, RingOp::Append(0, vec![0x55; 192]))
            .unwrap();
        assert_eq!(r.rotations, 0);
        assert_eq!(r.current_pos(&mem).unwrap(), 2);
        assert_eq!(r.current_byte(&mem).unwrap(), 4096 + 36 + 196);
        assert_eq!(rd(&mem, 4096 + 36) as u32, 0);
        r.apply(&mut mem, RingOp::Rotate).unwrap();
        assert_eq!(r.rotations, 1);
        assert_eq!(r.current_byte(&mem).unwrap(), 4096);
        assert_eq!(rd(&mem, ROTATED_BYTES as u64), 36 + 196);
        // Past the ring's memory: an error, not a silent truncation.
        r.apply(&mut mem, RingOp::Append(3, vec![1; 32])).unwrap();
        let e = r
            .apply(&mut mem, RingOp::Append(12, vec![0; 0x2000]))
            .unwrap_err();
        assert!(e.contains("runs past"), "{e}");
        r.apply(&mut mem, RingOp::InterruptSlot(1, vec![7; 192]))
            .unwrap();
        assert_eq!(rd(&mem, 56 + 192), 0x0707_0707_0707_0707);
        assert_eq!(r.appended, 3);
    }
}
