//! Stop addresses (`Engine::set_stop_addresses`): the engine returns `Exit::Stop` before the
//! instruction at each one, every time execution arrives there, with the exact instruction
//! count, in every tier, also in code that was translated, compiled and chained before the
//! stop was set; resuming runs the instruction; clearing them ends the stops.

mod common;

use common::*;
use iced_x86::code_asm::*;
use krr_jit::engine::Exit;
use krr_runtime::arch::vector::UD;

const LOOPS: u64 = 40;

/// Two passes of a loop; `hot` is inside the loop's block, `between` between the passes.
fn machine() -> Machine {
    Machine::new(
        |k| {
            k.xor(eax, eax)?;
            k.xor(ebx, ebx)?;
            k.mov(r9d, 2)?;
            let mut outer = k.create_label();
            k.set_label(&mut outer)?;
            k.mov(ecx, LOOPS as u32)?;
            let mut top = k.create_label();
            k.set_label(&mut top)?;
            k.add(rax, 1)?;
            k.def("hot")?;
            k.add(rbx, 2)?;
            k.add(rbx, rax)?;
            k.dec(ecx)?;
            k.jnz(top)?;
            k.def("between")?;
            k.dec(r9d)?;
            k.jnz(outer)?;
            k.mov(r8, rbx)?;
            report(k, r8)?;
            stop(k)
        },
        |_| Ok(()),
    )
}

#[test]
fn every_arrival_at_a_stop_address_stops_before_the_instruction() {
    let sum = |n: u64| (1..=n).map(|i| 2 + i).sum::<u64>();
    for tier in TIERS {
        let mut s = machine().start(tier);
        let (hot, between) = (s.labels["hot"], s.labels["between"]);
        // The first pass runs (and, in the compiling tiers, gets compiled and chained) with
        // no stop inside the loop.
        s.engine.set_stop_addresses([between]);
        assert_eq!(s.run(), Exit::Stop { rip: between }, "{tier:?}");
        assert_eq!(s.cpu().gpr[3], sum(LOOPS), "{tier:?}: RBX after one pass");
        // A stop inside the translated loop: every iteration of the second pass stops there.
        s.engine.set_stop_addresses([hot]);
        let mut counts = Vec::new();
        let exit = loop {
            match s.run() {
                Exit::Stop { rip } => {
                    assert_eq!((rip, s.cpu().rip), (hot, hot), "{tier:?}");
                    // The instruction at the stop has not run yet.
                    let done = LOOPS + counts.len() as u64;
                    assert_eq!(s.cpu().gpr[3], sum(done), "{tier:?}: RBX at stop {done}");
                    counts.push(s.cpu().icount);
                    s.engine.resume_past_stop(s.core.cpu());
                    if counts.len() as u64 == LOOPS / 2 {
                        // Without stops the rest runs through.
                        s.engine.set_stop_addresses([]);
                    }
                }
                other => break other,
            }
        };
        assert_eq!(counts.len() as u64, LOOPS / 2, "{tier:?}");
        for w in counts.windows(2) {
            assert_eq!(
                w[1] - w[0],
                5,
                "{tier:?}: one stop per 5-instruction iteration"
            );
        }
        let r = s.finish(exit);
        assert_eq!(r.reports, [sum(2 * LOOPS)], "{tier:?}");
    }
}

/// `set_stop_at_user_mode`: the engine returns `Exit::UserMode` before the first CPL3
/// instruction (after the IRETQ that goes there), in every tier; switched off, user code runs.
#[test]
fn the_engine_stops_before_user_mode() {
    for tier in TIERS {
        let m = Machine::new(
            |k| {
                k.mov(ebx, 7)?;
                iret_to_user(k, UCODE, USTACK_TOP, 0x202)
            },
            |u| {
                u.add(rbx, 5)?;
                u.ud2()
            },
        );
        let mut s = m.start(tier);
        s.engine.set_stop_at_user_mode(true);
        assert_eq!(s.run(), Exit::UserMode, "{tier:?}");
        assert_eq!((s.cpu().rip, s.cpu().cpl()), (UCODE, 3), "{tier:?}");
        assert_eq!(s.cpu().gpr[3], 7, "{tier:?}: nothing of user mode ran");
        s.engine.set_stop_at_user_mode(false);
        let exit = s.run();
        let r = s.finish(exit);
        // The user code ran to its UD2 (the machine's handler then ends the run).
        assert_eq!(
            (r.events[0].vector, r.events[0].rip),
            (UD, UCODE + 4),
            "{tier:?}"
        );
        assert_eq!(r.cpu.gpr[3], 12, "{tier:?}: the user ADD ran");
    }
}

/// `Engine::set_rep_pause`: a REP STOSB pauses before the iteration that starts with the
/// chosen RCX, its earlier iterations done and the instruction not retired, in every tier
/// (compiled code hands REP to the interpreter); lifted, the rest runs. A pause at the
/// starting RCX is the instruction's boundary (`rep_paused_midway` false).
#[test]
fn a_rep_instruction_pauses_between_iterations() {
    const LEN: u32 = 10_000;
    for (target, midway) in [(3000u64, true), (LEN as u64, false), (1, true)] {
        for tier in TIERS {
            let mut m = Machine::new(
                |k| {
                    k.mov(rdi, TEST_AREA)?;
                    k.mov(eax, 0x5a)?;
                    k.mov(ecx, LEN)?;
                    k.def("rep")?;
                    k.rep().stosb()?;
                    k.mov(r8, rcx)?;
                    report(k, r8)?;
                    stop(k)
                },
                |_| Ok(()),
            );
            let rw_nx = krr_runtime::arch::pte::RW | krr_runtime::arch::pte::NX;
            m.pt.identity(&mut m.mem, TEST_AREA, TEST_AREA + 0x3000, rw_nx);
            let mut s = m.start(tier);
            let rep = s.labels["rep"];
            krr_jit::Engine::set_rep_pause(&mut s.core, Some((rep, target)));
            let icount = |s: &Session| s.core.cpu().icount;
            assert_eq!(s.run(), Exit::Budget, "{tier:?}");
            let c = s.core.cpu();
            assert_eq!((c.rip, c.gpr[1]), (rep, target), "{tier:?}");
            assert_eq!(c.exec.rep_paused_midway, midway, "{tier:?}");
            let done = LEN as u64 - target;
            assert_eq!(c.gpr[7], TEST_AREA + done, "{tier:?}: RDI");
            let mut bytes = vec![0u8; LEN as usize];
            s.core.mem().read(TEST_AREA, &mut bytes).unwrap();
            assert!(
                bytes[..done as usize].iter().all(|&b| b == 0x5a),
                "{tier:?}"
            );
            assert!(bytes[done as usize..].iter().all(|&b| b == 0), "{tier:?}");
            let before = icount(&s);
            krr_jit::Engine::set_rep_pause(&mut s.core, None);
            let exit = s.run();
            assert!(icount(&s) > before);
            let r = s.finish(exit);
            assert_eq!(r.reports, [0], "{tier:?}");
        }
    }
}
