//! DMA that KRR places by instruction count rather than by an event (krr-spec 3.9, 1.4):
//! e1000 receive data (`kernel_rr_network.log`) and NVMe completions (`dev_type` 1 entries of
//! a DMA log). Each entry is written to guest memory when KRR's `try_replay_dma` would write
//! it: on its own vCPU at a count (e1000: `inst_cnt − 1`, NVMe: `inst_cnt` or later), or, for
//! entries without a count or of another vCPU, once enough events have been replayed
//! (`follow_num`, which KRR compares with its absolute event number although the recorder
//! counted from the last ring rotation: open question 11, followed as KRR does).
//! (IDE's entries go with DMA_DONE events: `bus.rs`.)

use crate::krr_rec::dma::DmaEntry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    E1000,
    Nvme,
}

#[derive(Clone)]
pub struct Stream {
    pub kind: Kind,
    entries: std::sync::Arc<Vec<DmaEntry>>,
    next: usize,
    pub applied: u64,
    /// The KRR count at which each entry was written, in order (for reports and tests).
    pub placed: Vec<u64>,
}

impl Stream {
    pub fn new(kind: Kind, entries: Vec<DmaEntry>) -> Stream {
        Stream {
            kind,
            entries: std::sync::Arc::new(entries),
            next: 0,
            applied: 0,
            placed: Vec::new(),
        }
    }

    pub fn remaining(&self) -> usize {
        self.entries.len() - self.next
    }

    /// Is the next entry due for vCPU `vcpu` at KRR count `count` with `replayed` events
    /// popped (`user`: the vCPU is at a user-mode boundary)?
    fn due(&self, vcpu: usize, count: u64, replayed: u64, user: bool) -> bool {
        let Some(e) = self.entries.get(self.next) else {
            return false;
        };
        let mine = usize::try_from(e.cpu_id).is_ok_and(|c| c == vcpu);
        match self.kind {
            Kind::E1000 => {
                (mine && e.inst_cnt > 0 && count == e.inst_cnt - 1)
                    || (e.inst_cnt == 0 && replayed == 0)
                    || (user && e.inst_cnt == 0 && replayed + 1 >= e.follow_num)
                    || (!mine && replayed + 1 >= e.follow_num)
            }
            Kind::Nvme => {
                (mine && e.inst_cnt > 0 && count >= e.inst_cnt)
                    || (user && e.inst_cnt == 0 && replayed >= e.follow_num)
                    || (!mine && replayed >= e.follow_num)
            }
        }
    }

    /// The writes of every entry due now, in order.
    pub fn take_due(
        &mut self,
        vcpu: usize,
        count: u64,
        replayed: u64,
        user: bool,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while self.due(vcpu, count, replayed, user) {
            let e = &self.entries[self.next];
            out.extend(e.sgs.iter().map(|s| (s.addr, s.data.clone())));
            self.next += 1;
            self.applied += 1;
            self.placed.push(count);
        }
        out
    }

    /// The KRR count at which the next entry falls due on vCPU `vcpu`, if it is placed by
    /// count there.
    pub fn target(&self, vcpu: usize) -> Option<u64> {
        let e = self.entries.get(self.next)?;
        let mine = usize::try_from(e.cpu_id).is_ok_and(|c| c == vcpu);
        (mine && e.inst_cnt > 0).then(|| match self.kind {
            Kind::E1000 => e.inst_cnt - 1,
            Kind::Nvme => e.inst_cnt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::krr_rec::dma::DmaSg;

    fn entry(inst_cnt: u64, follow_num: u64, cpu_id: i32, byte: u8) -> DmaEntry {
        DmaEntry {
            inst_cnt,
            rip: 0,
            follow_num,
            cpu_id,
            owner_id: 0,
            dev_type: 2,
            dev_index: 0,
            sgs: vec![DmaSg {
                addr: 0x1000 * byte as u64,
                data: vec![byte; 16],
            }],
            offset: 0,
        }
    }

    #[test]
    fn e1000_and_nvme_placement_rules() {
        let mut s = Stream::new(Kind::E1000, vec![entry(100, 5, 0, 1), entry(0, 9, 1, 2)]);
        assert_eq!(s.target(0), Some(99));
        assert!(s.take_due(0, 98, 3, false).is_empty());
        assert_eq!(s.take_due(0, 99, 3, false), vec![(0x1000, vec![1; 16])]);
        // The next is vCPU 1's, due once 8 events have been replayed.
        assert_eq!(s.target(0), None);
        assert!(s.take_due(0, 150, 7, false).is_empty());
        assert_eq!(s.take_due(0, 150, 8, false).len(), 1);
        assert_eq!((s.remaining(), s.applied), (0, 2));
        assert_eq!(s.placed, [99, 150]);

        let mut n = Stream::new(Kind::Nvme, vec![entry(50, 0, 0, 3), entry(0, 4, 0, 4)]);
        assert_eq!(n.target(0), Some(50));
        // NVMe: at or after its count (a count passed between checks still places it).
        assert_eq!(n.take_due(0, 52, 0, false).len(), 1);
        assert!(n.take_due(0, 60, 4, false).is_empty(), "not in user mode");
        assert_eq!(n.take_due(0, 60, 4, true).len(), 1);
    }
}
