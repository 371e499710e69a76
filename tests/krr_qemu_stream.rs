//! Real QEMU migration streams: Debian's QEMU 7.2 (tests/guest/fetch-qemu.sh, which the test
//! suite already fetches) writes snapshots with its monitor's `migrate "exec:cat > FILE"` on
//! the `pc` machine KRR uses, with an ivshmem-plain device as KRR's recordings have: a 512 MiB
//! guest stopped while booting the test kernel and a 4 GiB two-vCPU guest stopped before its
//! first instruction (`-S`). krr's reader must read them whole (every device section it does
//! not read skipped by the stream's description, the ones it reads matching it) and find the
//! RAM size, plausible registers and the APICs. Each QEMU run is bounded (`LIMIT`).

mod guest_boot;

use guest_boot::{guest, root};
use krr::krr_rec::migration::Snapshot;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per QEMU run (the 512 MiB boot reaches the kernel in about 3 s on an idle machine).
const LIMIT: Duration = Duration::from_secs(120);

struct Qemu {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Qemu {
    fn start(args: &[String]) -> Qemu {
        let qemu = root().join("tests/guest/cache/qemu/qemu-system-x86_64");
        assert!(
            qemu.exists(),
            "tests/guest/fetch-qemu.sh did not provide QEMU"
        );
        let mut child = Command::new(qemu)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting QEMU");
        let out = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        let stdin = child.stdin.take().unwrap();
        Qemu { child, stdin, out }
    }
    fn cmd(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").expect("writing to QEMU's monitor");
        self.stdin.flush().unwrap();
    }
    fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }
    /// Poll until `done(output)`; panics after the time limit.
    fn wait(&mut self, start: Instant, what: &str, mut done: impl FnMut(&mut Qemu) -> bool) {
        while !done(self) {
            if start.elapsed() > LIMIT {
                let _ = self.child.kill();
                panic!(
                    "QEMU: no {what} within {LIMIT:?}; output:\n{}",
                    self.output()
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("QEMU exited ({status}) before {what}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    /// Stop the guest, write the snapshot, wait for the migration to complete, quit.
    fn snapshot(mut self, start: Instant, file: &Path) {
        self.cmd("stop");
        self.cmd(&format!("migrate \"exec:cat > {}\"", file.display()));
        self.wait(start, "completed migration", |q| {
            q.cmd("info migrate");
            std::thread::sleep(Duration::from_millis(200));
            let o = q.output();
            assert!(
                !o.contains("Migration status: failed"),
                "migration failed:\n{o}"
            );
            assert!(!o.contains("Error:"), "QEMU refused:\n{o}");
            o.contains("Migration status: completed")
        });
        self.cmd("quit");
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.wait();
    }
}

fn base_args(dir: &Path, mem: &str, smp: u32) -> Vec<String> {
    let shm = dir.join("ivshmem");
    [
        "-M",
        "pc",
        "-accel",
        "tcg",
        "-m",
        mem,
        "-smp",
        &smp.to_string(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "stdio",
        "-object",
        &format!(
            "memory-backend-file,id=shm,mem-path={},size=1M,share=on",
            shm.display()
        ),
        // master=on: ivshmem's peer mode blocks migration.
        "-device",
        "ivshmem-plain,memdev=shm,master=on",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("krr-qemu-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read(file: &Path) -> Snapshot {
    let s = Snapshot::open(file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.machine, "pc-i440fx-7.2");
    assert!(s.described, "QEMU 7.2 writes the VM description");
    assert_eq!(s.end, s.file_len, "a single stream");
    for want in ["cpu", "cpu_common", "apic", "i8259", "ioapic"] {
        assert!(
            s.sections.iter().any(|x| x.name == want && x.read),
            "no `{want}` section read: {:?}",
            s.sections
        );
    }
    // The rest were skipped by their description.
    assert!(s.sections.iter().filter(|x| !x.read).count() > 20);
    assert!(s.ivshmem.is_some());
    assert!(s.pic(0).is_some() && s.pic(1).is_some() && s.ioapic.is_some());
    s
}

/// A booted guest's 8259s have the vector bases SeaBIOS (0x08/0x70) or Linux
/// (ISA_IRQ_VECTOR(0): 0x30/0x38) programmed: the fields are where the description puts them.
fn assert_pics_programmed(s: &Snapshot) {
    let (master, slave) = (s.pic(0).unwrap(), s.pic(1).unwrap());
    assert!(
        matches!(
            (master.irq_base, slave.irq_base),
            (0x08, 0x70) | (0x30, 0x38)
        ),
        "{master:?} {slave:?}"
    );
}

/// A 512 MiB guest booting the test kernel, stopped once the kernel has printed its banner.
#[test]
fn qemu_7_2_snapshot_of_a_booting_512m_guest() {
    let (kernel, initrd) = guest();
    let dir = tmpdir("512m");
    let console = dir.join("console");
    let mut args = base_args(&dir, "512M", 1);
    args.extend(
        [
            "-kernel",
            &kernel,
            "-initrd",
            &initrd,
            "-append",
            "console=ttyS0 nokaslr panic=-1",
            "-serial",
            &format!("file:{}", console.display()),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let start = Instant::now();
    let mut q = Qemu::start(&args);
    q.wait(start, "kernel banner", |_| {
        std::fs::read_to_string(&console)
            .map(|c| c.contains("Calibrating delay loop") || c.contains("pid_max"))
            .unwrap_or(false)
    });
    let file = dir.join("test1");
    q.snapshot(start, &file);
    let s = read(&file);
    assert_pics_programmed(&s);
    assert_eq!(s.ram.size, 512 << 20);
    assert_eq!(s.ram.below_4g(), 512 << 20);
    assert_eq!(s.vcpus.len(), 1);
    let c = &s.vcpus[0].cpu;
    // Inside the 64-bit kernel: paging and protection on, long mode active.
    assert_eq!(c.cr0 & 0x8000_0001, 0x8000_0001, "CR0 {:#x}", c.cr0);
    assert_ne!(c.efer & 0x400, 0, "EFER.LMA: {:#x}", c.efer);
    assert_ne!(c.cr4 & 0x20, 0, "CR4.PAE: {:#x}", c.cr4);
    if c.cpl() == 0 {
        assert!(c.rip >= 0xffff_8000_0000_0000, "RIP {:#x}", c.rip);
    }
    assert_ne!(c.lstar, 0, "the kernel has set up SYSCALL");
    let apic = s.apic(0).expect("APIC 0");
    assert_eq!(apic.apicbase & 0xffff_f000, 0xfee0_0000);
    assert_eq!(apic.id, 0);
    // The firmware put ivshmem's BAR2 somewhere aligned.
    let bar2 = s.ivshmem.as_ref().unwrap().bar2();
    assert!(bar2 != 0 && bar2.is_multiple_of(1 << 20), "BAR2 {bar2:#x}");
    // The kernel's banner is in RAM, where the kernel's log buffer holds it.
    let banner = b"Linux version 6.1";
    let found = s
        .ram
        .pages
        .values()
        .any(|p| p.windows(banner.len()).any(|w| w == banner));
    assert!(found, "no kernel banner in {} RAM pages", s.ram.pages.len());
    // krr's engine runs the snapshotted kernel from there: RAM copied in, the vCPU as krr's
    // state (segments, control registers, paging), 2000 instructions through the kernel's own
    // IDT. Where QEMU stopped depends on the host's speed: a slow host can stop just before
    // `int3_selftest` (alternative_instructions), whose INT3 the kernel's handler must take,
    // so exceptions are delivered, and the run must neither triple-fault nor meet an
    // instruction krr lacks.
    let (arch, notes) = krr::krr_replay::cpu::arch_state(c).expect("vCPU state");
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(arch.cpl(), c.cpl());
    assert_eq!(arch.rflags_value(), c.rflags | 2);
    let mut core = krr_runtime::Core::new(s.ram.size).unwrap();
    for (&offset, page) in &s.ram.pages {
        let gpa = s.ram.gpa_of(offset).expect("RAM below 4 GiB");
        core.mem_mut().write(gpa, page).unwrap();
    }
    *core.arch_mut() = arch;
    core.flush_tlb();
    core.set_icount_limit(2000);
    let mut engine = krr_jit::Engine::new(krr_jit::EngineConfig {
        deliver_exceptions: true,
        ..Default::default()
    })
    .unwrap();
    // Devices as an empty bus (all-ones reads, writes ignored): whatever the kernel was doing
    // at the snapshot (the serial console, the PIT), it runs on.
    struct FloatingBus;
    impl krr_runtime::Bus for FloatingBus {
        fn port_in(&mut self, _: &krr_runtime::CpuState, _: u16, size: u8) -> u32 {
            (u64::MAX >> (64 - 8 * size as u32)) as u32
        }
        fn port_out(&mut self, _: &krr_runtime::CpuState, _: u16, _: u8, _: u32) {}
        fn mmio_read(&mut self, _: &krr_runtime::CpuState, _: u64, size: u8) -> u64 {
            u64::MAX >> (64 - 8 * size as u32)
        }
        fn mmio_write(&mut self, _: &krr_runtime::CpuState, _: u64, _: u8, _: u64) {}
        fn rdtsc(&mut self, cpu: &krr_runtime::CpuState) -> u64 {
            cpu.icount
        }
        fn rdrand(&mut self, _: &krr_runtime::CpuState, _: u8, _: bool) -> Option<u64> {
            None
        }
    }
    let exit = engine.run_with_bus(&mut core, &mut FloatingBus);
    assert_eq!(
        exit,
        krr_jit::Exit::Budget,
        "RIP {:#x} after {} instructions",
        core.cpu().rip,
        core.cpu().icount
    );
    assert_eq!(core.cpu().icount, 2000);
    assert_eq!(engine.stats.unimplemented, 0, "an instruction krr lacks");
    assert!(core.cpu().rip >= 0xffff_8000_0000_0000 || c.cpl() != 0);
    // `krr info --krr` reads it too, with no kernel_rr.log beside it.
    let out = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["info", "--krr"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("machine: pc-i440fx-7.2, 512 MiB RAM"),
        "{text}"
    );
    assert!(text.contains("kernel_rr.log: missing"), "{text}");
    assert!(start.elapsed() < 2 * LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 4 GiB two-vCPU guest before its first instruction: 3 GiB below 4 GiB, 1 GiB above.
#[test]
fn qemu_7_2_snapshot_of_a_4g_guest() {
    let dir = tmpdir("4g");
    let mut args = base_args(&dir, "4G", 2);
    args.push("-S".into());
    let start = Instant::now();
    let q = Qemu::start(&args);
    let file = dir.join("test1");
    q.snapshot(start, &file);
    let s = read(&file);
    assert_eq!(s.ram.size, 4 << 30);
    assert_eq!(s.ram.below_4g(), 3 << 30);
    assert_eq!(s.ram.gpa_of(3 << 30), Some(4 << 30));
    assert_eq!(s.ram.gpa_ranges(), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
    assert_eq!(s.vcpus.len(), 2);
    for (i, v) in s.vcpus.iter().enumerate() {
        let c = &v.cpu;
        // The reset state: CS:IP f000:fff0 with CS base ffff0000, CR0 60000010.
        assert_eq!(c.rip, 0xfff0);
        assert_eq!(c.segs[1].selector, 0xf000);
        assert_eq!(c.segs[1].base, 0xffff_0000);
        assert_eq!(c.cr0, 0x6000_0010);
        assert_eq!(c.rflags, 2);
        assert_eq!(c.interrupt_injected, -1);
        // The application processor waits for its SIPI.
        assert_eq!(v.common.as_ref().unwrap().halted, (i == 1) as u32);
        let a = s.apic(i as u32).expect("an APIC per vCPU");
        assert_eq!(a.id as usize, i);
        assert_eq!(a.apicbase & 0x100 != 0, i == 0, "BSP flag");
    }
    assert!(start.elapsed() < LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
}
