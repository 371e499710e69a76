//! `krr replay --krr SNAPSHOT --vmlinux VMLINUX`: a KRR recording replayed kernel-only, with
//! KRR's end-of-replay block and krr's verdict.

use krr::krr_replay::driver::End;
use krr::krr_replay::load::{self, Options};
use std::time::Instant;

pub fn run(o: &Options, console: bool) -> Result<i32, String> {
    let start = Instant::now();
    let mut l = load::open(o)?;
    eprintln!("replaying {}", l.recording);
    eprintln!("KASLR slide {:#x}", l.slide);
    for n in &l.notes {
        eprintln!("note: {n}");
    }
    let total = l.driver.bus.queue.len() as u64;
    let bar = krr::report::progress(Some(total));
    let end = l.driver.run(&mut |done| bar.set_position(done))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let d = &l.driver;
    if console && !d.bus.devices.console.is_empty() {
        println!("{}", String::from_utf8_lossy(&d.bus.devices.console));
    }
    if end == End::Finished {
        println!("Replay finished");
    }
    println!("Replay executed in {secs:.2} seconds");
    print!("{}", krr::krr_replay::stats::event_stats(&l.loaded));
    let c = d.core.cpu();
    let instructions = c.icount;
    let mips = instructions as f64 / secs.max(1e-9) / 1e6;
    let replayed = total - d.bus.queue.remaining() as u64;
    eprintln!(
        "{} of {} events replayed; {instructions} kernel instructions (KRR count {}), {mips:.1} MIPS; {} trap-point stops, {} port-input count resyncs, {} interrupts with corrected registers, {} ring appends",
        replayed,
        total,
        d.bus.count(c),
        d.trap_hits,
        d.bus.io_resyncs,
        d.corrected_interrupts,
        d.bus.ring.as_ref().map_or(0, |r| r.appended),
    );
    for (m, rip, n) in &d.bus.model_answers {
        eprintln!("warning: {m} executed {n} times (first at RIP {rip:#x}): not recorded by KRR, answered by the CPU model");
    }
    if d.bus.pic_guessed {
        eprintln!("warning: the 8259 mask register was read before the kernel wrote it; krr answered 0xff (the snapshot's i8259 state is not read yet)");
    }
    match end {
        End::Finished => {
            eprintln!(
                "verdict: replayed to the end of the recording; final RIP {:#x}",
                c.rip
            );
            Ok(0)
        }
        End::Diverged(div) => {
            eprintln!(
                "verdict: DIVERGED at instruction {} (KRR count {}), RIP {:#x}: {}",
                c.icount,
                d.bus.count(c),
                c.rip,
                div.message
            );
            Ok(2)
        }
    }
}
