use iced_x86::code_asm::*;
use krr_jit::snippet::*;
use krr_runtime::arch::rflags;

mod common;
use common::assemble;

#[test]
fn loop_in_all_tiers() {
    let addr = 0x0100_0000;
    let code = assemble(
        |a| {
            let mut l = a.create_label();
            a.mov(rax, 5u64)?;
            a.mov(rcx, 1000u64)?;
            a.set_label(&mut l)?;
            a.add(rax, rcx)?;
            a.mov(qword_ptr(rbx), rax)?;
            a.add(rbx, 8)?;
            a.and(rbx, 0x2000_0fffi32)?;
            a.dec(rcx)?;
            a.jnz(l)?;
            a.push(rax)?;
            a.pop(rdx)?;
            Ok(())
        },
        addr,
    );
    let snippet = Snippet {
        code_addr: addr,
        code,
        regions: vec![Region {
            addr: 0x2000_0000,
            data: vec![0; 4096],
        }],
    };
    let mut init = UserState {
        rip: addr,
        rflags: rflags::IF | rflags::FIXED1,
        ..Default::default()
    };
    init.gpr[3] = 0x2000_0000;
    init.gpr[4] = 0x2000_0800;
    let mut results = Vec::new();
    for tier in [
        Tier::Interpreter,
        Tier::Jit,
        Tier::JitSingleStep,
        Tier::Tiered,
    ] {
        let r = run_snippet(&snippet, &init, tier, 1_000_000).unwrap();
        assert_eq!(r.outcome, SnippetEnd::Completed, "{tier:?}");
        assert_eq!(r.state.gpr[0], 5 + 1000 * 1001 / 2, "{tier:?}");
        assert_eq!(r.state.gpr[2], r.state.gpr[0], "{tier:?}");
        assert_eq!(r.instructions, 2 + 6 * 1000 + 2, "{tier:?}");
        results.push(r);
    }
    for r in &results[1..] {
        assert_eq!(r.state, results[0].state);
        assert_eq!(r.regions, results[0].regions);
    }
}
