//! [`BlockId`], the name of a decoded block: its index in the engine's block table. The
//! jump cache stores it (in a field compiled code reads past, hence 32 bits), and the
//! background compiler tags its work with it, so one type travels through all three.

/// A decoded block: its index in the engine's block table.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BlockId(u32);

impl BlockId {
    /// No block: the id of an empty jump-cache entry.
    pub(crate) const NONE: BlockId = BlockId(u32::MAX);

    /// The id of the block at `index` in the block table.
    pub(crate) fn from_index(index: usize) -> BlockId {
        match u32::try_from(index) {
            Ok(id) if id != Self::NONE.0 => BlockId(id),
            _ => panic!("block table full: index {index} has no BlockId"),
        }
    }

    /// The block's index in the block table.
    #[inline]
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}
