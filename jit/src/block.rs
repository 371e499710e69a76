//! Block formation: decode guest instructions with iced-x86 from a start address until a
//! control transfer, a page boundary, the size cap, or (in single-step mode) one instruction.

use crate::cpuid_gate;
use crate::sem::MemOperand;
use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic};
use krr_runtime::{mmu, CpuState};
use std::collections::HashSet;

/// The longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// A decoded block, cached for the interpreter and the compiler alike.
pub struct Block {
    /// Linear address of the first instruction.
    pub start: u64,
    /// Physical address of the first instruction.
    pub phys: u64,
    pub mode: u32,
    /// The behaviour profile the block was decoded for (compiled code has it baked in).
    pub profile: krr_runtime::Profile,
    pub insns: Vec<Instruction>,
    /// Each instruction's memory operand, decoded for the interpreter.
    pub mem: Vec<MemOperand>,
    /// Bytes covered, for invalidation.
    pub len: usize,
    /// The instructions' bytes as decoded (`len` of them; the code cache's key).
    pub bytes: Vec<u8>,
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
        || crate::system::handles(insn)
        || matches!(
            insn.mnemonic(),
            Mnemonic::Popf
                | Mnemonic::Popfd
                | Mnemonic::Popfq
                | Mnemonic::Cpuid
                | Mnemonic::INVALID
        )
}

/// Decode a block at `cpu.rip`.
///
/// Only the block's own page is fetched, plus the next page's first bytes when an instruction
/// straddles the boundary: fetching further ahead would set accessed bits the guest never
/// caused, and differently for different block sizes.
///
/// A block never holds an instruction at one of `stops` except as its first (the engine stops
/// before those: `engine::stops`).
pub fn decode(
    cpu: &mut CpuState,
    mode: u32,
    profile: krr_runtime::Profile,
    max_insns: usize,
    stops: &HashSet<u64>,
    cpuid_gate: bool,
) -> Result<Block, FetchError> {
    let start = cpu.rip;
    let to_page_end = 4096 - (start & 0xfff) as usize;
    let want = to_page_end.min(max_insns * MAX_INSN_LEN);
    let mut bytes = vec![0u8; want];
    let got = match mmu::fetch_code(cpu, start, &mut bytes) {
        Ok(n) => n,
        Err(mmu::MemFault::Exception) => return Err(FetchError::Fault),
        Err(mmu::MemFault::Unbacked { phys }) => return Err(FetchError::Unbacked { phys }),
    };
    bytes.truncate(got);
    let phys = match mmu::translate(cpu, start, mmu::Access::Execute, mode & 3 == 3) {
        Ok(t) => t.phys,
        Err(e) => {
            cpu.exec.exception = e;
            return Err(FetchError::Fault);
        }
    };
    let bitness = crate::mode::bitness(mode);
    let mut insns = Vec::new();
    let mut code = Vec::new();
    let mut len = 0usize;
    while insns.len() < max_insns && len < bytes.len() {
        let ip = start.wrapping_add(len as u64);
        if !insns.is_empty() && !stops.is_empty() && stops.contains(&ip) {
            break;
        }
        let mut decoder = Decoder::with_ip(bitness, &bytes[len..], ip, DecoderOptions::NONE);
        let mut insn = decoder.decode();
        if insn.is_invalid() && decoder.last_error() == iced_x86::DecoderError::NoMoreBytes {
            // The instruction continues on the next page: fetch it whole, which faults the way
            // the CPU's fetch would if that page is not executable.
            let mut buf = [0u8; MAX_INSN_LEN];
            let n = match mmu::fetch_code(cpu, ip, &mut buf) {
                Ok(n) => n,
                Err(e) if insns.is_empty() => {
                    return Err(match e {
                        mmu::MemFault::Unbacked { phys } => FetchError::Unbacked { phys },
                        mmu::MemFault::Exception => FetchError::Fault,
                    })
                }
                Err(_) => break,
            };
            let mut d = Decoder::with_ip(bitness, &buf[..n], ip, DecoderOptions::NONE);
            insn = d.decode();
            code.extend_from_slice(&buf[..insn.len().min(n)]);
            if insn.is_invalid() && d.last_error() == iced_x86::DecoderError::NoMoreBytes {
                if insns.is_empty() {
                    // The rest of the instruction lies on a page that cannot be fetched.
                    let missing = ip.wrapping_add(n as u64);
                    let mut one = [0u8; 1];
                    return match mmu::fetch_code(cpu, missing, &mut one) {
                        Err(mmu::MemFault::Unbacked { phys }) => Err(FetchError::Unbacked { phys }),
                        _ => Err(FetchError::Fault),
                    };
                }
                break;
            }
        }
        if cpuid_gate {
            cpuid_gate::apply(&cpu.cpuid, &mut insn);
        }
        if bitness < 64 {
            // EIP (IP) wraps at the code size; iced does not wrap the next IP.
            insn.set_next_ip(insn.next_ip() & (u64::MAX >> (64 - bitness)));
        }
        if code.len() == len {
            code.extend_from_slice(&bytes[len..len + insn.len()]);
        }
        len += insn.len();
        insns.push(insn);
        if ends_block(&insn) {
            break;
        }
    }
    if insns.is_empty() {
        cpu.exec.exception = krr_runtime::ExceptionRecord::fault(krr_runtime::vector::UD, None);
        return Err(FetchError::Fault);
    }
    let mem = insns.iter().map(MemOperand::new).collect();
    Ok(Block {
        start,
        phys,
        mode,
        profile,
        insns,
        mem,
        len,
        bytes: code,
        exec_count: 0,
    })
}
