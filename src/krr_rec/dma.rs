//! The DMA logs (krr-spec.md 1.4): `kernel_rr_dma.log` / `kernel_rr_dma-<devfn>.log` (IDE,
//! NVMe) and `kernel_rr_network.log` (e1000) share one container: entries to the end of the
//! file, each a 96-byte `rr_dma_entry` and `len` scatter-gather records (48-byte `rr_sg_data`
//! and `sg.len` data bytes). No header, no count.

use super::error::{Ctx, KrrError};
use super::layout::{self as l};
use super::le::{Le, Rec};
use std::path::Path;

/// One scatter-gather record: data the device wrote at a guest-physical address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaSg {
    pub addr: u64,
    pub data: Vec<u8>,
}

/// One DMA entry. For IDE only the SG list is meaningful (the k-th entry goes with the k-th
/// DMA_DONE); NVMe and e1000 entries also carry the placement fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaEntry {
    pub inst_cnt: u64,
    pub rip: u64,
    pub follow_num: u64,
    pub cpu_id: i32,
    pub owner_id: i32,
    pub dev_type: i32,
    pub dev_index: i32,
    pub sgs: Vec<DmaSg>,
    /// The file offset of the entry.
    pub offset: u64,
}

impl DmaEntry {
    pub fn bytes(&self) -> u64 {
        self.sgs.iter().map(|s| s.data.len() as u64).sum()
    }
}

/// A read DMA or network log.
#[derive(Debug, Clone, Default)]
pub struct DmaLog {
    pub entries: Vec<DmaEntry>,
    pub file_len: u64,
}

impl DmaLog {
    pub fn open(path: &Path) -> Result<DmaLog, KrrError> {
        let ctx = Ctx::new(path);
        let bytes = std::fs::read(path).map_err(|e| ctx.io(e))?;
        DmaLog::parse(&bytes, path)
    }

    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(DmaEntry::bytes).sum()
    }

    pub fn parse(bytes: &[u8], file: &Path) -> Result<DmaLog, KrrError> {
        let mut ctx = Ctx::new(file);
        let mut r = Le::new(bytes, 0);
        let mut entries = Vec::new();
        while !r.at_end() {
            ctx.index = Some(entries.len() as u64);
            let offset = r.offset();
            let e = Rec(r.take(l::DMA_ENTRY_SIZE as u64, "a DMA entry", &ctx)?);
            use l::dma_entry as o;
            let n = e.i32(o::LEN);
            if n < 0 {
                return Err(ctx.invalid(offset, format!("negative SG count {n}")));
            }
            let mut sgs = Vec::new();
            for k in 0..n {
                let s = Rec(r.take(l::SG_SIZE as u64, &format!("SG record {k}"), &ctx)?);
                let len = s.u64(l::sg::LEN);
                let data = r.take(len, &format!("the data of SG record {k}"), &ctx)?;
                sgs.push(DmaSg {
                    addr: s.u64(l::sg::ADDR),
                    data: data.to_vec(),
                });
            }
            entries.push(DmaEntry {
                inst_cnt: e.u64(o::INST_CNT),
                rip: e.u64(o::RIP),
                follow_num: e.u64(o::FOLLOW_NUM),
                cpu_id: e.i32(o::CPU_ID),
                owner_id: e.i32(o::OWNER_ID),
                dev_type: e.i32(o::DEV_TYPE),
                dev_index: e.i32(o::DEV_INDEX),
                sgs,
                offset,
            });
        }
        Ok(DmaLog {
            entries,
            file_len: bytes.len() as u64,
        })
    }
}
