//! Conditions on flags an earlier block set: compiled code evaluates them from the lazy state
//! (inline for CMP/SUB- and logic-produced flags, through the runtime's reading otherwise;
//! `compile::lower::incoming_flags`), the interpreter through the generic flag semantics.
//! Every producer kind and size, every condition, edge-biased operands: each tier must take
//! exactly the branches the interpreter takes. The single-step tier is where this matters
//! most: there every conditional jump is its own block.

use iced_x86::code_asm::*;
use krr_jit::snippet::*;
use krr_runtime::arch::rflags;

mod common;
mod splitmix;
use common::assemble;
use splitmix::{edge_operand as operand, SplitMix};

const CODE: u64 = 0x0100_0000;
const TABLE: u64 = 0x2000_0000;
const OUT: u64 = 0x2010_0000;
const CASES: usize = 96;

#[derive(Clone, Copy, Debug)]
enum Producer {
    Cmp,
    Sub,
    Add,
    Adc,
    Sbb,
    And,
    Test,
    Or,
    Xor,
    Inc,
    Dec,
    Neg,
    Shl,
    Shr,
    Sar,
}

const PRODUCERS: [Producer; 15] = [
    Producer::Cmp,
    Producer::Sub,
    Producer::Add,
    Producer::Adc,
    Producer::Sbb,
    Producer::And,
    Producer::Test,
    Producer::Or,
    Producer::Xor,
    Producer::Inc,
    Producer::Dec,
    Producer::Neg,
    Producer::Shl,
    Producer::Shr,
    Producer::Sar,
];

/// The producer on (rax, rcx) at `bits` wide (shifts by CL).
fn produce(a: &mut CodeAssembler, p: Producer, bits: u32) -> Result<(), IcedError> {
    use Producer::*;
    macro_rules! two {
        ($op:ident) => {
            match bits {
                8 => a.$op(al, cl),
                16 => a.$op(ax, cx),
                32 => a.$op(eax, ecx),
                _ => a.$op(rax, rcx),
            }
        };
    }
    macro_rules! one {
        ($op:ident) => {
            match bits {
                8 => a.$op(al),
                16 => a.$op(ax),
                32 => a.$op(eax),
                _ => a.$op(rax),
            }
        };
    }
    macro_rules! shift {
        ($op:ident) => {
            match bits {
                8 => a.$op(al, cl),
                16 => a.$op(ax, cl),
                32 => a.$op(eax, cl),
                _ => a.$op(rax, cl),
            }
        };
    }
    match p {
        Cmp => two!(cmp),
        Sub => two!(sub),
        Add => two!(add),
        Adc => two!(adc),
        Sbb => two!(sbb),
        And => two!(and),
        Test => two!(test),
        Or => two!(or),
        Xor => two!(xor),
        Inc => one!(inc),
        Dec => one!(dec),
        Neg => one!(neg),
        Shl => shift!(shl),
        Shr => shift!(shr),
        Sar => shift!(sar),
    }
}

/// For each case (a, b, carry) of the table: the producer, a block boundary, then each of
/// the 16 conditional jumps; bit i of the case's output word is whether Jcc number i jumped.
fn program(p: Producer, bits: u32) -> Vec<u8> {
    assemble(
        |a| {
            let mut next_case = a.create_label();
            a.mov(r12, TABLE)?;
            a.mov(r14, OUT)?;
            a.mov(r13, CASES as u64)?;
            a.set_label(&mut next_case)?;
            a.xor(r8d, r8d)?;
            for cc in 0..16u32 {
                let mut boundary = a.create_label();
                let mut taken = a.create_label();
                let mut done = a.create_label();
                a.mov(rax, qword_ptr(r12))?;
                a.mov(rcx, qword_ptr(r12 + 8))?;
                a.mov(r9, qword_ptr(r12 + 16))?;
                // CF in for ADC/SBB (and kept by INC/DEC).
                a.bt(r9, 0)?;
                produce(a, p, bits)?;
                // End the block: the conditional jump reads the flags from the state.
                a.jmp(boundary)?;
                a.set_label(&mut boundary)?;
                match cc {
                    0 => a.jo(taken),
                    1 => a.jno(taken),
                    2 => a.jb(taken),
                    3 => a.jae(taken),
                    4 => a.je(taken),
                    5 => a.jne(taken),
                    6 => a.jbe(taken),
                    7 => a.ja(taken),
                    8 => a.js(taken),
                    9 => a.jns(taken),
                    10 => a.jp(taken),
                    11 => a.jnp(taken),
                    12 => a.jl(taken),
                    13 => a.jge(taken),
                    14 => a.jle(taken),
                    _ => a.jg(taken),
                }?;
                a.jmp(done)?;
                a.set_label(&mut taken)?;
                a.bts(r8, cc)?;
                a.set_label(&mut done)?;
            }
            a.mov(qword_ptr(r14), r8)?;
            a.add(r12, 24)?;
            a.add(r14, 8)?;
            a.dec(r13)?;
            a.jnz(next_case)?;
            Ok(())
        },
        CODE,
    )
}

#[test]
fn every_tier_branches_as_the_interpreter_on_flags_from_an_earlier_block() {
    let mut rng = SplitMix(0x1f1a_65ee);
    let mut checked = 0;
    for p in PRODUCERS {
        for bits in [8u32, 16, 32, 64] {
            let mut table = Vec::with_capacity(CASES * 24);
            for _ in 0..CASES {
                for v in [
                    operand(&mut rng, bits),
                    operand(&mut rng, bits),
                    rng.next() & 1,
                ] {
                    table.extend_from_slice(&v.to_le_bytes());
                }
            }
            let snippet = Snippet {
                code_addr: CODE,
                code: program(p, bits),
                regions: vec![
                    Region {
                        addr: TABLE,
                        data: table,
                    },
                    Region {
                        addr: OUT,
                        data: vec![0; 4096],
                    },
                ],
            };
            let init = UserState {
                rip: CODE,
                rflags: rflags::IF | rflags::FIXED1,
                ..Default::default()
            };
            let run = |tier| {
                let r = run_snippet(&snippet, &init, tier, 10_000_000).unwrap();
                assert_eq!(r.outcome, SnippetEnd::Completed, "{p:?} {bits} {tier:?}");
                r.regions[1].data.clone()
            };
            let reference = run(Tier::Interpreter);
            // Not all-or-nothing: the cases take both sides of most conditions.
            let words: Vec<u64> = reference
                .chunks(8)
                .take(CASES)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
                .collect();
            assert!(
                words.iter().any(|&w| w != words[0]),
                "{p:?} {bits}: {words:x?}"
            );
            for tier in [Tier::Jit, Tier::JitSingleStep, Tier::Tiered] {
                let got = run(tier);
                for (i, (g, r)) in got
                    .chunks(8)
                    .zip(reference.chunks(8))
                    .take(CASES)
                    .enumerate()
                {
                    assert_eq!(
                        g, r,
                        "{p:?} {bits}-bit case {i} in {tier:?}: jumps taken {g:x?}, interpreter {r:x?}"
                    );
                }
                checked += CASES;
            }
        }
    }
    assert_eq!(checked, PRODUCERS.len() * 4 * 3 * CASES);
}
