//! The split virtqueue (virtio 1.x section 2.7) as the device side walks it: the descriptor
//! table, the available ring the driver fills and the used ring the device fills, all in
//! guest RAM reached through [`DmaMemory`].
//!
//! Modelled: descriptor chains (NEXT, WRITE), indirect descriptor tables (any number of
//! direct descriptors followed by one indirect one), used-buffer notification suppression
//! both ways (`VIRTQ_AVAIL_F_NO_INTERRUPT`, or with VIRTIO_F_EVENT_IDX `used_event`), and
//! available-buffer notification suppression through `avail_event` (the device asks to be
//! notified for the next buffer each time it has drained the ring; it never sets
//! `VIRTQ_USED_F_NO_NOTIFY`).
//!
//! A chain is checked completely before the device uses it: every index inside the table,
//! at most queue-size descriptors in all (so a loop ends as an error), no indirect table
//! inside an indirect table or with NEXT set, device-readable before device-writable
//! descriptors, and every buffer wholly in guest RAM. A violation is a [`QueueError`]; the
//! transport then marks the device as needing a reset.
//!
//! Left out: the packed ring, VIRTIO_F_IN_ORDER, VIRTIO_F_NOTIFICATION_DATA, queue reset.

use super::super::dma::{DmaError, DmaMemory, DmaMemoryExt};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver needs no used-buffer notification (without EVENT_IDX).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Size of a descriptor: le64 addr, le32 len, le16 flags, le16 next.
pub const DESC_SIZE: u64 = 16;
/// Offsets in a descriptor.
pub const DESC_ADDR: usize = 0;
pub const DESC_LEN: usize = 8;
pub const DESC_FLAGS: usize = 12;
pub const DESC_NEXT: usize = 14;
/// Available ring: le16 flags, le16 idx, le16 ring[size], le16 used_event.
pub const AVAIL_FLAGS: u64 = 0;
pub const AVAIL_IDX: u64 = 2;
pub const AVAIL_RING: u64 = 4;
/// Used ring: le16 flags, le16 idx, {le32 id, le32 len}[size], le16 avail_event.
pub const USED_IDX: u64 = 2;
pub const USED_RING: u64 = 4;
/// Size of a used ring element.
pub const USED_ELEM_SIZE: u64 = 8;
/// Required alignment of the descriptor table, available ring and used ring.
pub const DESC_ALIGN: u64 = 16;
pub const AVAIL_ALIGN: u64 = 2;
pub const USED_ALIGN: u64 = 4;

/// A driver mistake in a queue or a chain: the device cannot go on with this queue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue size {size} is not a power of two in 1..={max}")]
    BadSize { size: u16, max: u16 },
    #[error("ring address {addr:#x} is not {align}-byte aligned")]
    Misaligned { addr: u64, align: u64 },
    #[error("available index moved from {last} to {idx}, more than the queue size {size}")]
    AvailOverrun { last: u16, idx: u16, size: u16 },
    #[error("descriptor index {index} is outside its table of {size}")]
    BadIndex { index: u16, size: u64 },
    #[error("descriptor chain from head {head} has more than {limit} descriptors (a loop?)")]
    ChainTooLong { head: u16, limit: u16 },
    #[error("indirect descriptor without VIRTIO_F_INDIRECT_DESC negotiated")]
    IndirectNotNegotiated,
    #[error("indirect descriptor with VIRTQ_DESC_F_NEXT set")]
    IndirectWithNext,
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    #[error("indirect table of {len} bytes (not a non-zero multiple of 16)")]
    BadIndirectLen { len: u32 },
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("buffer of {len} bytes at {addr:#x} is outside guest RAM")]
    OutsideRam { addr: u64, len: u32 },
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error(transparent)]
    Dma(#[from] DmaError),
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
}

/// A descriptor chain taken from the available ring: its head index and its buffers, the
/// device-readable ones first. The device sees each part as one byte stream, whatever the
/// split into descriptors (virtio's message framing rule).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<Segment>,
    pub writable: Vec<Segment>,
}

impl Chain {
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| u64::from(s.len)).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Fill `buf` from the readable stream at `offset`; returns the bytes copied (fewer at
    /// the stream's end).
    pub fn read(
        &self,
        mem: &dyn DmaMemory,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, DmaError> {
        let mut done = 0;
        for (addr, range) in pieces(&self.readable, offset, buf.len()) {
            mem.read(addr, &mut buf[range.clone()])?;
            done = range.end;
        }
        Ok(done)
    }

    /// Store `data` into the writable stream at `offset`; returns the bytes stored (fewer at
    /// the stream's end).
    pub fn write(
        &self,
        mem: &mut dyn DmaMemory,
        offset: u64,
        data: &[u8],
    ) -> Result<usize, DmaError> {
        let mut done = 0;
        for (addr, range) in pieces(&self.writable, offset, data.len()) {
            mem.write(addr, &data[range.clone()])?;
            done = range.end;
        }
        Ok(done)
    }

    /// Add a direct descriptor's buffer, enforcing readable-before-writable and RAM bounds.
    fn push(&mut self, mem: &dyn DmaMemory, d: &Descriptor) -> Result<(), QueueError> {
        if !mem.contains(d.addr, u64::from(d.len)) {
            return Err(QueueError::OutsideRam {
                addr: d.addr,
                len: d.len,
            });
        }
        let seg = Segment {
            addr: d.addr,
            len: d.len,
        };
        if d.flags & VIRTQ_DESC_F_WRITE != 0 {
            self.writable.push(seg);
        } else if !self.writable.is_empty() {
            return Err(QueueError::ReadableAfterWritable);
        } else {
            self.readable.push(seg);
        }
        Ok(())
    }
}

/// The guest addresses and byte ranges of `len` bytes at `offset` of the stream `segs`.
fn pieces(
    segs: &[Segment],
    offset: u64,
    len: usize,
) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> + '_ {
    let mut skip = offset;
    let mut done = 0usize;
    segs.iter().filter_map(move |s| {
        let seg_len = u64::from(s.len);
        if skip >= seg_len {
            skip -= seg_len;
            return None;
        }
        let n = (seg_len - skip).min((len - done) as u64) as usize;
        if n == 0 {
            return None;
        }
        let piece = (s.addr + skip, done..done + n);
        skip = 0;
        done += n;
        Some(piece)
    })
}

/// A descriptor as read from guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl Descriptor {
    fn parse(b: &[u8]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[DESC_ADDR..DESC_ADDR + 8]);
        let mut l = [0u8; 4];
        l.copy_from_slice(&b[DESC_LEN..DESC_LEN + 4]);
        Descriptor {
            addr: u64::from_le_bytes(a),
            len: u32::from_le_bytes(l),
            flags: u16_at(DESC_FLAGS),
            next: u16_at(DESC_NEXT),
        }
    }
}

/// `vring_need_event`: whether moving the index from `old` to `new` passed `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// One split virtqueue's configuration (set by the driver through the transport) and the
/// device's position in its rings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Virtqueue {
    /// The largest size the device supports (what `queue_size` reads after reset).
    pub max_size: u16,
    pub size: u16,
    pub enabled: bool,
    /// Guest addresses of the descriptor table, available ring, used ring.
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    /// The next available ring entry the device will take.
    last_avail: u16,
    /// The used ring index the device has reached.
    used_idx: u16,
    /// `used_idx` when the device last decided whether to notify.
    signalled_used: u16,
}

impl Virtqueue {
    pub fn new(max_size: u16) -> Self {
        Virtqueue {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
            last_avail: 0,
            used_idx: 0,
            signalled_used: 0,
        }
    }

    /// The state after a device reset.
    pub fn reset(&mut self) {
        *self = Virtqueue::new(self.max_size);
    }

    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    /// Check what the driver configured before the queue goes live.
    pub fn check_layout(&self) -> Result<(), QueueError> {
        if !self.size.is_power_of_two() || self.size > self.max_size {
            return Err(QueueError::BadSize {
                size: self.size,
                max: self.max_size,
            });
        }
        for (addr, align) in [
            (self.desc, DESC_ALIGN),
            (self.driver, AVAIL_ALIGN),
            (self.device, USED_ALIGN),
        ] {
            if !addr.is_multiple_of(align) {
                return Err(QueueError::Misaligned { addr, align });
            }
        }
        Ok(())
    }

    /// Take the next chain the driver made available, if any.
    pub fn pop(
        &mut self,
        mem: &dyn DmaMemory,
        indirect_ok: bool,
    ) -> Result<Option<Chain>, QueueError> {
        let idx = mem.read_u16(self.driver.wrapping_add(AVAIL_IDX))?;
        let pending = idx.wrapping_sub(self.last_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::AvailOverrun {
                last: self.last_avail,
                idx,
                size: self.size,
            });
        }
        let slot = u64::from(self.last_avail % self.size);
        let head = mem.read_u16(self.driver.wrapping_add(AVAIL_RING + 2 * slot))?;
        let chain = self.walk(mem, head, indirect_ok)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    fn read_descriptor(&self, mem: &dyn DmaMemory, index: u16) -> Result<Descriptor, QueueError> {
        let mut b = [0u8; DESC_SIZE as usize];
        mem.read(self.desc.wrapping_add(u64::from(index) * DESC_SIZE), &mut b)?;
        Ok(Descriptor::parse(&b))
    }

    /// Follow the chain at `head`: at most `size` descriptors in all, indirect ones included.
    fn walk(&self, mem: &dyn DmaMemory, head: u16, indirect_ok: bool) -> Result<Chain, QueueError> {
        let limit = self.size;
        let mut budget = limit;
        let mut chain = Chain {
            head,
            ..Chain::default()
        };
        let mut index = head;
        loop {
            if index >= self.size {
                return Err(QueueError::BadIndex {
                    index,
                    size: u64::from(self.size),
                });
            }
            let d = self.read_descriptor(mem, index)?;
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !indirect_ok {
                    return Err(QueueError::IndirectNotNegotiated);
                }
                if d.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(QueueError::IndirectWithNext);
                }
                walk_indirect(mem, &d, &mut chain, budget, head, limit)?;
                return Ok(chain);
            }
            // Only buffers count towards the limit, not the descriptor naming a table.
            if budget == 0 {
                return Err(QueueError::ChainTooLong { head, limit });
            }
            budget -= 1;
            chain.push(mem, &d)?;
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(chain);
            }
            index = d.next;
        }
    }

    /// Put a used element for the chain at `head` with `len` bytes written. The driver sees
    /// it once [`Virtqueue::publish_used`] stores the index.
    pub fn push_used(
        &mut self,
        mem: &mut dyn DmaMemory,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        let slot = u64::from(self.used_idx % self.size);
        let mut elem = [0u8; USED_ELEM_SIZE as usize];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        let at = self.device.wrapping_add(USED_RING + USED_ELEM_SIZE * slot);
        mem.write(at, &elem)?;
        self.used_idx = self.used_idx.wrapping_add(1);
        Ok(())
    }

    /// Store the used index (after the elements it covers).
    pub fn publish_used(&mut self, mem: &mut dyn DmaMemory) -> Result<(), QueueError> {
        mem.write_u16(self.device.wrapping_add(USED_IDX), self.used_idx)?;
        Ok(())
    }

    /// EVENT_IDX: ask for a notification when the driver makes the next entry available.
    pub fn set_avail_event(&mut self, mem: &mut dyn DmaMemory) -> Result<(), QueueError> {
        let at = self
            .device
            .wrapping_add(USED_RING + USED_ELEM_SIZE * u64::from(self.size));
        mem.write_u16(at, self.last_avail)?;
        Ok(())
    }

    /// Whether the elements used since the last call need a used-buffer notification.
    pub fn needs_interrupt(
        &mut self,
        mem: &dyn DmaMemory,
        event_idx: bool,
    ) -> Result<bool, QueueError> {
        let (old, new) = (self.signalled_used, self.used_idx);
        self.signalled_used = new;
        if old == new {
            return Ok(false);
        }
        if event_idx {
            let at = self
                .driver
                .wrapping_add(AVAIL_RING + 2 * u64::from(self.size));
            let used_event = mem.read_u16(at)?;
            Ok(need_event(used_event, new, old))
        } else {
            let flags = mem.read_u16(self.driver.wrapping_add(AVAIL_FLAGS))?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

/// Add the buffers of the indirect table `d` points to (at most `budget` of them). Entries
/// are read one at a time, so a table larger than the chain it holds costs nothing.
fn walk_indirect(
    mem: &dyn DmaMemory,
    d: &Descriptor,
    chain: &mut Chain,
    mut budget: u16,
    head: u16,
    limit: u16,
) -> Result<(), QueueError> {
    if d.len == 0 || !u64::from(d.len).is_multiple_of(DESC_SIZE) {
        return Err(QueueError::BadIndirectLen { len: d.len });
    }
    let count = u64::from(d.len) / DESC_SIZE;
    let mut index = 0u64;
    loop {
        if budget == 0 {
            return Err(QueueError::ChainTooLong { head, limit });
        }
        budget -= 1;
        let mut b = [0u8; DESC_SIZE as usize];
        mem.read(d.addr.wrapping_add(index * DESC_SIZE), &mut b)?;
        let e = Descriptor::parse(&b);
        if e.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(QueueError::NestedIndirect);
        }
        chain.push(mem, &e)?;
        if e.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(());
        }
        if u64::from(e.next) >= count {
            return Err(QueueError::BadIndex {
                index: e.next,
                size: count,
            });
        }
        index = u64::from(e.next);
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::dma::VecMemory;
    use super::*;

    #[test]
    fn need_event_matches_linux() {
        // vring_need_event(event, new, old): notify iff event is in [old, new).
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(5, 8, 3));
        assert!(!need_event(8, 8, 3));
        assert!(need_event(0xffff, 2, 0xfffe), "wraps");
        assert!(!need_event(3, 2, 0xfffe));
    }

    #[test]
    fn pieces_split_a_stream() {
        let segs = [
            Segment {
                addr: 0x100,
                len: 4,
            },
            Segment {
                addr: 0x200,
                len: 0,
            },
            Segment {
                addr: 0x300,
                len: 8,
            },
        ];
        let p: Vec<_> = pieces(&segs, 2, 6).collect();
        assert_eq!(p, vec![(0x102, 0..2), (0x300, 2..6)]);
        let p: Vec<_> = pieces(&segs, 11, 4).collect();
        assert_eq!(p, vec![(0x307, 0..1)]);
        assert_eq!(pieces(&segs, 12, 4).count(), 0);
    }

    #[test]
    fn layout_checks() {
        let mut q = Virtqueue::new(256);
        assert_eq!(q.check_layout(), Ok(()));
        q.size = 100;
        assert_eq!(
            q.check_layout(),
            Err(QueueError::BadSize {
                size: 100,
                max: 256
            })
        );
        q.size = 512;
        assert!(q.check_layout().is_err());
        q.size = 0;
        assert!(q.check_layout().is_err());
        q.size = 16;
        q.device = 0x1002;
        assert_eq!(
            q.check_layout(),
            Err(QueueError::Misaligned {
                addr: 0x1002,
                align: 4
            })
        );
    }

    #[test]
    fn chain_streams_read_and_write_across_buffers() {
        let mut mem = VecMemory::new(0x1000);
        mem.poke(0x100, &[1, 2, 3]);
        mem.poke(0x200, &[4, 5, 6, 7]);
        let chain = Chain {
            head: 0,
            readable: vec![
                Segment {
                    addr: 0x100,
                    len: 3,
                },
                Segment {
                    addr: 0x200,
                    len: 4,
                },
            ],
            writable: vec![
                Segment {
                    addr: 0x300,
                    len: 2,
                },
                Segment {
                    addr: 0x400,
                    len: 2,
                },
            ],
        };
        let mut buf = [0u8; 8];
        assert_eq!(chain.read(&mem, 1, &mut buf), Ok(6));
        assert_eq!(buf[..6], [2, 3, 4, 5, 6, 7]);
        assert_eq!(chain.write(&mut mem, 1, &[9, 9, 9, 9]), Ok(3));
        assert_eq!(mem.writes, vec![(0x301, vec![9]), (0x400, vec![9, 9])]);
    }

    fn desc(mem: &mut VecMemory, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.poke(table + 16 * u64::from(i), &d);
    }

    /// A queue of 4 at 0x1000 (descriptors), 0x2000 (available), 0x3000 (used) with head 0
    /// made available.
    fn queue(mem: &mut VecMemory) -> Virtqueue {
        let mut q = Virtqueue::new(4);
        q.desc = 0x1000;
        q.driver = 0x2000;
        q.device = 0x3000;
        q.enabled = true;
        mem.poke(0x2000 + AVAIL_IDX, &1u16.to_le_bytes());
        q
    }

    #[test]
    fn loops_end_as_errors() {
        let mut mem = VecMemory::new(0x10000);
        let mut q = queue(&mut mem);
        desc(&mut mem, 0x1000, 0, 0x8000, 4, VIRTQ_DESC_F_NEXT, 1);
        desc(&mut mem, 0x1000, 1, 0x8000, 4, VIRTQ_DESC_F_NEXT, 0);
        assert_eq!(
            q.pop(&mem, true),
            Err(QueueError::ChainTooLong { head: 0, limit: 4 })
        );
        assert_eq!(q.last_avail(), 0, "nothing taken");
        // A loop inside an indirect table.
        desc(&mut mem, 0x1000, 0, 0x4000, 32, VIRTQ_DESC_F_INDIRECT, 0);
        desc(&mut mem, 0x4000, 0, 0x8000, 4, VIRTQ_DESC_F_NEXT, 1);
        desc(&mut mem, 0x4000, 1, 0x8000, 4, VIRTQ_DESC_F_NEXT, 0);
        assert_eq!(
            q.pop(&mem, true),
            Err(QueueError::ChainTooLong { head: 0, limit: 4 })
        );
        // Indirect descriptors need the feature, and no NEXT beside INDIRECT.
        assert_eq!(q.pop(&mem, false), Err(QueueError::IndirectNotNegotiated));
        desc(
            &mut mem,
            0x1000,
            0,
            0x4000,
            32,
            VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT,
            1,
        );
        assert_eq!(q.pop(&mem, true), Err(QueueError::IndirectWithNext));
        desc(&mut mem, 0x1000, 0, 0x4000, 24, VIRTQ_DESC_F_INDIRECT, 0);
        assert_eq!(
            q.pop(&mem, true),
            Err(QueueError::BadIndirectLen { len: 24 })
        );
        // The table outside RAM.
        desc(&mut mem, 0x1000, 0, 0xfff8, 32, VIRTQ_DESC_F_INDIRECT, 0);
        assert!(matches!(q.pop(&mem, true), Err(QueueError::Dma(_))));
    }

    #[test]
    fn a_full_indirect_table_and_direct_prefix() {
        let mut mem = VecMemory::new(0x10000);
        let mut q = queue(&mut mem);
        // One direct buffer, then a table of 3: four buffers in a queue of four.
        desc(&mut mem, 0x1000, 0, 0x8000, 16, VIRTQ_DESC_F_NEXT, 2);
        desc(
            &mut mem,
            0x1000,
            2,
            0x4000,
            48,
            VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE,
            0,
        );
        desc(&mut mem, 0x4000, 0, 0x8100, 8, VIRTQ_DESC_F_NEXT, 2);
        desc(
            &mut mem,
            0x4000,
            2,
            0x8200,
            8,
            VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
            1,
        );
        desc(&mut mem, 0x4000, 1, 0x8300, 1, VIRTQ_DESC_F_WRITE, 0);
        let chain = q.pop(&mem, true).unwrap().unwrap();
        assert_eq!(chain.head, 0);
        assert_eq!(
            chain.readable,
            vec![
                Segment {
                    addr: 0x8000,
                    len: 16
                },
                Segment {
                    addr: 0x8100,
                    len: 8
                }
            ]
        );
        assert_eq!(
            chain.writable,
            vec![
                Segment {
                    addr: 0x8200,
                    len: 8
                },
                Segment {
                    addr: 0x8300,
                    len: 1
                }
            ]
        );
        assert_eq!(q.pop(&mem, true), Ok(None));
        q.push_used(&mut mem, chain.head, 9).unwrap();
        q.publish_used(&mut mem).unwrap();
        q.set_avail_event(&mut mem).unwrap();
        assert_eq!(mem.peek(0x3000 + USED_RING, 8), &[0, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(mem.peek(0x3000 + USED_IDX, 2), &[1, 0]);
        assert_eq!(
            mem.peek(0x3000 + USED_RING + 8 * 4, 2),
            &[1, 0],
            "avail_event"
        );
        assert_eq!(q.needs_interrupt(&mem, false), Ok(true));
        assert_eq!(q.needs_interrupt(&mem, false), Ok(false), "nothing new");
    }
}
