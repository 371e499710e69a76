//! A 256-bit vector set: the layout of IRR, ISR and TMR (bit n of register n / 32).

/// One bit per interrupt vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VectorSet([u32; 8]);

impl VectorSet {
    pub fn get(&self, vector: u8) -> bool {
        self.0[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
    }

    pub fn set(&mut self, vector: u8) {
        self.0[usize::from(vector >> 5)] |= 1 << (vector & 31);
    }

    pub fn clear(&mut self, vector: u8) {
        self.0[usize::from(vector >> 5)] &= !(1 << (vector & 31));
    }

    /// The highest vector in the set (the highest priority).
    pub fn highest(&self) -> Option<u8> {
        (0..8u8)
            .rev()
            .find(|&i| self.0[usize::from(i)] != 0)
            .map(|i| i * 32 + (31 - self.0[usize::from(i)].leading_zeros() as u8))
    }

    /// The 32-bit register holding vectors `32 * index` to `32 * index + 31`.
    pub fn word(&self, index: usize) -> u32 {
        self.0[index]
    }

    /// All eight registers.
    pub fn words(&self) -> [u32; 8] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_highest() {
        let mut s = VectorSet::default();
        assert_eq!(s.highest(), None);
        for v in [0x20, 0x31, 0xff, 0x10] {
            s.set(v);
        }
        assert_eq!(s.highest(), Some(0xff));
        s.clear(0xff);
        assert_eq!(s.highest(), Some(0x31));
        assert!(s.get(0x20) && !s.get(0x21));
        assert_eq!(s.word(1), 1 << 0 | 1 << 17);
        assert_eq!(s.words()[0], 1 << 16);
    }
}
