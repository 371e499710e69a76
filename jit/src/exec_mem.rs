//! Executable memory for small host stubs (one host instruction and `ret`): chunks mapped
//! with `memmap2`, filled while writable and then made executable again. Callers keep an
//! [`ExecArena`] behind a lock and run stubs only while no one writes (`place` under the
//! write lock, calls under the read lock).

use memmap2::{Mmap, MmapMut};

const CHUNK: usize = 64 * 1024;
const STUB_ALIGN: usize = 32;

#[derive(Default)]
pub struct ExecArena {
    /// Executable chunks; the last one may have room (`used` bytes taken). `None` only while
    /// it is being written.
    chunks: Vec<Option<Mmap>>,
    used: usize,
}

impl ExecArena {
    /// Copy `bytes` into executable memory; returns their address. The chunk written to is
    /// not executable meanwhile: the caller holds its lock's write side, and stubs run only
    /// under the read side, so no thread executes from it until it is executable again.
    pub fn place(&mut self, bytes: &[u8]) -> Option<usize> {
        let len = bytes.len().div_ceil(STUB_ALIGN) * STUB_ALIGN;
        if len > CHUNK {
            return None;
        }
        if self.chunks.is_empty() || self.used + len > CHUNK {
            let m = MmapMut::map_anon(CHUNK).ok()?;
            self.chunks.push(Some(m.make_exec().ok()?));
            self.used = 0;
        }
        let last = self.chunks.last_mut()?;
        let exec = last.take()?;
        let mut m = exec.make_mut().ok()?;
        m[self.used..self.used + bytes.len()].copy_from_slice(bytes);
        let exec = m.make_exec().ok()?;
        let addr = exec.as_ptr() as usize + self.used;
        *last = Some(exec);
        self.used += len;
        Some(addr)
    }
}
