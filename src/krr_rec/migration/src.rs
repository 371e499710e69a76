//! A big-endian reader over a seekable migration stream that knows its offset and the
//! stream's length, so that no length field can make it allocate more than the file holds.

use crate::krr_rec::error::{Ctx, KrrError};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};

pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

pub struct Src<'r> {
    inner: BufReader<&'r mut dyn ReadSeek>,
    pos: u64,
    len: u64,
    pub ctx: Ctx,
}

impl<'r> Src<'r> {
    pub fn new(r: &'r mut dyn ReadSeek, ctx: Ctx) -> Result<Src<'r>, KrrError> {
        let len = r.seek(SeekFrom::End(0)).map_err(|e| ctx.io(e))?;
        r.seek(SeekFrom::Start(0)).map_err(|e| ctx.io(e))?;
        Ok(Src {
            inner: BufReader::with_capacity(1 << 16, r),
            pos: 0,
            len,
            ctx,
        })
    }
    pub fn offset(&self) -> u64 {
        self.pos
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn remaining(&self) -> u64 {
        self.len - self.pos
    }
    fn need(&self, n: u64, what: &str) -> Result<(), KrrError> {
        if self.remaining() < n {
            Err(self.ctx.truncated(self.pos, what, n, self.remaining()))
        } else {
            Ok(())
        }
    }
    /// Fill `buf` from the stream.
    pub fn read_into(&mut self, buf: &mut [u8], what: &str) -> Result<(), KrrError> {
        self.need(buf.len() as u64, what)?;
        self.inner.read_exact(buf).map_err(|e| self.ctx.io(e))?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    /// `n` bytes, allocated only once the stream is known to hold them.
    pub fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, KrrError> {
        self.need(n, what)?;
        let mut v = vec![0u8; n as usize];
        self.read_into(&mut v, what)?;
        Ok(v)
    }
    pub fn skip(&mut self, n: u64, what: &str) -> Result<(), KrrError> {
        self.need(n, what)?;
        let n = i64::try_from(n).map_err(|_| self.ctx.invalid(self.pos, "skip too long"))?;
        self.inner.seek_relative(n).map_err(|e| self.ctx.io(e))?;
        self.pos += n as u64;
        Ok(())
    }
    /// Go to an absolute offset (within the stream).
    pub fn seek(&mut self, to: u64) -> Result<(), KrrError> {
        if to > self.len {
            return Err(self
                .ctx
                .invalid(self.pos, format!("seek past the end to {to}")));
        }
        self.inner
            .seek(SeekFrom::Start(to))
            .map_err(|e| self.ctx.io(e))?;
        self.pos = to;
        Ok(())
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], KrrError> {
        let mut a = [0u8; N];
        self.read_into(&mut a, what)?;
        Ok(a)
    }
    pub fn u8(&mut self, what: &str) -> Result<u8, KrrError> {
        Ok(self.arr::<1>(what)?[0])
    }
    pub fn peek_u8(&mut self) -> Result<Option<u8>, KrrError> {
        if self.remaining() == 0 {
            return Ok(None);
        }
        let buf = self.inner.fill_buf().map_err(|e| self.ctx.io(e))?;
        Ok(buf.first().copied())
    }
    pub fn be16(&mut self, what: &str) -> Result<u16, KrrError> {
        Ok(u16::from_be_bytes(self.arr(what)?))
    }
    pub fn be32(&mut self, what: &str) -> Result<u32, KrrError> {
        Ok(u32::from_be_bytes(self.arr(what)?))
    }
    pub fn be64(&mut self, what: &str) -> Result<u64, KrrError> {
        Ok(u64::from_be_bytes(self.arr(what)?))
    }
    pub fn be64s<const N: usize>(&mut self, what: &str) -> Result<[u64; N], KrrError> {
        let mut a = [0u64; N];
        for v in a.iter_mut() {
            *v = self.be64(what)?;
        }
        Ok(a)
    }
    pub fn be32s<const N: usize>(&mut self, what: &str) -> Result<[u32; N], KrrError> {
        let mut a = [0u32; N];
        for v in a.iter_mut() {
            *v = self.be32(what)?;
        }
        Ok(a)
    }
    /// A string with a one-byte length (section and block names).
    pub fn str8(&mut self, what: &str) -> Result<String, KrrError> {
        let at = self.pos;
        let n = self.u8(what)?;
        let b = self.bytes(n as u64, what)?;
        String::from_utf8(b).map_err(|_| self.ctx.invalid(at, format!("{what} is not UTF-8")))
    }
}
