//! `checkpoint-<cpu>` files (krr-spec.md 1.5): 344-byte register checkpoints, back to back.

use super::error::{Ctx, KrrError};
use super::layout::{self as l, checkpoint as o};
use super::le::{Le, Rec};
use std::path::Path;

/// A segment as QEMU's `SegmentCache` holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointSeg {
    pub selector: u32,
    pub base: u64,
    pub limit: u32,
    pub flags: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub inst_cnt: u64,
    pub rip: u64,
    /// QEMU order: RAX RCX RDX RBX RSP RBP RSI RDI R8..R15.
    pub regs: [u64; 16],
    /// CR0..CR4.
    pub cr: [u64; 5],
    /// ES CS SS DS FS GS.
    pub segs: [CheckpointSeg; 6],
    pub eflags: u64,
}

pub fn parse(bytes: &[u8], file: &Path) -> Result<Vec<Checkpoint>, KrrError> {
    let mut ctx = Ctx::new(file);
    let mut r = Le::new(bytes, 0);
    let mut out = Vec::new();
    while !r.at_end() {
        ctx.index = Some(out.len() as u64);
        let c = Rec(r.take(l::CHECKPOINT_SIZE as u64, "a checkpoint record", &ctx)?);
        let segs = std::array::from_fn(|i| {
            let b = o::SEGS + i * o::SEG_SIZE;
            CheckpointSeg {
                selector: c.u32(b),
                base: c.u64(b + 8),
                limit: c.u32(b + 16),
                flags: c.u32(b + 20),
            }
        });
        out.push(Checkpoint {
            inst_cnt: c.u64(o::INST_CNT),
            rip: c.u64(o::RIP),
            regs: c.u64s(o::REGS),
            cr: c.u64s(o::CR),
            segs,
            eflags: c.u64(o::EFLAGS),
        });
    }
    Ok(out)
}

pub fn open(path: &Path) -> Result<Vec<Checkpoint>, KrrError> {
    let bytes = std::fs::read(path).map_err(|e| Ctx::new(path).io(e))?;
    parse(&bytes, path)
}
