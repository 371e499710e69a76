//! Guest memory as a bus-mastering device sees it.
//!
//! A device that reads or writes guest RAM on its own (virtio's rings and buffers) does it
//! through [`DmaMemory`], which the machine implements over its RAM. Only writes change the
//! guest's state, so the machine logs each [`DmaMemory::write`] as one DMA Write trace event
//! (address and bytes) and replay needs nothing else; reads are not logged (replay has the same
//! RAM). The machine must also report each write to the engine (`Engine::notify_write`):
//! the bytes may overwrite translated code.
//!
//! Accesses never wrap and never reach MMIO: a range that is not wholly guest RAM fails with
//! [`DmaError`] and changes nothing.

/// A DMA access to a range that is not wholly guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DMA access of {len} bytes at {phys:#x} is outside guest RAM")]
pub struct DmaError {
    pub phys: u64,
    pub len: u64,
}

/// Guest physical memory for device DMA. See the module documentation.
pub trait DmaMemory {
    /// Whether `[phys, phys + len)` is wholly guest RAM (an empty range at any address is).
    fn contains(&self, phys: u64, len: u64) -> bool;
    /// Fill `buf` from guest RAM at `phys`.
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Store `data` into guest RAM at `phys`: all of it or, on error, nothing.
    fn write(&mut self, phys: u64, data: &[u8]) -> Result<(), DmaError>;
}

/// Little-endian field helpers over [`DmaMemory`].
pub trait DmaMemoryExt: DmaMemory {
    fn read_u16(&self, phys: u64) -> Result<u16, DmaError> {
        let mut b = [0u8; 2];
        self.read(phys, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn read_u32(&self, phys: u64) -> Result<u32, DmaError> {
        let mut b = [0u8; 4];
        self.read(phys, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn read_u64(&self, phys: u64) -> Result<u64, DmaError> {
        let mut b = [0u8; 8];
        self.read(phys, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn write_u16(&mut self, phys: u64, value: u16) -> Result<(), DmaError> {
        self.write(phys, &value.to_le_bytes())
    }
}

impl<T: DmaMemory + ?Sized> DmaMemoryExt for T {}

/// Guest RAM as a flat byte vector from physical address 0, recording every write in order
/// (what the machine would log as DMA Write events). For tests.
#[cfg(test)]
#[derive(Clone, Debug)]
pub struct VecMemory {
    pub bytes: Vec<u8>,
    pub writes: Vec<(u64, Vec<u8>)>,
}

#[cfg(test)]
impl VecMemory {
    pub fn new(size: usize) -> Self {
        VecMemory {
            bytes: vec![0; size],
            writes: Vec::new(),
        }
    }

    fn range(&self, phys: u64, len: usize) -> Result<std::ops::Range<usize>, DmaError> {
        let err = DmaError {
            phys,
            len: len as u64,
        };
        let start = usize::try_from(phys).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.bytes.len() {
            return Err(err);
        }
        Ok(start..end)
    }

    /// Store without recording (the test's own setup of rings and buffers).
    pub fn poke(&mut self, phys: u64, data: &[u8]) {
        let r = self.range(phys, data.len()).expect("poke inside RAM");
        self.bytes[r].copy_from_slice(data);
    }

    pub fn peek(&self, phys: u64, len: usize) -> &[u8] {
        let r = self.range(phys, len).expect("peek inside RAM");
        &self.bytes[r]
    }
}

#[cfg(test)]
impl DmaMemory for VecMemory {
    fn contains(&self, phys: u64, len: u64) -> bool {
        usize::try_from(len).is_ok_and(|len| self.range(phys, len).is_ok())
    }

    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = self.range(phys, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write(&mut self, phys: u64, data: &[u8]) -> Result<(), DmaError> {
        let r = self.range(phys, data.len())?;
        self.bytes[r].copy_from_slice(data);
        self.writes.push((phys, data.to_vec()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_memory_bounds() {
        let mut m = VecMemory::new(0x1000);
        assert!(m.contains(0xff0, 0x10));
        assert!(!m.contains(0xff0, 0x11));
        assert!(!m.contains(u64::MAX, 2));
        assert!(m.write(0xfff, &[1, 2]).is_err());
        assert!(m.writes.is_empty(), "a failed write changes nothing");
        m.write_u16(0x10, 0xbeef).unwrap();
        assert_eq!(m.read_u16(0x10).unwrap(), 0xbeef);
        assert_eq!(m.writes, vec![(0x10, vec![0xef, 0xbe])]);
        let mut b = [0u8; 4];
        assert_eq!(
            m.read(u64::MAX - 1, &mut b),
            Err(DmaError {
                phys: u64::MAX - 1,
                len: 4
            })
        );
    }
}
