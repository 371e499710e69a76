//! `krr replay --jobs N` and `--segment K`: the segments between a trace's delta snapshots
//! replayed concurrently. The segments are split into N runs of consecutive segments with
//! about the same number of instructions; each run is one thread with its own replayer
//! (engine, guest memory), which starts at the snapshot before its first segment and checks
//! the snapshot at the end of every segment it replays, so every boundary is checked by the
//! run that arrives there. The verdict is the first divergence in trace order, else the last
//! run's (the recording's end), whose event counts (carried in the snapshots) and console
//! output (each run's, printed in order) are those of a sequential replay.

use super::{ReplayError, ReplayOptions, ReplayOutcome, Replayer, Segment, Verdict};
use indicatif::ProgressBar;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Console bytes of one run, kept until the runs before it are printed.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("console buffer").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a parallel replay went.
pub struct Parallel {
    pub outcome: ReplayOutcome,
    /// The console output of the segments replayed, in trace order.
    pub console: Vec<u8>,
    pub segments: usize,
    pub jobs: usize,
    /// Snapshots checked at segment ends.
    pub checked: usize,
}

/// Split `segments` into at most `jobs` runs of consecutive segments, balanced by instructions.
fn split(segments: &[Segment], jobs: usize) -> Vec<Vec<Segment>> {
    let total: u64 = segments.iter().map(|s| s.end - s.start).sum();
    let jobs = jobs.clamp(1, segments.len().max(1));
    let mut runs: Vec<Vec<Segment>> = vec![Vec::new()];
    let mut done = 0u64;
    for (i, s) in segments.iter().enumerate() {
        let left_segments = segments.len() - i;
        let left_runs = jobs - runs.len() + 1;
        let share = total * runs.len() as u64 / jobs as u64;
        // Start a new run once this one has its share (and segments remain for the rest).
        if !runs.last().expect("one").is_empty()
            && runs.len() < jobs
            && (done >= share || left_segments < left_runs)
        {
            runs.push(Vec::new());
        }
        runs.last_mut().expect("one").push(*s);
        done += s.end - s.start;
    }
    runs
}

/// One run: replay `run`'s segments from the snapshot before the first.
fn replay_run(
    path: &Path,
    options: ReplayOptions,
    run: &[Segment],
    console: Captured,
) -> Result<(ReplayOutcome, usize), ReplayError> {
    let mut r = Replayer::open(path, options)?;
    r.set_console(Some(Box::new(console)));
    let first = run[0];
    if first.index > 0 {
        r.start_at_snapshot(first.index - 1)?;
    }
    let bar = ProgressBar::hidden();
    let mut handle = r.start()?;
    let mut checked = 0;
    for seg in run {
        let target = match seg.end_snapshot {
            Some(_) => seg.end,
            None => u64::MAX,
        };
        let verdict = match r.advance(&mut handle, target, &bar, &mut || false)? {
            super::Advance::Reached => match seg.end_snapshot {
                Some(k) => match r.check_snapshot(k)? {
                    Some(d) => Verdict::Diverged(Box::new(d)),
                    None => {
                        checked += 1;
                        continue;
                    }
                },
                None => Verdict::Stopped,
            },
            super::Advance::Ended(v) => v,
            super::Advance::Breakpoint(rip) => Verdict::Breakpoint(rip),
            super::Advance::Interrupted | super::Advance::Watch(_) => {
                unreachable!("nothing interrupts a parallel run, which sets no watchpoints")
            }
        };
        return Ok((r.finish(handle, verdict, &bar)?, checked));
    }
    // Every segment of a run that is not the last ended at its snapshot.
    let last = *run.last().expect("a run has segments");
    Ok((
        r.finish(handle, Verdict::SegmentMatched(last), &bar)?,
        checked,
    ))
}

/// Replay the trace at `path` on `jobs` threads, or only segment `only`.
pub fn replay(
    path: &Path,
    options: ReplayOptions,
    jobs: usize,
    only: Option<usize>,
    bar: &ProgressBar,
) -> Result<Parallel, ReplayError> {
    let t0 = std::time::Instant::now();
    let segments = Replayer::open(path, options.clone())?.segments();
    let runs = match only {
        Some(k) if k >= segments.len() => {
            return Err(ReplayError::Setup(format!(
            "--segment {k}: the trace has {} segments (0 to {}; `krr info` lists its snapshots)",
            segments.len(),
            segments.len() - 1
        )))
        }
        Some(k) => vec![vec![segments[k]]],
        None => split(&segments, jobs),
    };
    bar.set_message(format!(
        "{} segments on {} threads",
        segments.len(),
        runs.len()
    ));
    let consoles: Vec<Captured> = runs.iter().map(|_| Captured::default()).collect();
    let results: Vec<Result<(ReplayOutcome, usize), ReplayError>> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .zip(&consoles)
            .map(|(run, console)| {
                let options = options.clone();
                let console = console.clone();
                s.spawn(move || replay_run(path, options, run, console))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ReplayError::Fatal(
                        "internal error: a replay thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut console = Vec::new();
    let mut checked = 0;
    let mut chosen: Option<ReplayOutcome> = None;
    let (mut blocks, mut code, mut compile) = (0, 0, 0.0);
    for (result, captured) in results.into_iter().zip(&consoles) {
        let (outcome, n) = result?;
        checked += n;
        blocks += outcome.blocks_compiled;
        code += outcome.code_bytes;
        compile += outcome.compile_seconds;
        if chosen.is_none() {
            console.extend_from_slice(&captured.0.lock().expect("console buffer"));
        }
        let stop = !matches!(outcome.verdict, Verdict::SegmentMatched(_));
        if chosen.is_none() && (stop || only.is_some()) {
            chosen = Some(outcome);
        }
    }
    let mut outcome = chosen.expect("the last run ends the replay");
    outcome.seconds = t0.elapsed().as_secs_f64();
    outcome.blocks_compiled = blocks;
    outcome.code_bytes = code;
    outcome.compile_seconds = compile;
    Ok(Parallel {
        outcome,
        console,
        segments: segments.len(),
        jobs: runs.len(),
        checked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(lens: &[u64]) -> Vec<Segment> {
        let mut start = 0;
        lens.iter()
            .enumerate()
            .map(|(i, &l)| {
                let s = Segment {
                    index: i,
                    start,
                    end: start + l,
                    end_snapshot: (i + 1 < lens.len()).then_some(i),
                };
                start += l;
                s
            })
            .collect()
    }

    #[test]
    fn runs_are_consecutive_and_balanced() {
        let s = segs(&[10; 8]);
        let runs = split(&s, 2);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4]);
        let runs = split(&s, 3);
        assert_eq!(runs.len(), 3);
        let flat: Vec<usize> = runs.iter().flatten().map(|s| s.index).collect();
        assert_eq!(flat, (0..8).collect::<Vec<_>>());
        assert_eq!(split(&s, 20).len(), 8);
        assert_eq!(split(&segs(&[100]), 4).len(), 1);
        let runs = split(&segs(&[70, 10, 10, 10]), 2);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [1, 3]);
    }
}
