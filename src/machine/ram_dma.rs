//! Guest RAM as bus-mastering PCI functions see it: [`DmaMemory`] over the core's memory,
//! keeping every write so the machine can log it (one DMA Write trace event each: replay
//! then needs no device) and tell the engine, whose translated code the bytes may overwrite.

use super::devices::dma::{DmaError, DmaMemory};
use krr_runtime::GuestMemory;

pub struct RamDma<'a> {
    mem: &'a mut GuestMemory,
    /// Every write in order: physical address and bytes.
    pub writes: Vec<(u64, Vec<u8>)>,
}

impl<'a> RamDma<'a> {
    pub fn new(mem: &'a mut GuestMemory) -> Self {
        RamDma {
            mem,
            writes: Vec::new(),
        }
    }

    fn error(phys: u64, len: usize) -> DmaError {
        DmaError {
            phys,
            len: len as u64,
        }
    }
}

impl DmaMemory for RamDma<'_> {
    fn contains(&self, phys: u64, len: u64) -> bool {
        len == 0
            || phys
                .checked_add(len)
                .is_some_and(|end| end <= self.mem.size())
    }

    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        if !self.contains(phys, buf.len() as u64) {
            return Err(Self::error(phys, buf.len()));
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.mem
            .read(phys, buf)
            .map_err(|_| Self::error(phys, buf.len()))
    }

    fn write(&mut self, phys: u64, data: &[u8]) -> Result<(), DmaError> {
        if !self.contains(phys, data.len() as u64) {
            return Err(Self::error(phys, data.len()));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.mem
            .write(phys, data)
            .map_err(|_| Self::error(phys, data.len()))?;
        self.writes.push((phys, data.to_vec()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reach_ram_and_are_kept_in_order() {
        let mut mem = GuestMemory::new(1 << 20).expect("memory");
        let mut dma = RamDma::new(&mut mem);
        dma.write(0x1000, &[1, 2, 3]).expect("in RAM");
        dma.write(0x10, &[9]).expect("in RAM");
        assert_eq!(dma.writes, vec![(0x1000, vec![1, 2, 3]), (0x10, vec![9])]);
        let mut b = [0u8; 3];
        dma.read(0x1000, &mut b).expect("in RAM");
        assert_eq!(b, [1, 2, 3]);
        assert_eq!(mem.slice(0x10, 1).expect("in RAM"), &[9]);
    }

    #[test]
    fn ranges_outside_ram_fail_and_change_nothing() {
        let mut mem = GuestMemory::new(1 << 20).expect("memory");
        let mut dma = RamDma::new(&mut mem);
        assert!(dma.write((1 << 20) - 1, &[1, 2]).is_err());
        assert!(dma.write(u64::MAX, &[1]).is_err());
        let mut b = [0u8; 2];
        assert!(dma.read((1 << 20) - 1, &mut b).is_err());
        assert!(dma.contains(1 << 20, 0));
        assert!(dma.writes.is_empty());
        assert_eq!(mem.slice((1 << 20) - 1, 1).expect("in RAM"), &[0]);
    }
}
