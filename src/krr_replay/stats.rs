//! KRR's `=== Event Stats ===` block, printed at the end of a replay as KRR's users know it:
//! the names and order of KRR-INTERFACE.md's example, counted as KRR's replayer counts
//! (krr-spec 6): events *loaded*, not replayed; RDSEED counted under GFU (its own line stays
//! 0) and MMIO under IO Input, as KRR's load path does; the total is every counter but Inst
//! Sync (DMA_DONE and RELEASE included though not printed); DMA Buf Size and Time(s) are
//! record-side figures that KRR prints as 0 in replay.

use crate::krr_rec::layout::ty;

/// The block for loaded event counts `by_type` (indexed by type number).
pub fn event_stats(by_type: &[u64; 15]) -> String {
    let n = |t: u32| by_type[t as usize];
    let gfu = n(ty::GFU) + n(ty::RDSEED);
    let io_input = n(ty::IO_IN) + n(ty::MMIO);
    let total: u64 = (0..15u32)
        .filter(|&t| t != ty::INST_SYNC)
        .map(|t| by_type[t as usize])
        .sum();
    let lines = [
        ("Interrupt", n(ty::INTERRUPT)),
        ("Syscall", n(ty::SYSCALL)),
        ("Exception", n(ty::EXCEPTION)),
        ("CFU", n(ty::CFU)),
        ("GFU", gfu),
        ("Random", n(ty::RANDOM)),
        ("IO Input", io_input),
        ("RDTSC", n(ty::RDTSC)),
        ("Strnlen", n(ty::STRNLEN)),
        ("RDSEED", 0),
        ("PTE", n(ty::PTE)),
        ("Inst Sync", n(ty::INST_SYNC)),
        ("DMA Buf Size", 0),
        ("Total Replay Events", total),
    ];
    let mut out = String::from("=== Event Stats ===\n");
    for (name, v) in lines {
        out.push_str(&format!("{name}: {v}\n"));
    }
    out.push_str("Time(s): 0.00\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_as_krr_counts() {
        let mut c = [0u64; 15];
        c[ty::INTERRUPT as usize] = 3;
        c[ty::SYSCALL as usize] = 5;
        c[ty::GFU as usize] = 2;
        c[ty::RDSEED as usize] = 1;
        c[ty::IO_IN as usize] = 4;
        c[ty::MMIO as usize] = 1;
        c[ty::INST_SYNC as usize] = 7;
        c[ty::DMA_DONE as usize] = 1;
        let s = event_stats(&c);
        let want = "=== Event Stats ===\nInterrupt: 3\nSyscall: 5\nException: 0\nCFU: 0\nGFU: 3\n\
                    Random: 0\nIO Input: 5\nRDTSC: 0\nStrnlen: 0\nRDSEED: 0\nPTE: 0\n\
                    Inst Sync: 7\nDMA Buf Size: 0\nTotal Replay Events: 17\nTime(s): 0.00\n";
        assert_eq!(s, want);
    }
}
