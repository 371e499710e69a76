//! Little-endian fields of KRR's raw C structs, read from a byte slice at absolute offsets
//! of a file (`base` + position), with located errors.

use super::error::{Ctx, KrrError};

/// A cursor over (part of) a file held in memory.
pub struct Le<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The file offset of `buf[0]`.
    base: u64,
}

impl<'a> Le<'a> {
    pub fn new(buf: &'a [u8], base: u64) -> Le<'a> {
        Le { buf, pos: 0, base }
    }
    /// The file offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
    /// The next `n` bytes, or a truncation error naming `what`.
    pub fn take(&mut self, n: u64, what: &str, ctx: &Ctx) -> Result<&'a [u8], KrrError> {
        if (self.remaining() as u64) < n {
            return Err(ctx.truncated(self.offset(), what, n, self.remaining() as u64));
        }
        let n = n as usize;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
}

/// Fixed-layout field access inside one record (bounds already checked by `take`).
pub struct Rec<'a>(pub &'a [u8]);

impl Rec<'_> {
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
    pub fn i32(&self, off: usize) -> i32 {
        self.u32(off) as i32
    }
    pub fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.0[off..off + 8].try_into().expect("8 bytes"))
    }
    pub fn u64s<const N: usize>(&self, off: usize) -> [u64; N] {
        std::array::from_fn(|i| self.u64(off + 8 * i))
    }
}
