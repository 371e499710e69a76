//! The vmlinux reader and KRR's trap points (krr-spec 3.7) on a tiny kernel image assembled and
//! linked here (tests/krr_kernel/trap_points.S, at the kernel's link address): symbols, the
//! DWARF line of LOCK_RELEASE, the disassembly scans of PF_EXEC_END and RR_LOCK_ACQUIRE_RET,
//! the KASLR slide and the refusals (another build's vmlinux, a stripped one, not an ELF).

use krr::vmlinux::traps::{kaslr_slide, SourceLine, TrapPoint, TrapPoints};
use krr::vmlinux::{Vmlinux, VmlinuxError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Assemble and link `tests/krr_kernel/trap_points.S` (with `--defsym` symbols `extra`) into
/// a fresh directory; returns the image's path.
fn build(tag: &str, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/krr_kernel/trap_points.S");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vmlinux-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("trap_points.o");
    let out = dir.join("vmlinux");
    let mut asm = Command::new("as");
    asm.arg("--64").arg("-o").arg(&obj).arg(&src);
    for d in extra {
        asm.arg("--defsym").arg(d);
    }
    let st = asm.status().expect("as (binutils) runs");
    assert!(st.success(), "as failed");
    let st = Command::new("ld")
        .args(["-static", "-nostdlib", "-e", "entry_SYSCALL_64"])
        .arg("-Ttext=0xffffffff81000000")
        .arg("-o")
        .arg(&out)
        .arg(&obj)
        .status()
        .expect("ld runs");
    assert!(st.success(), "ld failed");
    out
}

fn sym(v: &Vmlinux, name: &str) -> u64 {
    v.symbol(name).unwrap_or_else(|| panic!("{name}")).addr
}

#[test]
fn trap_points_resolve_from_symbols_lines_and_scans() {
    let v = Vmlinux::open(&build("plain", &[])).unwrap();
    assert_eq!(sym(&v, "entry_SYSCALL_64"), 0xffff_ffff_8100_0000);
    let slide = 0x1e00_0000u64;
    let t = TrapPoints::resolve(&v, slide, true, &SourceLine::krr_lock_release()).unwrap();
    let expect = [
        (TrapPoint::CfuBegin, "rr_cfu_begin"),
        (TrapPoint::GfuBegin, "rr_gfu_begin"),
        (TrapPoint::PteClear, "rr_record_pte_clear"),
        (TrapPoint::PteRead, "rr_read_pte"),
        (TrapPoint::PteReadOnce, "rr_read_pte_once"),
        (TrapPoint::PageMap, "rr_record_page_map"),
        (TrapPoint::PfExec, "exc_page_fault"),
        (TrapPoint::GpExec, "exc_general_protection"),
        // The first branch to irqentry_exit (a JMP here, a CALL follows).
        (TrapPoint::PfExecEnd, "test_pf_exec_end"),
        // The last return: the JMP to the return thunk after an earlier RET.
        (TrapPoint::LockAcquireRet, "test_acquire_ret"),
        // rr_serialize.c:147, from the DWARF line table.
        (TrapPoint::LockRelease, "test_lock_release"),
    ];
    for (point, name) in expect {
        let want = sym(&v, name) + slide;
        assert_eq!(t.addr(point), Some(want), "{} = {name}", point.name());
        assert_eq!(t.at(want), Some(point), "{}", point.name());
    }
    // Not in this guest patch: the io_uring points are optional.
    assert_eq!(t.addr(TrapPoint::IoUringBegin), None);
    assert_eq!(t.iter().count(), expect.len());
    // A uniprocessor recording does not need the exec-lock points.
    let up = TrapPoints::resolve(&v, 0, false, &SourceLine::krr_lock_release()).unwrap();
    assert_eq!(up.addr(TrapPoint::LockRelease), None);
    assert_eq!(up.addr(TrapPoint::CfuBegin), Some(sym(&v, "rr_cfu_begin")));
    // A line outside rr_release_smp_exec is refused with the way out.
    let wrong = SourceLine {
        file: "arch/x86/kernel/rr_serialize.c".into(),
        line: 999,
    };
    let e = TrapPoints::resolve(&v, 0, true, &wrong)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("LOCK_RELEASE") && e.contains("--krr-lock-release"),
        "{e}"
    );
}

#[test]
fn kaslr_slide_is_checked_against_the_banner() {
    let v = Vmlinux::open(&build("kaslr", &[])).unwrap();
    let banner = v.symbol("linux_banner").unwrap();
    let text = v.bytes(banner.addr, banner.size).unwrap().to_vec();
    let slide = 0x3a00_0000u64;
    let lstar = sym(&v, "entry_SYSCALL_64") + slide;
    // The snapshot's memory: the banner where the slid kernel has it.
    let memory = |at: u64, buf: &mut [u8]| {
        if at == banner.addr + slide {
            buf.copy_from_slice(&text[..buf.len()]);
            true
        } else {
            false
        }
    };
    assert_eq!(kaslr_slide(&v, lstar, memory).unwrap(), slide);
    // Another build: same layout, another banner.
    let other = |at: u64, buf: &mut [u8]| {
        let mut t = text.clone();
        t[22] ^= 1;
        memory(at, buf) && {
            buf.copy_from_slice(&t[..buf.len()]);
            true
        }
    };
    let e = kaslr_slide(&v, lstar, other).unwrap_err().to_string();
    assert!(e.contains("does not belong to this snapshot"), "{e}");
    // LSTAR that is no slide of entry_SYSCALL_64.
    let e = kaslr_slide(&v, lstar + 0x40, memory)
        .unwrap_err()
        .to_string();
    assert!(e.contains("IA32_LSTAR"), "{e}");
    // The banner not mapped at the slid address.
    let e = kaslr_slide(&v, lstar + 0x20_0000, memory)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not mapped"), "{e}");
}

#[test]
fn unusable_images_are_refused_with_the_reason() {
    let path = build("strip", &[]);
    let stripped = path.with_file_name("vmlinux.stripped");
    let st = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&path)
        .status()
        .expect("strip runs");
    assert!(st.success());
    match Vmlinux::open(&stripped) {
        Err(e @ VmlinuxError::NoSymbols { .. }) => {
            assert!(e.to_string().contains("stripped"), "{e}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a stripped image was accepted"),
    }
    let not_elf = path.with_file_name("not-elf");
    std::fs::write(&not_elf, b"#!/bin/sh\necho this is no kernel\n").unwrap();
    let e = Vmlinux::open(&not_elf).err().expect("refused").to_string();
    assert!(e.contains("not an x86-64 ELF"), "{e}");
    let e = Vmlinux::open(&path.with_file_name("missing"))
        .err()
        .expect("refused");
    assert!(matches!(e, VmlinuxError::Io { .. }), "{e}");
    // A kernel without KRR's guest agent.
    let v = Vmlinux::open(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // Rename rr_cfu_begin in the string table: the agent's entry point is gone.
    let at: Vec<usize> = (0..bytes.len() - 13)
        .filter(|&i| &bytes[i..i + 13] == b"rr_cfu_begin\0")
        .collect();
    assert!(!at.is_empty());
    for i in at {
        bytes[i] = b'X';
    }
    let renamed = Vmlinux::parse(Path::new("renamed"), bytes).unwrap();
    let e = TrapPoints::resolve(&renamed, 0, false, &SourceLine::krr_lock_release())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rr_cfu_begin") && e.contains("guest agent"),
        "{e}"
    );
    drop(v);
}

mod krr_rec_writer;

/// `krr info --krr SNAPSHOT --vmlinux VMLINUX` on a snapshot (written by the test writer)
/// whose vCPU has the tiny kernel loaded 30 MiB above its link address: LSTAR at the slid
/// `entry_SYSCALL_64`, page tables mapping the slid image, the banner in RAM. The slide and
/// every trap point are printed; the same snapshot with one banner byte changed (another
/// build of the kernel) is refused, non-zero exit.
#[test]
fn krr_info_checks_a_vmlinux_against_the_snapshot() {
    use krr_rec_writer::migration as wm;
    let path = build("info", &[]);
    let v = Vmlinux::open(&path).unwrap();
    let slide = 0x1e0_0000u64;
    let banner = v.symbol("linux_banner").unwrap();
    let text = v.bytes(banner.addr, banner.size).unwrap().to_vec();
    let va = banner.addr + slide;
    // PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> a 2 MiB page at 0x20_0000 for the banner.
    let idx = |level: u32| ((va >> (12 + 9 * level)) & 0x1ff) as usize * 8;
    let table = |at: usize, entry: u64| {
        let mut p = vec![0u8; 4096];
        p[at..at + 8].copy_from_slice(&entry.to_le_bytes());
        p
    };
    let in_page = (va & 0x1f_ffff) as usize;
    let snapshot = |banner_text: &[u8]| {
        let mut st = wm::sample_stream(16 << 20, 1);
        st.pages.retain(|p| p.0 != "pc.ram");
        let mut data = vec![0u8; 4096];
        let at = in_page & 0xfff;
        data[at..at + banner_text.len()].copy_from_slice(banner_text);
        for (gpa, bytes) in [
            (0x1000, table(idx(3), 0x2003)),
            (0x2000, table(idx(2), 0x3003)),
            (0x3000, table(idx(1), 0x20_0083)),
            (0x20_0000 + (in_page as u64 & !0xfff), data),
        ] {
            st.pages.push(("pc.ram".into(), gpa, wm::Page::Data(bytes)));
        }
        let mut c = wm::sample_cpu(0);
        c.cr3 = 0x1000;
        c.lstar = v.symbol("entry_SYSCALL_64").unwrap().addr + slide;
        for d in st.devices.iter_mut().filter(|d| d.name == "cpu") {
            d.fields = wm::cpu_fields(&c);
        }
        st.bytes()
    };
    let dir = path.parent().unwrap().join("recording");
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("test1");
    let info = |bytes: Vec<u8>| {
        std::fs::write(&snap, bytes).unwrap();
        Command::new(env!("CARGO_BIN_EXE_krr"))
            .args(["info", "--krr"])
            .arg(&snap)
            .arg("--vmlinux")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = info(snapshot(&text));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("KASLR slide 0x1e00000"), "{stdout}");
    assert!(stdout.contains("Linux version 6.1.0-krr-test"), "{stdout}");
    let cfu = sym(&v, "rr_cfu_begin") + slide;
    assert!(
        stdout.contains(&format!("RR_CFU_BEGIN               {cfu:#x}")),
        "{stdout}"
    );
    assert!(stdout.contains("PF_EXEC_END"), "{stdout}");
    // Without kernel_rr.log the recording holds zero events: its replay ends at once.
    let replay = || {
        Command::new(env!("CARGO_BIN_EXE_krr"))
            .args(["replay", "--krr"])
            .arg(&snap)
            .arg("--vmlinux")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = replay();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Replay finished"), "{stdout}");
    assert!(
        stdout.contains("=== Event Stats ===\nInterrupt: 0\n"),
        "{stdout}"
    );
    assert!(stdout.contains("Total Replay Events: 0\n"), "{stdout}");
    // KRR's own command line works too; its -m and -smp are checked against the recording.
    let qemu = |mem: &str| {
        Command::new(env!("CARGO_BIN_EXE_krr"))
            .args([
                "replay",
                "-accel",
                "tcg",
                "-smp",
                "1",
                "-cpu",
                "Broadwell",
                "-no-hpet",
            ])
            .args(["-m", mem, "-kernel-replay"])
            .arg(&snap)
            .args(["-singlestep", "-krr-autostart", "--vmlinux"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = qemu("16M");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Replay finished"), "{stdout}");
    assert!(stderr.contains("note: -accel tcg"), "{stderr}");
    let out = qemu("2G");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("-m 2048 MiB, but the recording's guest has 16 MiB"),
        "{stderr}"
    );

    let mut other = text.clone();
    other[22] ^= 1;
    let out = info(snapshot(&other));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not belong to this snapshot"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let out = replay();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("does not belong to this snapshot"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}
