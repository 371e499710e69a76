//! The runtime reads the lazy arithmetic flags with concrete code (`CpuState::arith_flags`),
//! the engine with its generic flag semantics (`interp::materialize_flags`): they must agree
//! for every operation kind, size and operand, or trace hashes would depend on which one ran.

use krr_runtime::lazy_flags::{FlagKind, FlagOp};
use krr_runtime::{Core, CpuState};

mod splitmix;
use splitmix::{edge_operand as operand, SplitMix};

fn check(cpu: &mut CpuState, cc_op: u64, v: [u64; 4]) {
    [cpu.cc_res, cpu.cc_a, cpu.cc_b, cpu.cc_aux] = v;
    cpu.cc_op = cc_op;
    cpu.rflags = krr_runtime::rflags::FIXED1 | krr_runtime::rflags::IF;
    let runtime = cpu.arith_flags();
    let full = cpu.rflags_value();
    let jit = krr_jit::interp::materialize_flags_generic(cpu);
    assert_eq!(
        runtime, jit,
        "cc_op {cc_op:#x} res/a/b/aux {v:#x?}: runtime {runtime:#x}, jit {jit:#x}"
    );
    assert_eq!(full, (cpu.rflags & !krr_runtime::rflags::ARITH) | jit);
}

#[test]
fn runtime_and_jit_read_the_same_flags() {
    let mut core = Core::new(1 << 16).unwrap();
    // SAFETY: the test writes and reads fields of the state; it never moves or replaces it.
    let cpu = unsafe { core.state_mut() };
    let mut rng = SplitMix(0x5eed);
    for kind in FlagKind::ALL {
        for size in [1u32, 2, 4, 8] {
            let cc_op = FlagOp { kind, size }.encode();
            for _ in 0..20_000 {
                let bits = size * 8;
                let v = [
                    operand(&mut rng, bits),
                    operand(&mut rng, bits),
                    operand(&mut rng, bits),
                    operand(&mut rng, bits),
                ];
                check(cpu, cc_op, v);
            }
        }
    }
    // Concrete state and undecodable encodings (a corrupt snapshot) read `res` as stored.
    for cc_op in [0, 3, 11 << 4 | 8, 0x15, u64::MAX] {
        for _ in 0..100 {
            check(cpu, cc_op, [rng.next(), rng.next(), rng.next(), rng.next()]);
        }
    }
}
