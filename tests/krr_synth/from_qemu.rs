//! Synthetic recordings that KRR's own replayer (its QEMU 7.0 fork) can load (issue 15 item
//! 8, the cross-check). The recorder's snapshot (`test1`, written by the test writer) holds
//! only the sections krr reads; KRR's QEMU restores a whole `pc-i440fx-7.0` machine and
//! refuses a stream whose devices it does not know. So the snapshot is rebuilt on a real
//! one: Debian's QEMU 7.2 (`tests/guest/fetch-qemu.sh`) writes the machine KRR replays on
//! (`-M pc-i440fx-7.0 -no-hpet -nodefaults`, 64 MiB, ivshmem-plain at 00:04.0) stopped at
//! reset (`-S`, `migrate "exec:cat > FILE"`), and [`transplant`] puts the recording's state
//! into that stream:
//! - RAM: the template's `pc.ram` records are dropped and the recording's non-zero pages
//!   written instead (the destination's RAM starts zeroed); ivshmem's BAR2 block is dropped
//!   (non-migratable in KRR's QEMU; the ring comes from `kernel_rr.log`); the firmware and
//!   ACPI blocks stay as QEMU wrote them.
//! - `cpu`: the recording's architectural state (the fields the writer's `qemu_cpu` fills)
//!   over the template's fields; QEMU's own hflags2 (GIF), MTRRs, A20 mask, SMBASE and its
//!   subsections stay.
//! - `apic`: the recording's APIC fields (xAPIC enabled, the timer LVT at the kernel's vector).
//! - ivshmem: BAR2 at the recording's address, memory decoding on, in the PCI config.
//! - both 8259s masked (IMR 0xff), as Linux leaves them, and the PIT stopped (channel 0's IRQ
//!   disabled, no next transition: QEMU re-arms no timer at load). QEMU's PIT counts from
//!   reset: its IRQ0 would reach the vCPU through the 8259 and LINT0 (ExtINT) at some
//!   wall-clock moment, an interrupt the recording does not have (the recorder's machine has
//!   no PIT), and even masked, each of its ticks kicks the vCPU thread out of its loop, which
//!   makes KRR's replayer handle a trap point twice now and then (see bench/krr-crosscheck.sh).
//!
//! Every section keeps its size, so the stream's own VM description stays right. The log
//! and the vmlinux are the recording's; krr replays the rebuilt snapshot exactly as the
//! original (checked by `tests/krr_synth_qemu.rs`).

use crate::krr_rec_writer::migration as wm;
use krr::krr_rec::migration::{section, Snapshot};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PCI slot of ivshmem in the template (the writer's `0000:00:04.0/ivshmem-plain`).
pub const IVSHMEM_SLOT: u8 = 4;

/// Debian's QEMU 7.2 (fetched into tests/guest/cache), or None when it cannot be had.
pub fn qemu72() -> Option<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/fetch-qemu.sh");
    let out = Command::new("timeout")
        .arg("600")
        .arg(&script)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "fetch-qemu.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
    p.exists().then_some(p)
}

/// QEMU (`qemu`, killed after `secs` seconds) started as the machine KRR replays on, stopped
/// (`-S`) with its monitor on stdio: pc-i440fx-7.0, 64 MiB (the synthetic machine's RAM), no
/// HPET, no default devices, and ivshmem-plain at slot [`IVSHMEM_SLOT`] backed by `shm`
/// (`ring_size` bytes).
pub fn krr_machine(qemu: &Path, secs: u32, shm: &Path, ring_size: u64) -> Command {
    let mut c = Command::new("timeout");
    c.arg(secs.to_string())
        .arg(qemu)
        .args(["-M", "pc-i440fx-7.0", "-accel", "tcg", "-cpu", "Broadwell"])
        .args(["-m", &format!("{}M", super::machine::RAM_SIZE >> 20)])
        .args(["-smp", "1", "-no-hpet", "-nodefaults", "-no-user-config"])
        .args([
            "-display", "none", "-serial", "none", "-S", "-monitor", "stdio",
        ])
        .arg("-object")
        .arg(format!(
            "memory-backend-file,id=shm,mem-path={},size={ring_size},share=on",
            shm.display()
        ))
        .arg("-device")
        .arg(format!(
            "ivshmem-plain,memdev=shm,master=on,addr={IVSHMEM_SLOT:#x}"
        ));
    c
}

/// Write the template stream into `dir/template` with `qemu` (Debian's 7.2): the machine
/// KRR replays on, at reset, with an ivshmem-plain BAR2 of `ring_size` bytes.
pub fn write_template(qemu: &Path, dir: &Path, ring_size: u64) -> PathBuf {
    use std::io::Write;
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("template");
    let shm = dir.join("template-ivshmem");
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&shm);
    let mut child = krr_machine(qemu, 60, &shm, ring_size)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", qemu.display()));
    // `migrate` returns when the migration finished (the VM is stopped: no iterations).
    writeln!(
        child.stdin.as_mut().unwrap(),
        "migrate \"exec:cat > {}\"\ninfo migrate\nquit",
        out.display()
    )
    .unwrap();
    let res = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&res.stdout);
    assert!(
        text.contains("Migration status: completed"),
        "QEMU 7.2 did not write the template: {text}\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let _ = std::fs::remove_file(&shm);
    out
}

const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;

struct Cursor<'a> {
    b: &'a [u8],
    p: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        assert!(
            self.p + n <= self.b.len(),
            "template truncated at {}",
            self.p
        );
        let r = &self.b[self.p..self.p + n];
        self.p += n;
        r
    }
    fn u8(&mut self) -> u8 {
        self.take(1)[0]
    }
    fn be64(&mut self) -> u64 {
        u64::from_be_bytes(self.take(8).try_into().unwrap())
    }
    fn str8(&mut self) -> String {
        let n = self.u8() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
}

/// One RAM page record: block, offset in it, body (4096 bytes, or the ZERO fill byte).
struct Rec {
    block: String,
    offset: u64,
    zero: bool,
    body: Vec<u8>,
}

fn put_rec(o: &mut Vec<u8>, last: &mut Option<String>, r: &Rec) {
    let mut h = r.offset | if r.zero { FLAG_ZERO } else { FLAG_PAGE };
    let named = last.as_deref() != Some(&r.block);
    if !named {
        h |= FLAG_CONTINUE;
    }
    o.extend_from_slice(&h.to_be_bytes());
    if named {
        o.push(r.block.len() as u8);
        o.extend_from_slice(r.block.as_bytes());
        *last = Some(r.block.clone());
    }
    o.extend_from_slice(&r.body);
}

/// Rebuild `recorded` (a snapshot of the synthetic machine written by the test writer) on
/// `template` (QEMU's stream of the machine at reset): see the module's doc.
pub fn transplant(recorded: &Path, template: &Path, out: &Path) {
    let rec = Snapshot::open(recorded).unwrap_or_else(|e| panic!("{e}"));
    let tpl = Snapshot::open(template).unwrap_or_else(|e| panic!("{e}"));
    let b = std::fs::read(template).unwrap();
    assert_eq!(tpl.machine, "pc-i440fx-7.0");
    assert_eq!(tpl.ram.size, rec.ram.size, "the template's RAM size");
    assert_eq!(rec.vcpus.len(), 1, "one vCPU");
    let iv = tpl
        .ivshmem
        .as_ref()
        .expect("the template has ivshmem-plain");
    let iv_block = format!("{}/shm", iv.idstr.trim_end_matches("/ivshmem-plain"));

    // The RAM sections: from the first START to the first FULL device section.
    let first_dev = tpl
        .sections
        .iter()
        .min_by_key(|s| s.offset)
        .expect("device sections");
    let ram_end = first_dev.offset as usize - (1 + 4 + 1 + first_dev.name.len() + 4 + 4);
    assert_eq!(
        b[ram_end],
        section::FULL,
        "the first device section's header"
    );
    let pat = b"\x03ram\x00\x00\x00\x00\x00\x00\x00\x04";
    let s = b
        .windows(pat.len())
        .position(|w| w == pat)
        .expect("the template's RAM section");
    let ram_start = s - 5;
    assert_eq!(b[ram_start], section::START);
    let mut o = b[..ram_start].to_vec();
    let mut c = Cursor {
        b: &b[..ram_end],
        p: ram_start,
    };
    let mut cur_in: Option<String> = None;
    let mut last_out: Option<String> = None;
    let mut ours_written = false;
    let (mut dropped, mut kept) = (0u64, 0u64);
    while c.p < ram_end {
        let t = c.u8();
        o.push(t);
        let sid = c.take(4).to_vec();
        o.extend_from_slice(&sid);
        match t {
            section::START => {
                let name = c.str8();
                assert_eq!(name, "ram");
                o.push(3);
                o.extend_from_slice(b"ram");
                o.extend_from_slice(c.take(8)); // instance, version
            }
            section::PART | section::END => {}
            _ => panic!("RAM sections: section type {t:#x} at {}", c.p - 5),
        }
        loop {
            let w = c.be64();
            let fl = w & 0xfff;
            if fl & FLAG_MEM_SIZE != 0 {
                let mut total = w & !0xfff;
                let mut blocks = Vec::new();
                while total > 0 {
                    let id = c.str8();
                    let len = c.be64();
                    blocks.push((id, len));
                    total -= len;
                }
                assert!(blocks.iter().any(|(i, _)| i == &iv_block), "{iv_block}");
                blocks.retain(|(i, _)| i != &iv_block);
                let sum: u64 = blocks.iter().map(|(_, l)| l).sum();
                o.extend_from_slice(&(sum | FLAG_MEM_SIZE).to_be_bytes());
                for (i, l) in &blocks {
                    o.push(i.len() as u8);
                    o.extend_from_slice(i.as_bytes());
                    o.extend_from_slice(&l.to_be_bytes());
                }
                // The recording's RAM, right after the block list.
                for (&off, page) in &rec.ram.pages {
                    put_rec(
                        &mut o,
                        &mut last_out,
                        &Rec {
                            block: "pc.ram".into(),
                            offset: off,
                            zero: false,
                            body: page.to_vec(),
                        },
                    );
                }
                ours_written = true;
                continue;
            }
            if fl & FLAG_EOS != 0 {
                o.extend_from_slice(&w.to_be_bytes());
                break;
            }
            assert_eq!(
                fl & !(FLAG_ZERO | FLAG_PAGE | FLAG_CONTINUE),
                0,
                "RAM record flags {fl:#x}"
            );
            if fl & FLAG_CONTINUE == 0 {
                cur_in = Some(c.str8());
            }
            let block = cur_in.clone().expect("a RAM record before any block name");
            let zero = fl & FLAG_ZERO != 0;
            let body = c.take(if zero { 1 } else { 4096 }).to_vec();
            if block == "pc.ram" || block == iv_block {
                dropped += 1;
                continue;
            }
            kept += 1;
            put_rec(
                &mut o,
                &mut last_out,
                &Rec {
                    block,
                    offset: w & !0xfff,
                    zero,
                    body,
                },
            );
        }
        if c.p < ram_end && c.b[c.p] == section::FOOTER {
            o.extend_from_slice(c.take(5));
        }
    }
    assert!(ours_written, "the template has no RAM block list");
    let _ = (dropped, kept);

    // The device sections, each with its body patched in place.
    let delta = o.len() as i64 - ram_end as i64;
    o.extend_from_slice(&b[ram_end..]);
    let at = |off: u64| (off as i64 + delta) as usize;
    for sec in &tpl.sections {
        let body = at(sec.offset);
        match (sec.name.as_str(), sec.instance) {
            ("cpu", 0) => {
                let t = &tpl.vcpus[0].cpu;
                let r = &rec.vcpus[0].cpu;
                let old = wm::cpu_fields(t);
                assert_eq!(
                    &o[body..body + old.len()],
                    &old[..],
                    "the writer does not reproduce the template's cpu fields"
                );
                let mut n = t.clone();
                n.regs = r.regs;
                n.rip = r.rip;
                n.rflags = r.rflags;
                // QEMU's hflags as the recording's state gives them, plus CR0.MP.
                n.hflags = r.hflags | if r.cr0 & 2 != 0 { 1 << 9 } else { 0 };
                n.fpuc = r.fpuc;
                n.fpus = r.fpus;
                n.fptag = r.fptag;
                n.fpregs = r.fpregs;
                n.segs = r.segs;
                n.ldt = r.ldt;
                n.tr = r.tr;
                n.gdt = r.gdt;
                n.idt = r.idt;
                n.sysenter_cs = r.sysenter_cs;
                n.sysenter_esp = r.sysenter_esp;
                n.sysenter_eip = r.sysenter_eip;
                (n.cr0, n.cr2, n.cr3, n.cr4) = (r.cr0, r.cr2, r.cr3, r.cr4);
                n.dr = r.dr;
                n.mxcsr = r.mxcsr;
                n.xmm = r.xmm;
                n.efer = r.efer;
                n.star = r.star;
                n.lstar = r.lstar;
                n.cstar = r.cstar;
                n.fmask = r.fmask;
                n.kernelgsbase = r.kernelgsbase;
                n.pat = r.pat;
                n.tsc = r.tsc;
                n.tsc_aux = r.tsc_aux;
                n.xcr0 = r.xcr0;
                n.xstate_bv = r.xstate_bv;
                n.ymmh = r.ymmh;
                let new = wm::cpu_fields(&n);
                o[body..body + new.len()].copy_from_slice(&new);
            }
            ("apic", 0) => {
                let new = wm::apic_fields(rec.apic(0).expect("the recording's APIC"));
                assert!(new.len() as u64 <= sec.size);
                o[body..body + new.len()].copy_from_slice(&new);
            }
            (n, 0) if n == iv.idstr => {
                let bar2 = rec
                    .ivshmem
                    .as_ref()
                    .expect("the recording's ivshmem")
                    .bar2();
                let cfg = body + 4;
                let lo = u32::from_le_bytes(o[cfg + 0x18..cfg + 0x1c].try_into().unwrap());
                let lo = (bar2 as u32 & !0xf) | (lo & 0xf);
                o[cfg + 0x18..cfg + 0x1c].copy_from_slice(&lo.to_le_bytes());
                o[cfg + 0x1c..cfg + 0x20].copy_from_slice(&((bar2 >> 32) as u32).to_le_bytes());
                o[cfg + 4] |= 2; // COMMAND: memory space
            }
            // IMR, the third field (`last_irr`, `irr`, `imr`, ...).
            ("i8259", _) => o[body + 2] = 0xff,
            // `channels[0].irq_disabled` (be32), then 3 channels of 32 bytes (each ending in
            // count_load_time, next_transition_time), then channels[0].next_transition_time.
            ("i8254", 0) => {
                assert_eq!(sec.size, 108, "i8254 v3's size");
                o[body..body + 4].copy_from_slice(&1u32.to_be_bytes());
                o[body + 28..body + 36].fill(0);
                o[body + 100..body + 108].fill(0);
            }
            _ => {}
        }
    }
    std::fs::write(out, &o).unwrap();
}

/// A recording KRR's QEMU can load, in `dir`: `test1` rebuilt on the template (made here
/// with `qemu`), the recording's `kernel_rr.log` and `vmlinux` beside it.
pub fn krr_loadable(rec: &super::Recording, qemu: &Path, ring_size: u64, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let template = write_template(qemu, dir, ring_size);
    let snap = dir.join("test1");
    transplant(&rec.snapshot, &template, &snap);
    std::fs::remove_file(&template).unwrap();
    std::fs::copy(&rec.log, dir.join("kernel_rr.log")).unwrap();
    std::fs::copy(&rec.vmlinux, dir.join("vmlinux")).unwrap();
    snap
}
