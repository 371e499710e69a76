//! Engine-level behaviour: exact instruction budgets inside compiled blocks, precise faults in
//! every tier, REP counting, unimplemented instructions.

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;
use krr_jit::snippet::*;
use krr_runtime::arch::{mxcsr, rflags};

mod common;
use common::assemble;

const CODE: u64 = 0x40_0000;
const DATA: u64 = 0x60_0000;
const TIERS: [Tier; 4] = [
    Tier::Interpreter,
    Tier::Jit,
    Tier::JitSingleStep,
    Tier::Tiered,
];

fn init() -> UserState {
    let mut s = UserState {
        rip: CODE,
        rflags: rflags::IF | rflags::FIXED1,
        mxcsr: mxcsr::INIT,
        ..Default::default()
    };
    s.gpr[4] = DATA + 0x800;
    s
}

fn snippet(code: Vec<u8>) -> Snippet {
    Snippet {
        code_addr: CODE,
        code,
        regions: vec![Region {
            addr: DATA,
            data: vec![0; 4096],
        }],
    }
}

/// A loop counting RAX up; stopping after exactly N instructions must leave the state of the
/// N-th instruction boundary in every tier, whatever the block boundaries.
#[test]
fn budget_stops_exactly() {
    let code = assemble(
        |a| {
            let mut l = a.create_label();
            a.xor(eax, eax)?;
            a.mov(ecx, 1000)?;
            a.set_label(&mut l)?;
            a.add(rax, 3)?;
            a.mov(qword_ptr(DATA), rax)?;
            a.xor(rax, 1)?;
            a.dec(ecx)?;
            a.jnz(l)?;
            Ok(())
        },
        CODE,
    );
    let s = snippet(code);
    for n in [0u64, 1, 2, 3, 7, 100, 101, 102, 103, 104, 2001, 4001] {
        let reference = run_snippet(&s, &init(), Tier::Interpreter, n).unwrap();
        assert_eq!(reference.outcome, SnippetEnd::OutOfBudget);
        assert_eq!(reference.instructions, n);
        for tier in TIERS {
            let r = run_snippet(&s, &init(), tier, n).unwrap();
            assert_eq!(r.outcome, SnippetEnd::OutOfBudget, "{tier:?} n={n}");
            assert_eq!(r.instructions, n, "{tier:?} n={n}");
            assert_eq!(r.state, reference.state, "{tier:?} n={n}");
            assert_eq!(r.regions, reference.regions, "{tier:?} n={n}");
        }
    }
}

/// A store to a read-only... here: an unmapped page in the middle of a block faults with the
/// registers as they were before that instruction, RIP on it, and the count of retired ones.
#[test]
fn faults_are_precise() {
    let code = assemble(
        |a| {
            a.mov(rax, 0x1234u64)?;
            a.add(rbx, rax)?;
            a.push(rax)?;
            a.mov(rcx, 0x7000_0000u64)?;
            a.inc(rdx)?;
            a.mov(qword_ptr(rcx + 8), rax)?; // unmapped: #PF
            a.mov(rax, 0u64)?;
            Ok(())
        },
        CODE,
    );
    let s = snippet(code);
    for tier in TIERS {
        let r = run_snippet(&s, &init(), tier, 1000).unwrap();
        match r.outcome {
            SnippetEnd::Exception {
                vector,
                error_code,
                address,
                rip,
            } => {
                assert_eq!(vector, 14, "{tier:?}");
                assert_eq!(address, 0x7000_0008, "{tier:?}");
                // User-mode write to a not-present page.
                assert_eq!(error_code, Some(0b110), "{tier:?}");
                assert_eq!(rip, r.state.rip);
            }
            o => panic!("{tier:?}: expected #PF, got {o:?}"),
        }
        assert_eq!(r.instructions, 5, "{tier:?}");
        assert_eq!(r.state.gpr[0], 0x1234, "{tier:?}");
        assert_eq!(r.state.gpr[3], 0x1234, "{tier:?}");
        assert_eq!(r.state.gpr[2], 1, "{tier:?}");
        assert_eq!(r.state.gpr[4], DATA + 0x800 - 8, "{tier:?}");
        // The push landed.
        assert_eq!(
            &r.regions[0].data[0x7f8..0x800],
            &0x1234u64.to_le_bytes(),
            "{tier:?}"
        );
    }
}

/// REP STOSB counts as one instruction however many iterations; a fault in the middle leaves
/// RCX/RDI at the faulting iteration and the instruction not retired.
#[test]
fn rep_counts_once_and_faults_mid_way() {
    let code = assemble(
        |a| {
            a.mov(rdi, DATA + 4000)?;
            a.mov(ecx, 200)?;
            a.mov(al, 0xab)?;
            a.rep().stosb()?;
            a.nop()?;
            Ok(())
        },
        CODE,
    );
    let s = snippet(code);
    for tier in TIERS {
        let r = run_snippet(&s, &init(), tier, 1000).unwrap();
        match r.outcome {
            SnippetEnd::Exception {
                vector: 14,
                address,
                ..
            } => assert_eq!(address, DATA + 4096),
            o => panic!("{tier:?}: expected #PF, got {o:?}"),
        }
        assert_eq!(r.instructions, 3, "{tier:?}");
        assert_eq!(
            r.state.gpr[1],
            200 - 96,
            "{tier:?}: RCX after 96 iterations"
        );
        assert_eq!(r.state.gpr[7], DATA + 4096, "{tier:?}");
        assert!(
            r.regions[0].data[4000..4096].iter().all(|&b| b == 0xab),
            "{tier:?}"
        );
    }
    let code = assemble(
        |a| {
            a.mov(rdi, DATA)?;
            a.mov(ecx, 100)?;
            a.rep().stosb()?;
            a.nop()?;
            Ok(())
        },
        CODE,
    );
    for tier in TIERS {
        let r = run_snippet(&snippet(code.clone()), &init(), tier, 1000).unwrap();
        assert_eq!(r.outcome, SnippetEnd::Completed, "{tier:?}");
        assert_eq!(r.instructions, 4, "{tier:?}");
        assert_eq!(r.state.gpr[1], 0, "{tier:?}");
    }
}

/// An instruction the engine does not implement raises #UD at its RIP (never skipped).
#[test]
fn unimplemented_raises_ud() {
    // MASKMOVQ mm0, mm1 (its implicit byte-masked store is not part of the engine yet).
    let mut code = assemble(|a| a.nop(), CODE);
    code.extend_from_slice(&[0x0f, 0xf7, 0xc1]);
    let s = snippet(code);
    for tier in TIERS {
        let r = run_snippet(&s, &init(), tier, 1000).unwrap();
        assert_eq!(
            r.outcome,
            SnippetEnd::Exception {
                vector: 6,
                error_code: None,
                address: 0,
                rip: CODE + 1
            },
            "{tier:?}"
        );
        assert_eq!(r.instructions, 1, "{tier:?}");
        assert_eq!(r.stats.unimplemented, tier.runs() as u64, "{tier:?}");
    }
}

/// #DE from DIV in every tier, registers untouched.
#[test]
fn divide_error() {
    let code = assemble(
        |a| {
            a.mov(eax, 7)?;
            a.xor(edx, edx)?;
            a.xor(ecx, ecx)?;
            a.div(rcx)?;
            Ok(())
        },
        CODE,
    );
    for tier in TIERS {
        let r = run_snippet(&snippet(code.clone()), &init(), tier, 1000).unwrap();
        assert!(
            matches!(r.outcome, SnippetEnd::Exception { vector: 0, rip, .. } if rip == CODE + 9),
            "{tier:?}: {:?}",
            r.outcome
        );
        assert_eq!(r.state.gpr[0], 7, "{tier:?}");
        assert_eq!(r.instructions, 3, "{tier:?}");
    }
}

/// Assemble code that refers to the address of one of its own labels as an absolute
/// constant: a first pass finds the label's address, the second uses it (same lengths).
fn assemble_self_ref(
    f: impl Fn(&mut CodeAssembler, u64, &mut CodeLabel) -> Result<(), IcedError>,
) -> Vec<u8> {
    let mut addr = 0x4000_0000u64;
    for _ in 0..2 {
        let mut a = CodeAssembler::new(64).unwrap();
        let mut label = a.create_label();
        f(&mut a, addr, &mut label).unwrap();
        let r = a
            .assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
            .unwrap();
        let found = r.label_ip(&label).unwrap();
        if found == addr {
            return r.inner.code_buffer;
        }
        addr = found;
    }
    panic!("label address did not converge");
}

fn run_smc(code: Vec<u8>, tier: Tier) -> SnippetResult {
    let opts = SnippetOptions {
        writable_code: true,
        ..Default::default()
    };
    run_snippet_with(&snippet(code), &init(), tier, 100_000, opts).unwrap()
}

/// A store that patches the very next instruction of the same block: the next instruction
/// must run with the new bytes in every tier.
#[test]
fn self_modifying_next_instruction() {
    let code = assemble_self_ref(|a, target, label| {
        // mov byte [target+1], 7 patches the imm32's low byte of `mov eax, 0x11111111`.
        a.mov(byte_ptr(target + 1), 7)?;
        a.set_label(label)?;
        a.mov(eax, 0x1111_1111u32)?;
        a.nop()?;
        Ok(())
    });
    for tier in TIERS {
        let r = run_smc(code.clone(), tier);
        assert_eq!(r.outcome, SnippetEnd::Completed, "{tier:?}");
        assert_eq!(r.state.gpr[0], 0x1111_1107, "{tier:?}");
    }
}

/// A hot loop that rewrites an immediate inside itself on every iteration: compiled
/// translations must be discarded each time.
#[test]
fn self_modifying_loop() {
    let code = assemble_self_ref(|a, patched, label| {
        let mut top = a.create_label();
        a.mov(ecx, 100)?;
        a.xor(edx, edx)?;
        a.set_label(&mut top)?;
        // add edx, imm32 is 81 C2 imm32: the immediate starts 2 bytes in.
        a.mov(dword_ptr(patched + 2), ecx)?;
        a.set_label(label)?;
        a.add(edx, 0x1234_5678)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        Ok(())
    });
    for tier in TIERS {
        let r = run_smc(code.clone(), tier);
        assert_eq!(r.outcome, SnippetEnd::Completed, "{tier:?}");
        assert_eq!(r.state.gpr[2], 5050, "{tier:?}");
        if tier != Tier::Interpreter {
            assert!(r.stats.blocks_invalidated >= 99, "{tier:?}: {:?}", r.stats);
        }
    }
}

/// Code patched from a different block than the one that runs it (the kernel's alternatives
/// and static keys): the patched block was compiled and linked before the write.
#[test]
fn self_modifying_other_block() {
    let code = assemble_self_ref(|a, func_addr, func| {
        let mut top = a.create_label();
        let mut after = a.create_label();
        let mut done = a.create_label();
        a.mov(ecx, 200)?;
        a.xor(edx, edx)?;
        a.set_label(&mut top)?;
        a.call(*func)?;
        a.cmp(ecx, 100)?;
        a.jne(after)?;
        // Halfway: turn `add edx, 1` (83 C2 01) into `add edx, 3`.
        a.mov(byte_ptr(func_addr + 2), 3)?;
        a.set_label(&mut after)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.jmp(done)?;
        a.set_label(func)?;
        a.add(edx, 1)?;
        a.ret()?;
        a.set_label(&mut done)?;
        a.nop()?;
        Ok(())
    });
    for tier in TIERS {
        let r = run_smc(code.clone(), tier);
        assert_eq!(r.outcome, SnippetEnd::Completed, "{tier:?}");
        // 101 calls before the patch (ecx = 200..=100), 99 after.
        assert_eq!(r.state.gpr[2], 101 + 3 * 99, "{tier:?}");
    }
}

/// A hot loop that writes data on its own code page, beside its code: the blocks stay (only
/// blocks whose bytes are written are discarded), and the data is right in every tier.
#[test]
fn writes_beside_code_keep_its_blocks() {
    let code = assemble_self_ref(|a, data, label| {
        let mut top = a.create_label();
        let mut done = a.create_label();
        a.mov(ecx, 300)?;
        a.set_label(&mut top)?;
        a.add(dword_ptr(data), ecx)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.mov(eax, dword_ptr(data))?;
        a.jmp(done)?;
        a.set_label(label)?;
        a.dd(&[0])?;
        a.set_label(&mut done)?;
        a.nop()?;
        Ok(())
    });
    for tier in TIERS {
        let r = run_smc(code.clone(), tier);
        assert_eq!(r.outcome, SnippetEnd::Completed, "{tier:?}");
        assert_eq!(r.state.gpr[0], 300 * 301 / 2, "{tier:?}");
        assert_eq!(r.stats.blocks_invalidated, 0, "{tier:?}: {:?}", r.stats);
    }
}

/// A write to the part of an instruction that straddles into the next page (the immediate
/// of `add edx, imm32` at the end of the first code page) discards the block holding it.
#[test]
fn write_to_the_straddling_part_of_a_block() {
    let func = CODE + 0xffe;
    let mut a = CodeAssembler::new(64).unwrap();
    let mut top = a.create_label();
    let mut after = a.create_label();
    a.mov(ecx, 100).unwrap();
    a.xor(edx, edx).unwrap();
    a.set_label(&mut top).unwrap();
    a.call(func).unwrap();
    a.cmp(ecx, 50).unwrap();
    a.jne(after).unwrap();
    // The immediate's low byte, on the second page.
    a.mov(byte_ptr(func + 2), 3).unwrap();
    a.set_label(&mut after).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(top).unwrap();
    a.jmp(func + 7).unwrap();
    let mut code = a.assemble(CODE).unwrap();
    code.resize(0xffe, 0x90);
    // add edx, 1; ret; nop (the end)
    code.extend_from_slice(&[0x81, 0xc2, 1, 0, 0, 0, 0xc3, 0x90]);
    for tier in TIERS {
        let r = run_smc(code.clone(), tier);
        assert_eq!(r.outcome, SnippetEnd::Completed, "{tier:?}");
        // 51 calls before the patch (ecx = 100..=50), 49 after.
        assert_eq!(r.state.gpr[2], 51 + 3 * 49, "{tier:?}");
    }
}

/// Long REP MOVS/STOS runs (the interpreter's page-at-a-time fast path) end exactly as the
/// iterations one element at a time would: page crossings, unaligned pointers, DF=1, and a
/// destination overlapping the source closer than one element (the pattern repeats).
#[test]
fn long_rep_movs_and_stos_match_element_by_element() {
    const LEN: usize = 5 * 4096;
    struct Case {
        mnemonic: &'static str,
        size: usize,
        down: bool,
        src: u64,
        dst: u64,
        count: u64,
    }
    let cases = [
        Case {
            mnemonic: "movsb",
            size: 1,
            down: false,
            src: 5,
            dst: 9000,
            count: 9000,
        },
        Case {
            mnemonic: "movsq",
            size: 8,
            down: false,
            src: 100,
            dst: 103,
            count: 1500,
        },
        Case {
            mnemonic: "movsd",
            size: 4,
            down: true,
            src: 16000,
            dst: 15998,
            count: 2000,
        },
        Case {
            mnemonic: "movsw",
            size: 2,
            down: true,
            src: 12001,
            dst: 12301,
            count: 5000,
        },
        Case {
            mnemonic: "movsb",
            size: 1,
            down: false,
            src: 4000,
            dst: 3990,
            count: 12000,
        },
        Case {
            mnemonic: "stosb",
            size: 1,
            down: false,
            src: 0,
            dst: 4095,
            count: 9000,
        },
        Case {
            mnemonic: "stosq",
            size: 8,
            down: true,
            src: 0,
            dst: 20000,
            count: 2000,
        },
        Case {
            mnemonic: "stosw",
            size: 2,
            down: false,
            src: 0,
            dst: 3,
            count: 7000,
        },
    ];
    let initial: Vec<u8> = (0..LEN).map(|i| (i * 7 + i / 251) as u8).collect();
    const FILL: u64 = 0x1122_3344_5566_7788;
    for c in &cases {
        // The reference: one element at a time as the SDM describes the iterations (an element
        // is read whole before it is written).
        let mut want = initial.clone();
        let (mut s, mut d) = (c.src as usize, c.dst as usize);
        for _ in 0..c.count {
            let element: Vec<u8> = if c.mnemonic.starts_with("stos") {
                FILL.to_le_bytes()[..c.size].to_vec()
            } else {
                want[s..s + c.size].to_vec()
            };
            want[d..d + c.size].copy_from_slice(&element);
            if c.down {
                s = s.wrapping_sub(c.size);
                d = d.wrapping_sub(c.size);
            } else {
                s += c.size;
                d += c.size;
            }
        }
        let code = assemble(
            |a| {
                a.mov(rsi, DATA + c.src)?;
                a.mov(rdi, DATA + c.dst)?;
                a.mov(rcx, c.count)?;
                a.mov(rax, FILL)?;
                if c.down {
                    a.std()?;
                }
                match c.mnemonic {
                    "movsb" => a.rep().movsb()?,
                    "movsw" => a.rep().movsw()?,
                    "movsd" => a.rep().movsd()?,
                    "movsq" => a.rep().movsq()?,
                    "stosb" => a.rep().stosb()?,
                    "stosw" => a.rep().stosw()?,
                    _ => a.rep().stosq()?,
                }
                a.cld()?;
                Ok(())
            },
            CODE,
        );
        let s = Snippet {
            code_addr: CODE,
            code,
            regions: vec![Region {
                addr: DATA,
                data: initial.clone(),
            }],
        };
        let moved = c.count * c.size as u64;
        let advance = |p: u64| {
            if c.down {
                DATA + p - moved
            } else {
                DATA + p + moved
            }
        };
        for tier in TIERS {
            let r = run_snippet(&s, &init(), tier, 1000).unwrap();
            let what = format!("{} {:?}", c.mnemonic, tier);
            assert_eq!(r.outcome, SnippetEnd::Completed, "{what}");
            assert_eq!(r.state.gpr[1], 0, "{what}: RCX");
            assert_eq!(r.state.gpr[7], advance(c.dst), "{what}: RDI");
            if c.mnemonic.starts_with("movs") {
                assert_eq!(r.state.gpr[6], advance(c.src), "{what}: RSI");
            }
            let first_bad = (0..LEN).find(|&i| r.regions[0].data[i] != want[i]);
            assert_eq!(first_bad, None, "{what}: first differing byte");
        }
    }
}
