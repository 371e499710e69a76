//! KRR's replay command line as its users write it (a QEMU 7.0 command line, see
//! ../shared/docs/KRR-INTERFACE.md), taken apart for `krr replay`: the replay options mean what
//! they mean in KRR, options that only configure QEMU's hardware or UI are accepted and
//! ignored with a note, anything else is refused by name. Scripts built around KRR's command
//! line keep working.

use std::path::PathBuf;

/// `-replay-log-bound cpu=C,start=S,end=E`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBound {
    pub cpu: Option<u32>,
    pub start: u64,
    /// `None`: to the end (KRR's `end=0` or no `end`).
    pub end: Option<u64>,
}

/// `-s` / `-S` / `-gdb tcp::PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GdbRequest {
    pub port: u16,
    /// `-S`: wait for the debugger before the first instruction.
    pub wait: bool,
}

/// What a KRR replay command line asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KrrCommandLine {
    /// `-kernel-replay NAME`: the snapshot file (KRR's logs are found beside it).
    pub snapshot: Option<PathBuf>,
    pub singlestep: bool,
    /// `-D FILE`.
    pub log_file: Option<PathBuf>,
    pub log_bound: Option<LogBound>,
    /// `-replay-log-inst X`: log every instruction.
    pub log_every_instruction: bool,
    /// `-smp N`: the recording's vCPUs (checked against the snapshot).
    pub vcpus: Option<u32>,
    /// `-m SIZE` in bytes (checked against the snapshot).
    pub mem_bytes: Option<u64>,
    /// `-cpu MODEL[,FEATURES]` as a krr `--cpu` spec.
    pub cpu: Option<String>,
    pub autostart: bool,
    /// `-krr-debug`: a line per replayed event.
    pub krr_debug: bool,
    pub snapshot_period: Option<u64>,
    pub restore_snapshot_id: Option<u32>,
    pub gdb: Option<GdbRequest>,
    /// One line per option accepted but ignored, saying why.
    pub notes: Vec<String>,
}

/// QEMU options (with their argument or not) that configure hardware, firmware or the UI, which
/// a krr replay gets from the recording instead.
const IGNORED_WITH_ARG: &[&str] = &[
    "accel",
    "hda",
    "hdb",
    "hdc",
    "hdd",
    "cdrom",
    "drive",
    "device",
    "object",
    "monitor",
    "vnc",
    "display",
    "serial",
    "netdev",
    "nic",
    "net",
    "kernel",
    "append",
    "initrd",
    "machine",
    "M",
    "name",
    "boot",
    "rtc",
    "vga",
    "chardev",
    "mon",
    "qmp",
    "L",
    "bios",
    "global",
    "k",
    "pidfile",
    "usbdevice",
    "parallel",
    "audiodev",
    "fsdev",
    "virtfs",
    "smbios",
    "numa",
    "overcommit",
    "trace",
    "d",
    "msg",
];
const IGNORED_FLAGS: &[&str] = &[
    "no-hpet",
    "nographic",
    "no-reboot",
    "no-shutdown",
    "enable-kvm",
    "snapshot",
    "no-acpi",
    "daemonize",
    "usb",
    "no-user-config",
    "nodefaults",
];
/// KRR's record-side options: meaningless in a replay.
const RECORD_ONLY_WITH_ARG: &[&str] = &[
    "checkpoint-interval",
    "trace-mode",
    "exit-record",
    "record-skipsave",
    "ignore-record",
    "no-record-net",
    "kernel-memlog",
    "whole-system",
    "count-syscall",
];
const RECORD_ONLY_FLAGS: &[&str] = &["krr-trap"];

/// Does this argument list use KRR's (QEMU's) spelling rather than krr's?
pub fn is_krr_command_line(args: &[String]) -> bool {
    args.iter().any(|a| {
        a == "-kernel-replay"
            || a.ends_with("qemu-system-x86_64")
            || matches!(
                a.as_str(),
                "-replay-log-bound" | "-krr-autostart" | "-singlestep"
            )
    })
}

/// Take a KRR replay command line apart (`args` without `krr replay`; a leading
/// `qemu-system-x86_64` is skipped).
pub fn parse(args: &[String]) -> Result<KrrCommandLine, String> {
    let mut c = KrrCommandLine::default();
    let mut it = args.iter().peekable();
    if it.peek().is_some_and(|a| a.ends_with("qemu-system-x86_64")) {
        it.next();
    }
    while let Some(arg) = it.next() {
        // QEMU accepts `--option` as `-option` too.
        let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!(
                "unexpected argument `{arg}` in KRR's command line (QEMU takes no positional arguments)"
            ));
        };
        let mut value = |what: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("-{name} needs {what}"))
        };
        match name {
            "kernel-replay" => c.snapshot = Some(value("the snapshot's name")?.into()),
            "singlestep" => c.singlestep = true,
            "D" => c.log_file = Some(value("a file")?.into()),
            "replay-log-bound" => c.log_bound = Some(log_bound(&value("cpu=,start=,end=")?)?),
            "replay-log-inst" => {
                value("a value")?;
                c.log_every_instruction = true;
            }
            "smp" => c.vcpus = Some(smp(&value("a vCPU count")?)?),
            "m" => c.mem_bytes = Some(mem_size(&value("a size")?)?),
            "cpu" => c.cpu = Some(cpu_model(&value("a CPU model")?)?),
            "krr-autostart" => c.autostart = true,
            "krr-debug" => c.krr_debug = true,
            "snapshot-period" => c.snapshot_period = Some(number(name, &value("a count")?)?),
            "restore-snapshot-id" => {
                c.restore_snapshot_id = Some(number(name, &value("a snapshot id")?)? as u32)
            }
            "s" => c.gdb = Some(GdbRequest { port: 1234, wait: c.gdb.is_some_and(|g| g.wait) }),
            "S" => {
                let port = c.gdb.map_or(1234, |g| g.port);
                c.gdb = Some(GdbRequest { port, wait: true });
            }
            "gdb" => {
                let v = value("tcp::PORT")?;
                let port = v
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("-gdb {v}: krr listens on tcp::PORT"))?;
                c.gdb = Some(GdbRequest { port, wait: c.gdb.is_some_and(|g| g.wait) });
            }
            n if IGNORED_WITH_ARG.contains(&n) => {
                let v = value("a value")?;
                c.notes.push(format!("-{n} {v}: QEMU's hardware or UI; krr takes the machine from the recording"));
            }
            n if IGNORED_FLAGS.contains(&n) => {
                c.notes.push(format!("-{n}: QEMU's hardware or UI; krr takes the machine from the recording"));
            }
            n if RECORD_ONLY_WITH_ARG.contains(&n) => {
                let v = value("a value")?;
                c.notes.push(format!("-{n} {v}: a recording option, ignored in replay"));
            }
            n if RECORD_ONLY_FLAGS.contains(&n) => {
                c.notes.push(format!("-{n}: a recording option, ignored in replay"));
            }
            _ => {
                return Err(format!(
                    "unknown option `{arg}` in KRR's command line (krr takes KRR's replay options and ignores QEMU's hardware and UI options)"
                ))
            }
        }
    }
    if let Some(b) = c.log_bound {
        if let Some(end) = b.end {
            c.notes.push(format!(
                "-replay-log-bound end={end}: krr logs the documented window [start, end); KRR's own replayer stores end as the start (its set_log_bound) and logs every instruction after {end}"
            ));
        }
    }
    Ok(c)
}

fn number(what: &str, s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("-{what} {s}: not a number"))
}

/// `cpu=C,start=S,end=E` in any order, each optional but start (KRR's default 0).
fn log_bound(s: &str) -> Result<LogBound, String> {
    let mut b = LogBound {
        cpu: None,
        start: 0,
        end: None,
    };
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("-replay-log-bound {s}: `{part}` is not key=value"))?;
        let n: u64 = v
            .parse()
            .map_err(|_| format!("-replay-log-bound {s}: `{v}` is not a number"))?;
        match k {
            "cpu" => b.cpu = Some(n as u32),
            "start" => b.start = n,
            "end" => b.end = (n != 0).then_some(n),
            _ => {
                return Err(format!(
                    "-replay-log-bound {s}: unknown key `{k}` (cpu, start, end)"
                ))
            }
        }
    }
    if b.end.is_some_and(|e| e <= b.start) {
        return Err(format!("-replay-log-bound {s}: end must be above start"));
    }
    Ok(b)
}

/// `-smp N` or `-smp cpus=N,...`.
fn smp(s: &str) -> Result<u32, String> {
    let first = s.split(',').next().unwrap_or("");
    let n = first.strip_prefix("cpus=").unwrap_or(first);
    match n.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("-smp {s}: give the vCPU count (e.g. -smp 2)")),
    }
}

/// `-m 2G`, `-m 2048` (MiB), `-m size=512M,...`.
fn mem_size(s: &str) -> Result<u64, String> {
    let first = s.split(',').next().unwrap_or("");
    let v = first.strip_prefix("size=").unwrap_or(first);
    let (digits, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("-m {s}: not a size (e.g. 2G, 512M, 2048)"))?;
    let shift = match unit {
        "" | "M" | "m" | "MB" | "MiB" => 20,
        "G" | "g" | "GB" | "GiB" => 30,
        "K" | "k" | "KB" | "KiB" => 10,
        "T" | "t" | "TB" | "TiB" => 40,
        _ => return Err(format!("-m {s}: unknown unit `{unit}`")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("-m {s}: too large"))
}

/// QEMU's `-cpu MODEL[,+f|,-f|,f=on|,f=off]...` as krr's `--cpu` spec.
fn cpu_model(s: &str) -> Result<String, String> {
    let mut parts = s.split(',');
    let model = parts.next().unwrap_or("");
    let name = match model.to_ascii_lowercase().as_str() {
        "broadwell" | "broadwell-v1" => "broadwell",
        "icelake-client" | "icelake-client-v1" => "icelake-client",
        "max" => "max",
        "host" => {
            return Err(
                "-cpu host: krr does not know the recording host's CPU; give its CPUID with --cpuid FILE (a `cpuid -r` dump) instead".into(),
            )
        }
        _ => {
            return Err(format!(
                "-cpu {model}: krr models broadwell, icelake-client and max (see `krr run --cpu help`), or --cpuid FILE"
            ))
        }
    };
    let mut spec = name.to_string();
    for f in parts.filter(|f| !f.is_empty()) {
        let feature = if let Some(n) = f.strip_suffix("=on") {
            format!("+{n}")
        } else if let Some(n) = f.strip_suffix("=off") {
            format!("-{n}")
        } else if f.starts_with('+') || f.starts_with('-') {
            f.to_string()
        } else {
            return Err(format!(
                "-cpu {s}: `{f}` is not +FEATURE, -FEATURE, FEATURE=on or FEATURE=off"
            ));
        };
        spec.push(',');
        spec.push_str(&feature);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_documented_command_line() {
        let c = parse(&args(
            "qemu-system-x86_64 -accel tcg -smp 1 -cpu Broadwell -no-hpet -m 2G -hda disk.img \
             -kernel-replay test1 -singlestep -D rec.log -replay-log-bound start=0 -monitor stdio",
        ))
        .unwrap();
        assert_eq!(c.snapshot, Some("test1".into()));
        assert!(c.singlestep);
        assert_eq!(c.log_file, Some("rec.log".into()));
        assert_eq!(
            c.log_bound,
            Some(LogBound {
                cpu: None,
                start: 0,
                end: None
            })
        );
        assert_eq!(c.vcpus, Some(1));
        assert_eq!(c.mem_bytes, Some(2 << 30));
        assert_eq!(c.cpu.as_deref(), Some("broadwell"));
        assert_eq!(c.gdb, None);
        assert_eq!(c.notes.len(), 4, "{:?}", c.notes); // -accel, -no-hpet, -hda, -monitor
        assert!(is_krr_command_line(&args("-kernel-replay x")));
        assert!(!is_krr_command_line(&args("trace.krr --singlestep")));
    }

    #[test]
    fn the_validation_harness_command_line() {
        // KRR's validation/runtest.py replay line (kernel, append, ivshmem, vnc included).
        let c = parse(&args(
            "qemu-system-x86_64 -accel tcg -smp 1 -cpu Icelake-Client -no-hpet -m 2G -kernel bzImage \
             -append root=/dev/sda -hda rootfs.img -device ivshmem-plain,memdev=hostmem \
             -object memory-backend-file,size=4096M,share,mem-path=/dev/shm/ivshmem,id=hostmem \
             -vnc :0 -monitor stdio -kernel-replay test1 -singlestep -D out.log -krr-autostart",
        ))
        .unwrap();
        assert_eq!(c.cpu.as_deref(), Some("icelake-client"));
        assert!(c.autostart && c.singlestep);
        assert!(c
            .notes
            .iter()
            .any(|n| n.starts_with("-device ivshmem-plain")));
    }

    #[test]
    fn debugging_and_snapshots() {
        let c = parse(&args(
            "-kernel-replay t -s -S -snapshot-period 100000 -restore-snapshot-id 3 -krr-debug",
        ))
        .unwrap();
        assert_eq!(
            c.gdb,
            Some(GdbRequest {
                port: 1234,
                wait: true
            })
        );
        assert_eq!(c.snapshot_period, Some(100_000));
        assert_eq!(c.restore_snapshot_id, Some(3));
        assert!(c.krr_debug);
        let c = parse(&args("-gdb tcp::4321 -kernel-replay t")).unwrap();
        assert_eq!(
            c.gdb,
            Some(GdbRequest {
                port: 4321,
                wait: false
            })
        );
    }

    #[test]
    fn log_bounds_sizes_and_models() {
        let c = parse(&args("-replay-log-bound cpu=1,start=5,end=90")).unwrap();
        assert_eq!(
            c.log_bound,
            Some(LogBound {
                cpu: Some(1),
                start: 5,
                end: Some(90)
            })
        );
        assert!(c.notes[0].contains("set_log_bound"), "{:?}", c.notes);
        assert!(parse(&args("-replay-log-bound start=9,end=3")).is_err());
        assert!(parse(&args("-replay-log-bound begin=1")).is_err());
        assert_eq!(mem_size("2048"), Ok(2048 << 20));
        assert_eq!(mem_size("size=512M,slots=2,maxmem=4G"), Ok(512 << 20));
        assert_eq!(mem_size("4G"), Ok(4 << 30));
        assert!(mem_size("4X").is_err());
        assert_eq!(smp("cpus=2,sockets=1"), Ok(2));
        assert!(smp("0").is_err());
        assert_eq!(
            cpu_model("Broadwell,-hle,rtm=off,xsave=on").as_deref(),
            Ok("broadwell,-hle,-rtm,+xsave")
        );
        assert!(cpu_model("host").unwrap_err().contains("--cpuid"));
        assert!(cpu_model("Skylake-Server")
            .unwrap_err()
            .contains("broadwell"));
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse(&args("-kernel-replay t -frobnicate")).unwrap_err();
        assert!(e.contains("-frobnicate"), "{e}");
        let e = parse(&args("-kernel-replay")).unwrap_err();
        assert!(e.contains("-kernel-replay needs"), "{e}");
        let e = parse(&args("-m 2G stray")).unwrap_err();
        assert!(e.contains("stray"), "{e}");
        let c = parse(&args(
            "-checkpoint-interval 1000 -krr-trap -kernel-replay t",
        ))
        .unwrap();
        assert!(
            c.notes.iter().all(|n| n.contains("recording option")),
            "{:?}",
            c.notes
        );
    }
}
