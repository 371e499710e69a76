//! Block formation: decode guest instructions with iced-x86 from a start address until a
//! control transfer, a page boundary, the size cap, or (in single-step mode) one instruction.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};
use krr_runtime::{mmu, CpuState};

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// A decoded block, cached for the interpreter and the compiler alike.
pub struct Block {
    /// Linear address of the first instruction.
    pub start: u64,
    /// Physical address of the first instruction.
    pub phys: u64,
    pub mode: u32,
    pub insns: Vec<Instruction>,
    /// Bytes covered, for invalidation.
    pub len: usize,
    /// Executions so far (tier-up counter).
    pub exec_count: u32,
}

/// Why block decoding could not produce a single instruction.
#[derive(Debug)]
pub enum FetchError {
    /// The first byte could not be fetched: `cpu.exception` holds the fault.
    Fault,
    /// The code is not in RAM.
    Unbacked { phys: u64 },
}

/// Does this instruction end a block (control transfer or a state change later code depends on)?
fn ends_block(insn: &Instruction) -> bool {
    insn.flow_control() != FlowControl::Next
        || crate::sem::system::handles(insn)
        || matches!(
            insn.mnemonic(),
            Mnemonic::Popf | Mnemonic::Popfq | Mnemonic::Cpuid | Mnemonic::INVALID
        )
}

/// Decode a block at `cpu.rip`.
pub fn decode(cpu: &mut CpuState, mode: u32, max_insns: usize) -> Result<Block, FetchError> {
    let start = cpu.rip;
    // Fetch to the end of the page, plus one instruction's worth so that an instruction
    // straddling the boundary can be the block's last.
    let to_page_end = 4096 - (start & 0xfff) as usize;
    let want = (to_page_end + MAX_INSN_LEN - 1)
        .min(max_insns * MAX_INSN_LEN)
        .max(1);
    let mut bytes = vec![0u8; want];
    let got = match mmu::fetch_code(cpu, start, &mut bytes) {
        Ok(n) => n,
        Err(mmu::MemFault::Exception) => return Err(FetchError::Fault),
        Err(mmu::MemFault::Unbacked { phys }) => return Err(FetchError::Unbacked { phys }),
    };
    bytes.truncate(got);
    let phys = match mmu::translate(cpu, start, mmu::Access::Execute, mmu::mmu_index(cpu) == 1) {
        Ok(t) => t.phys,
        Err(e) => {
            cpu.exception = e;
            return Err(FetchError::Fault);
        }
    };
    let mut decoder = Decoder::with_ip(64, &bytes, start, DecoderOptions::NONE);
    let mut insns = Vec::new();
    let mut len = 0usize;
    while decoder.can_decode() && insns.len() < max_insns && len < to_page_end {
        let insn = decoder.decode();
        if insn.is_invalid() && decoder.last_error() == iced_x86::DecoderError::NoMoreBytes {
            // The rest of the instruction is on a page we could not fetch.
            if insns.is_empty() {
                // Fetching the missing bytes faults: report that fault.
                let missing = start.wrapping_add(got as u64);
                let mut one = [0u8; 1];
                return match mmu::fetch_code(cpu, missing, &mut one) {
                    Err(mmu::MemFault::Unbacked { phys }) => Err(FetchError::Unbacked { phys }),
                    _ => Err(FetchError::Fault),
                };
            }
            break;
        }
        len += insn.len();
        insns.push(insn);
        if ends_block(&insn) {
            break;
        }
    }
    if insns.is_empty() {
        // Nothing decodable (cannot happen with at least one fetched byte, but keep the
        // invariant that a block has an instruction).
        cpu.exception = krr_runtime::ExceptionRecord {
            vector: krr_runtime::vector::UD,
            ..Default::default()
        };
        return Err(FetchError::Fault);
    }
    Ok(Block {
        start,
        phys,
        mode,
        insns,
        len,
        exec_count: 0,
    })
}
