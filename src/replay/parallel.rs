//! `krr replay --jobs N` and `--segment K`: the segments between a trace's delta snapshots
//! replayed concurrently. The segments are split into N runs of consecutive segments with
//! about the same number of instructions, one per thread with its own replayer (engine,
//! guest memory), which starts at the snapshot before its first segment and checks the
//! snapshot at the end of every segment it replays, so every boundary is checked by the
//! thread that arrives there. A thread that runs out of segments takes the back half of the
//! longest list another has not started (instruction counts are no measure of cost: the
//! boot's first half compiles more). The verdict is the first divergence in trace order, else the last
//! run's (the recording's end), whose event counts (carried in the snapshots) and console
//! output (each run's, printed in order) are those of a sequential replay.

use super::{ReplayError, ReplayOptions, ReplayOutcome, Replayer, Segment, Verdict};
use indicatif::ProgressBar;
use std::collections::VecDeque;
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

/// The segments each thread has yet to start, in trace order. A thread that runs out takes
/// the back half of the longest other list (the segments its owner has not started), so
/// threads that finish early help the others instead of waiting.
struct Plan {
    runs: Vec<VecDeque<Segment>>,
}

impl Plan {
    fn next(&mut self, w: usize) -> Option<Segment> {
        if let Some(s) = self.runs[w].pop_front() {
            return Some(s);
        }
        let left = |d: &VecDeque<Segment>| d.iter().map(|s| s.end - s.start).sum::<u64>();
        let v = (0..self.runs.len())
            .filter(|&v| v != w && !self.runs[v].is_empty())
            .max_by_key(|&v| left(&self.runs[v]))?;
        let keep = self.runs[v].len() / 2;
        self.runs[w] = self.runs[v].split_off(keep);
        self.runs[w].pop_front()
    }
}

/// What a thread reports of one segment.
struct Done {
    index: usize,
    console: Captured,
    /// How the replay ended in it (`None`: it matched the snapshot at its end and the same
    /// replayer went on).
    outcome: Option<ReplayOutcome>,
    checked: usize,
}

/// Engine work of a replayer a thread set aside (its stats go into the summary).
/// A replayer's blocks compiled, code bytes, compile seconds and resident guest RAM.
type Work = (u64, u64, f64, u64);

/// What a thread gives back: its segments, and the work of replayers it set aside.
type ThreadResult = Result<(Vec<Done>, Vec<Work>), ReplayError>;

fn work(o: &ReplayOutcome) -> Work {
    (
        o.blocks_compiled,
        o.code_bytes,
        o.compile_seconds,
        o.ram_resident,
    )
}

/// Thread `w`: take segments from `plan` until none is left; consecutive ones go on in one
/// replayer, any other starts a new one at the snapshot before it.
fn worker(
    path: &Path,
    options: &ReplayOptions,
    plan: &Mutex<Plan>,
    w: usize,
    lone: bool,
) -> ThreadResult {
    let bar = ProgressBar::hidden();
    let mut done = Vec::new();
    let mut set_aside = Vec::new();
    // The replayer, its run, and the segment it last matched.
    let mut cur: Option<(Replayer, super::Run, Segment)> = None;
    loop {
        let Some(seg) = plan.lock().expect("the plan").next(w) else {
            break;
        };
        if !matches!(&cur, Some((_, _, last)) if last.index + 1 == seg.index) {
            if let Some((mut r, run, last)) = cur.take() {
                set_aside.push(work(&r.finish(run, Verdict::SegmentMatched(last), &bar)?));
            }
            let mut r = Replayer::open(path, options.clone())?;
            if seg.index > 0 {
                r.start_at_snapshot(seg.index - 1)?;
            }
            let run = r.start()?;
            cur = Some((r, run, seg));
        }
        let (r, run, last) = cur.as_mut().expect("a replayer");
        let console = Captured::default();
        r.set_console(Some(Box::new(console.clone())));
        let target = match seg.end_snapshot {
            Some(_) => seg.end,
            None => u64::MAX,
        };
        let verdict = match r.advance(run, target, &bar, &mut || false)? {
            super::Advance::Reached => match seg.end_snapshot {
                Some(k) => match r.check_snapshot(k)? {
                    Some(d) => Verdict::Diverged(Box::new(d)),
                    None => {
                        *last = seg;
                        done.push(Done {
                            index: seg.index,
                            console,
                            outcome: None,
                            checked: 1,
                        });
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
        let (mut r, run, _) = cur.take().expect("a replayer");
        let outcome = r.finish(run, verdict, &bar)?;
        done.push(Done {
            index: seg.index,
            console,
            outcome: Some(outcome),
            checked: 0,
        });
    }
    if let Some((mut r, run, last)) = cur.take() {
        let o = r.finish(run, Verdict::SegmentMatched(last), &bar)?;
        if lone {
            // `--segment K`: the end of the one segment is the verdict.
            if let Some(d) = done.last_mut() {
                d.outcome = Some(o);
            }
        } else {
            set_aside.push(work(&o));
        }
    }
    Ok((done, set_aside))
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
    let options = ReplayOptions {
        no_read_ahead: true,
        ..options
    };
    let segments = super::segments(&mut crate::trace::TraceReader::open(path)?)?;
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
    let threads = runs.len();
    bar.set_message(format!("{} segments on {threads} threads", segments.len()));
    let plan = Mutex::new(Plan {
        runs: runs.into_iter().map(VecDeque::from).collect(),
    });
    let results: Vec<ThreadResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let (options, plan) = (&options, &plan);
                s.spawn(move || worker(path, options, plan, w, only.is_some()))
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
    let mut all: Vec<Done> = Vec::new();
    let mut works: Vec<Work> = Vec::new();
    for r in results {
        let (d, w) = r?;
        all.extend(d);
        works.extend(w);
    }
    all.sort_by_key(|d| d.index);
    let mut console = Vec::new();
    let mut chosen: Option<ReplayOutcome> = None;
    let checked = all.iter().map(|d| d.checked).sum();
    for d in &mut all {
        if chosen.is_some() {
            break;
        }
        console.extend_from_slice(&d.console.0.lock().expect("console buffer"));
        if let Some(o) = d.outcome.take() {
            works.push(work(&o));
            chosen = Some(o);
        }
    }
    for d in all.iter_mut().filter_map(|d| d.outcome.take()) {
        works.push(work(&d));
    }
    let mut outcome = chosen.expect("the last segment ends the replay");
    outcome.seconds = t0.elapsed().as_secs_f64();
    outcome.blocks_compiled = works.iter().map(|w| w.0).sum();
    outcome.code_bytes = works.iter().map(|w| w.1).sum();
    outcome.compile_seconds = works.iter().map(|w| w.2).sum();
    // Each thread's replayer has its own RAM: the largest one.
    outcome.ram_resident = works.iter().map(|w| w.3).max().unwrap_or(0);
    Ok(Parallel {
        outcome,
        console,
        segments: segments.len(),
        jobs: threads,
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
