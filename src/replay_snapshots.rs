//! `krr replay TRACE --save-snapshots N`: one sequential replay that takes a delta snapshot
//! every N instructions and, if the replay matched, adds them to the trace (for `--jobs` and
//! `--segment`).

use krr::replay::{Advance, Replayer, SnapshotTaker, Verdict};

pub fn save(
    mut r: Replayer,
    trace: &std::path::Path,
    every: u64,
    quiet: bool,
) -> Result<i32, String> {
    let have = r.trace_reader().deltas.len();
    if have > 0 {
        return Err(format!(
            "{}: the trace has {have} snapshots already (--jobs and --segment use them)",
            trace.display()
        ));
    }
    let bar = krr::report::progress(Some(r.total_instructions()));
    if !quiet {
        r.set_console(Some(Box::new(krr::report::Console::new(bar.clone()))));
    }
    let mut taker = SnapshotTaker::new(&mut r, every);
    let mut run = r.start().map_err(|e| e.to_string())?;
    let verdict = loop {
        let target = taker.next_due(&r);
        match r
            .advance(&mut run, target, &bar, &mut || false)
            .map_err(|e| e.to_string())?
        {
            Advance::Reached => taker.take(&mut r).map_err(|e| e.to_string())?,
            Advance::Ended(v) => break v,
            Advance::Breakpoint(rip) => break Verdict::Breakpoint(rip),
            Advance::Interrupted | Advance::Watch(_) => {
                unreachable!("nothing interrupts this replay")
            }
        }
    };
    let outcome = r.finish(run, verdict, &bar).map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    eprint!("{}", outcome.summary());
    if !matches!(outcome.verdict, Verdict::Matched) {
        return Err(format!(
            "{}: the replay did not match, so no snapshots were added",
            trace.display()
        ));
    }
    // The snapshot at the recording's very end would start an empty segment.
    let end = outcome.icount;
    let snaps: Vec<_> = taker.taken.into_iter().filter(|d| d.icount < end).collect();
    krr::trace::delta::add_to_trace(trace, r.trace_reader(), &snaps)?;
    eprintln!(
        "added {} snapshots (every {every} instructions) to {}",
        snaps.len(),
        trace.display()
    );
    Ok(0)
}
