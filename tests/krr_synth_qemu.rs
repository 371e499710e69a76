//! Synthetic KRR recordings whose snapshot KRR's own replayer can load
//! (`krr_synth::from_qemu`: the recorder's state rebuilt on a stream Debian's QEMU 7.2 wrote
//! of the `pc-i440fx-7.0` machine KRR replays on). krr must replay the rebuilt snapshot to the
//! recorded state as it replays the recorder's own, and QEMU 7.2 must load it (`-incoming`)
//! with the recorded vCPU. The cross-check against KRR's QEMU itself is
//! `bench/krr-crosscheck-synth.sh`, which makes its recordings with the ignored test here.

mod krr_rec_writer;
mod krr_synth;

use krr::krr_rec::migration::Snapshot;
use krr_synth::{build_recording, from_qemu, Scenario};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn dir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("krr-synth-qemu-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn qemu() -> PathBuf {
    from_qemu::qemu72().expect("tests/guest/fetch-qemu.sh did not provide QEMU 7.2")
}

/// QEMU 7.2 loads `snap` (`-incoming`) on the template's machine and reports the vCPU's RIP
/// (its monitor asked until the migration completed or failed, at most a minute).
fn qemu_loads(qemu: &Path, snap: &Path, ring_size: u64) -> String {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let shm = snap.with_extension("ivshmem");
    let mut child = from_qemu::krr_machine(qemu, 90, &shm, ring_size)
        .arg("-incoming")
        .arg(format!("exec:cat {}", snap.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let out = out.clone();
        readers.push(std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }));
    }
    let mut stdin = child.stdin.take().unwrap();
    let text =
        |out: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(60) {
        if writeln!(stdin, "info migrate").is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let s = text(&out);
        if s.contains("Migration status: completed") || s.contains("Migration status: failed") {
            break;
        }
    }
    let _ = writeln!(stdin, "info registers\nquit");
    drop(stdin);
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    let _ = std::fs::remove_file(&shm);
    text(&out)
}

/// The small recording's snapshot rebuilt on QEMU's machine: the same RAM and vCPU for krr's
/// reader, loaded by QEMU 7.2 itself, and replayed by krr to the recorded state in both modes.
#[test]
fn qemu_machine_snapshot_replays_to_the_recorded_state() {
    let sc = Scenario::small();
    let r = build_recording(&sc, &dir("small-rec"));
    let q = qemu();
    let out = dir("small");
    let snap = from_qemu::krr_loadable(&r, &q, sc.ring_size, &out);
    let a = Snapshot::open(&r.snapshot).unwrap();
    let b = Snapshot::open(&snap).unwrap();
    assert_eq!(b.machine, "pc-i440fx-7.0");
    assert_eq!(a.ram.pages, b.ram.pages, "RAM");
    let (ca, cb) = (&a.vcpus[0].cpu, &b.vcpus[0].cpu);
    assert_eq!((ca.regs, ca.rip, ca.rflags), (cb.regs, cb.rip, cb.rflags));
    assert_eq!(
        (ca.cr0, ca.cr3, ca.cr4, ca.efer),
        (cb.cr0, cb.cr3, cb.cr4, cb.efer)
    );
    assert_eq!(
        (ca.segs, ca.gdt, ca.idt, ca.tr),
        (cb.segs, cb.gdt, cb.idt, cb.tr)
    );
    assert_eq!((ca.lstar, ca.star, ca.fmask), (cb.lstar, cb.star, cb.fmask));
    // The APIC's fields (QEMU's own apic_sipi subsection follows them).
    let (mut pa, mut pb) = (a.apic(0).unwrap().clone(), b.apic(0).unwrap().clone());
    (pa.subsections, pb.subsections) = (vec![], vec![]);
    assert_eq!(pa, pb, "APIC");
    assert_eq!(
        a.ivshmem.as_ref().unwrap().bar2(),
        b.ivshmem.as_ref().unwrap().bar2()
    );
    assert!(
        !b.ram_blocks.iter().any(|bl| bl.name.ends_with("/shm")),
        "ivshmem's RAM block dropped: {:?}",
        b.ram_blocks
    );
    let text = qemu_loads(&q, &snap, sc.ring_size);
    assert!(
        text.contains("Migration status: completed"),
        "QEMU 7.2 did not load the rebuilt snapshot: {text}"
    );
    assert!(
        text.contains(&format!("RIP={:016x}", r.start_rip)),
        "QEMU 7.2's vCPU is not at the recorded RIP {:#x}: {text}",
        r.start_rip
    );
    for singlestep in [false, true] {
        let got = krr_synth::replay_files(&snap, &r.vmlinux, &r.final_state, singlestep);
        assert_eq!(got.end, krr::krr_replay::driver::End::Finished);
        assert_eq!(got.state, r.final_state, "singlestep {singlestep}");
    }
}

/// Writes the cross-check's recordings (`bench/krr-crosscheck-synth.sh`): for each scenario
/// named in KRR_SYNTH_SCENARIOS (default `small,large`: Scenario::small/large without user-mode
/// #GPs, which KRR's replayer cannot replay; suffixes: `-gp` with them, as the test suite
/// records; `-interp` recorded by the interpreter; `-ring16` with a 16 MiB ring) the directory
/// KRR_SYNTH_OUT/NAME with
/// `test1` (QEMU's machine), `kernel_rr.log`, `vmlinux` and `recorded.txt` (the recorder's
/// final state), after checking that krr replays it to that state.
#[test]
#[ignore]
fn write_krr_qemu_recordings() {
    let Ok(out) = std::env::var("KRR_SYNTH_OUT") else {
        eprintln!("KRR_SYNTH_OUT not set: nothing written");
        return;
    };
    let names = std::env::var("KRR_SYNTH_SCENARIOS").unwrap_or("small,large".into());
    let q = qemu();
    for name in names.split(',') {
        // NAME is a scenario with suffixes: `-gp` records with user #GPs, `-interp` with the
        // interpreter only, `-ring16` with a 16 MiB ring (no rotations).
        let mut parts = name.split('-');
        let mut sc = match parts.next().unwrap() {
            "small" => Scenario::small(),
            "medium" => Scenario::medium(),
            "large" => Scenario::large(),
            _ => panic!("KRR_SYNTH_SCENARIOS: unknown scenario {name}"),
        };
        sc.user_gp = false;
        for p in parts {
            match p {
                "gp" => sc.user_gp = true,
                "interp" => sc.policy = krr_jit::TierPolicy::Interpret,
                "ring16" => sc.ring_size = 16 << 20,
                _ => panic!("KRR_SYNTH_SCENARIOS: unknown suffix -{p} in {name}"),
            }
        }
        let d = Path::new(&out).join(name);
        let _ = std::fs::remove_dir_all(&d);
        let r = build_recording(&sc, &d.join("recorder"));
        let snap = from_qemu::krr_loadable(&r, &q, sc.ring_size, &d);
        let got = krr_synth::replay_files(&snap, &r.vmlinux, &r.final_state, false);
        assert_eq!(got.state, r.final_state, "{name}: krr's replay");
        let f = &r.final_state;
        let mut s = format!(
            "scenario {name}: {} events, {} kernel instructions, {} rotations\n",
            r.events, f.inst_cnt, r.rotations
        );
        s += &format!(
            "recorded final state: inst_cnt {} rip {:#x} rflags {:#x} checksum {:#x} jiffies {}\n",
            f.inst_cnt, f.rip, f.rflags, f.checksum, f.jiffies
        );
        s += &format!("gpr {:x?}\n", f.gpr);
        std::fs::write(d.join("recorded.txt"), &s).unwrap();
        std::fs::remove_dir_all(d.join("recorder")).unwrap();
        eprint!("{}: {s}", d.display());
    }
}
