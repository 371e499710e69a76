//! `KRR_PERF_MAP=1`: name every installed block in `/tmp/perf-PID.map`, the file `perf
//! report` reads for code it has no symbols for, so a profile of a replay shows time per
//! guest block (`krr_<linear start>_m<mode>`) instead of one anonymous JIT region.

use std::fs::File;
use std::io::Write;

pub(super) struct PerfMap(Option<File>);

impl PerfMap {
    /// Open the map when the environment asks for one (a failure is logged, not fatal).
    pub(super) fn from_env() -> PerfMap {
        if std::env::var_os("KRR_PERF_MAP").is_none_or(|v| v == "0") {
            return PerfMap(None);
        }
        let path = format!("/tmp/perf-{}.map", std::process::id());
        match File::create(&path) {
            Ok(f) => {
                log::info!("writing block names for perf to {path}");
                PerfMap(Some(f))
            }
            Err(e) => {
                log::warn!("KRR_PERF_MAP: cannot create {path}: {e}");
                PerfMap(None)
            }
        }
    }

    /// Name the code at `code` (`size` bytes) after the guest block it runs.
    pub(super) fn name(&mut self, code: *const u8, size: usize, start: u64, mode: u32) {
        let Some(f) = self.0.as_mut() else { return };
        // One write per line, unbuffered: perf may read the file while krr still runs.
        let line = format!("{:x} {size:x} krr_{start:x}_m{mode}\n", code as usize);
        if let Err(e) = f.write_all(line.as_bytes()) {
            log::warn!("KRR_PERF_MAP: {e}; no more block names");
            self.0 = None;
        }
    }
}
