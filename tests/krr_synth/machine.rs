//! The synthetic guest machine: the memory layout of `kernel/layout.h`, the kernel build,
//! the page tables and the boot state the recorder gives the kernel, guest-virtual access
//! for the recorder, and the snapshot (QEMU migration stream) of a state.

use crate::krr_rec_writer::migration as wm;
use krr::krr_rec::migration::cpu::Segment as QSeg;
use krr_runtime::cpu::Segment;
use krr_runtime::{ArchState, Core};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const KERNEL_VA: u64 = 0xffff_ffff_8100_0000;
pub const KERNEL_PA: u64 = 0x100_0000;
pub const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
pub const RING_VA: u64 = 0xffff_c900_0000_0000;
pub const APIC_VA: u64 = 0xffff_ffff_82e0_0000;
pub const APIC_PA: u64 = 0xfee0_0000;
pub const USER_CODE: u64 = 0x40_0000;
/// The store instruction user mode faults on (`mov %al, (%rdi)`).
pub const USER_STORE: u64 = USER_CODE + 0x10;
/// A CLI in user code: #GP(0) at CPL3.
pub const USER_CLI: u64 = USER_CODE + 0x20;
/// The user stack pointer's neighbourhood (user code never touches it).
pub const USER_RSP: u64 = 0x7fff_ffff_e000;
pub const USER_DATA: u64 = 0x40_1000;
pub const USER_DATA_PAGES: u64 = 8;
pub const FAULT_BASE: u64 = 0x50_0000;
pub const FAULT_PAGES: u64 = 256;
pub const USER_PT_PA: u64 = 0x2_0000;
pub const USER_CODE_PA: u64 = 0x3_0000;
pub const USER_DATA_PA: u64 = 0x3_1000;
pub const PML4_PA: u64 = 0x1_0000;
/// pc.ram of the snapshot.
pub const RAM_SIZE: u64 = 64 << 20;
/// ivshmem's BAR2 (the ring): in the PCI hole below the local APIC, where firmware puts a
/// small 64-bit BAR.
pub const BAR2: u64 = 0xfd00_0000;
pub const TIMER_VECTOR: u8 = 0xec;

pub const PTE_P: u64 = 1;
pub const PTE_RW: u64 = 2;
pub const PTE_US: u64 = 4;
pub const PTE_A: u64 = 0x20;
pub const PTE_D: u64 = 0x40;
const PTE_PS: u64 = 0x80;

/// Build the kernel in `dir`: `vmlinux` (ELF with symbols and DWARF) and its flat image.
pub fn build_kernel(dir: &Path) -> (PathBuf, PathBuf) {
    build_kernel_variant(dir, false)
}

/// [`build_kernel`], or with `smp` the two-vCPU build (`-DKRR_SMP`, `smp.c` and `smp.S`'s
/// exec lock instead of `serialize.S`'s stubs).
pub fn build_kernel_variant(dir: &Path, smp: bool) -> (PathBuf, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/krr_synth/kernel");
    std::fs::create_dir_all(dir).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let cflags = [
        "-ffreestanding",
        "-fno-pic",
        "-mcmodel=kernel",
        "-mno-red-zone",
        "-nostdlib",
        "-fno-stack-protector",
        "-mgeneral-regs-only",
        "-fno-asynchronous-unwind-tables",
        "-fcf-protection=none",
        "-O1",
        "-g",
    ];
    let mut objs = Vec::new();
    let files: &[(&str, bool)] = if smp {
        &[
            ("entry.S", false),
            ("kernel.c", true),
            ("smp.c", true),
            ("smp.S", false),
        ]
    } else {
        &[
            ("entry.S", false),
            ("kernel.c", true),
            ("serialize.S", false),
            ("devices.c", true),
        ]
    };
    for &(file, c) in files {
        let obj = dir.join(format!("{file}.o"));
        let mut cc = Command::new("cc");
        if c {
            cc.args(cflags);
        }
        if smp {
            cc.arg("-DKRR_SMP");
        }
        cc.arg("-c").arg(src.join(file)).arg("-o").arg(&obj);
        run(&mut cc);
        objs.push(obj);
    }
    let vmlinux = dir.join("vmlinux");
    run(Command::new("ld")
        .args(["-static", "-nostdlib", "-z", "noexecstack", "-T"])
        .arg(src.join("kernel.ld"))
        .arg("-o")
        .arg(&vmlinux)
        .args(&objs));
    let image = dir.join("vmlinux.bin");
    run(Command::new("objcopy")
        .args(["-O", "binary", "--only-section=.text"])
        .args(["--only-section=.rodata", "--only-section=.data"])
        .arg(&vmlinux)
        .arg(&image));
    (vmlinux, image)
}

/// The guest-physical address of `va` under `cr3` (4 KiB and 2 MiB pages).
pub fn translate(core: &Core, cr3: u64, va: u64) -> Option<u64> {
    let mem = core.mem();
    let mut table = cr3 & 0x000f_ffff_ffff_f000;
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let e = mem.read_u64(table + ((va >> shift) & 0x1ff) * 8).ok()?;
        if e & PTE_P == 0 {
            return None;
        }
        if level == 0 || (level == 1 && e & PTE_PS != 0) {
            let size = 1u64 << shift;
            return Some((e & 0x000f_ffff_ffff_f000 & !(size - 1)) | (va & (size - 1)));
        }
        table = e & 0x000f_ffff_ffff_f000;
    }
    None
}

/// The kernel image's physical address of a kernel symbol.
pub fn kernel_pa(va: u64) -> u64 {
    va - KERNEL_VA + KERNEL_PA
}

/// Load the kernel and write the page tables (kernel image, direct map, ring, APIC, user
/// code/data pages; the 256 fault pages start unmapped) and the user code page.
pub fn load(core: &mut Core, image: &[u8], ring_size: u64) {
    let mem = core.mem_mut();
    mem.write(KERNEL_PA, image).unwrap();
    let mut next = PML4_PA + 0x1000;
    let mut alloc = || {
        let t = next;
        next += 0x1000;
        t
    };
    let (pdpt_k, pd_k) = (alloc(), alloc());
    let (pdpt_d, pd_d) = (alloc(), alloc());
    let (pdpt_r, pd_r) = (alloc(), alloc());
    let (pdpt_u, pd_u) = (alloc(), alloc());
    let idx = |va: u64, level: u32| ((va >> (12 + 9 * level)) & 0x1ff) * 8;
    let w = |mem: &mut krr_runtime::GuestMemory, at: u64, v: u64| mem.write_u64(at, v).unwrap();
    let table = PTE_P | PTE_RW;
    w(mem, PML4_PA + idx(KERNEL_VA, 3), pdpt_k | table);
    w(mem, pdpt_k + idx(KERNEL_VA, 2), pd_k | table);
    for i in 0..4 {
        let va = KERNEL_VA + (i << 21);
        w(
            mem,
            pd_k + idx(va, 1),
            (KERNEL_PA + (i << 21)) | table | PTE_PS,
        );
    }
    w(mem, pd_k + idx(APIC_VA, 1), APIC_PA | table | PTE_PS | 0x18); // PCD PWT
    w(mem, PML4_PA + idx(DIRECT_MAP, 3), pdpt_d | table);
    w(mem, pdpt_d + idx(DIRECT_MAP, 2), pd_d | table);
    for i in 0..RAM_SIZE >> 21 {
        w(mem, pd_d + i * 8, (i << 21) | table | PTE_PS);
    }
    w(mem, PML4_PA + idx(RING_VA, 3), pdpt_r | table);
    w(mem, pdpt_r + idx(RING_VA, 2), pd_r | table);
    for i in 0..ring_size >> 21 {
        w(mem, pd_r + i * 8, (BAR2 + (i << 21)) | table | PTE_PS);
    }
    let user = table | PTE_US;
    w(mem, PML4_PA, pdpt_u | user);
    w(mem, pdpt_u, pd_u | user);
    w(mem, pd_u + idx(USER_CODE, 1), USER_PT_PA | user);
    w(
        mem,
        USER_PT_PA + idx(USER_CODE, 0),
        USER_CODE_PA | PTE_P | PTE_US,
    );
    for i in 0..USER_DATA_PAGES {
        let va = USER_DATA + i * 0x1000;
        w(
            mem,
            USER_PT_PA + idx(va, 0),
            (USER_DATA_PA + i * 0x1000) | user,
        );
    }
    // syscall; jmp .-2 | mov %al,(%rdi); jmp USER_CODE | cli; jmp USER_CODE
    mem.write(USER_CODE_PA, &[0x0f, 0x05, 0xeb, 0xfc]).unwrap();
    mem.write(USER_CODE_PA + 0x10, &[0x88, 0x07, 0xeb, 0xec])
        .unwrap();
    mem.write(USER_CODE_PA + 0x20, &[0xfa, 0xeb, 0xdd]).unwrap();
}

/// The CPU at the kernel's boot routine: 64-bit mode at CPL0 with the recorder's page
/// tables (the kernel loads its own GDT, IDT, TSS and MSRs).
pub fn boot_state(entry: u64) -> ArchState {
    let mut a = ArchState::flat64();
    a.seg[krr_runtime::cpu::seg::CS] = Segment::flat(0x10, Segment::CODE64_DPL0);
    for i in [0, 2, 3, 4, 5] {
        a.seg[i] = Segment::flat(0x18, Segment::DATA_DPL0);
    }
    a.cr0 = 0x8005_0033;
    a.cr4 = 0x6a0; // PAE PGE OSFXSR OSXMMEXCPT
    a.cr3 = PML4_PA;
    a.efer = 0xd01;
    a.rip = entry;
    a.gpr[4] = KERNEL_VA + 0x8000; // a scratch stack until krr_boot sets its own
    a.rflags = 2;
    a
}

/// QEMU's segment cache flags of a krr segment (descriptor-high-dword positions).
fn qseg(s: &Segment) -> QSeg {
    let a = s.attrs as u32;
    QSeg {
        selector: s.selector as u32,
        base: s.base,
        limit: s.limit,
        flags: ((a & 0xff) << 8) | (((a >> 12) & 0xf) << 20),
    }
}

/// The `cpu` section of state `a` (the inverse of krr_replay::cpu::arch_state). QEMU's
/// hflags are derived: CPL, CS32/SS32, PE, LMA, CS64, OSFXSR (QEMU recomputes them).
pub fn qemu_cpu(a: &ArchState, tsc: u64) -> krr::krr_rec::migration::cpu::X86Cpu {
    let mut c = wm::sample_cpu(0);
    c.regs = a.gpr;
    c.rip = a.rip;
    c.rflags = a.rflags_value();
    c.hflags = a.cpl() as u32
        | 1 << 4
        | 1 << 5
        | 1 << 7
        | 1 << 14
        | 1 << 15
        | if a.cr4 & 0x200 != 0 { 1 << 22 } else { 0 };
    c.fpuc = a.x87.fcw;
    c.fpus = a.x87.fsw;
    c.fptag = a.x87.ftw as u16;
    let top = ((a.x87.fsw >> 11) & 7) as usize;
    for (i, st) in a.x87.st.iter().enumerate() {
        c.fpregs[(top + i) & 7] = (
            u64::from_le_bytes(st[..8].try_into().unwrap()),
            u16::from_le_bytes([st[8], st[9]]),
        );
    }
    for i in 0..6 {
        c.segs[i] = qseg(&a.seg[i]);
    }
    c.ldt = qseg(&a.ldtr);
    c.tr = qseg(&a.tr);
    c.gdt = QSeg {
        selector: 0,
        base: a.gdtr.base,
        limit: a.gdtr.limit as u32,
        flags: 0,
    };
    c.idt = QSeg {
        selector: 0,
        base: a.idtr.base,
        limit: a.idtr.limit as u32,
        flags: 0,
    };
    c.sysenter_cs = a.sysenter_cs as u32;
    c.sysenter_esp = a.sysenter_esp;
    c.sysenter_eip = a.sysenter_eip;
    (c.cr0, c.cr2, c.cr3, c.cr4) = (a.cr0, a.cr2, a.cr3, a.cr4);
    c.dr = a.dr;
    c.mxcsr = a.mxcsr;
    c.xmm = a.xmm;
    c.efer = a.efer;
    c.star = a.star;
    c.lstar = a.lstar;
    c.cstar = a.cstar;
    c.fmask = a.sfmask;
    c.kernelgsbase = a.kernel_gs_base;
    c.pat = a.pat;
    c.tsc = tsc;
    c.tsc_aux = a.tsc_aux;
    c.xcr0 = a.xcr0;
    c.xstate_bv = 3;
    c.ymmh = [[0; 2]; 16];
    c.subsections = Vec::new();
    c
}

/// The snapshot file: pc.ram's non-zero pages, the vCPU, its APIC (xAPIC at 0xfee00000,
/// the timer LVT at the kernel's vector, nothing pending) and ivshmem's BAR2. The ring is not
/// in it (KRR marks BAR2's RAM block non-migratable).
pub fn snapshot(core: &Core, tsc: u64) -> Vec<u8> {
    snapshot_with(core, tsc, Vec::new())
}

/// [`snapshot`] with more device sections (the device scenario's PCI functions).
pub fn snapshot_with(core: &Core, tsc: u64, extra: Vec<wm::Device>) -> Vec<u8> {
    let mut st = wm::sample_stream(RAM_SIZE, 1);
    st.devices.extend(extra);
    st.pages.clear();
    let mut page = vec![0u8; 4096];
    for gpa in (0..RAM_SIZE).step_by(4096) {
        core.mem().read(gpa, &mut page).unwrap();
        if page.iter().any(|&b| b != 0) {
            st.pages
                .push(("pc.ram".into(), gpa, wm::Page::Data(page.clone())));
        }
    }
    st.pages_per_part = 512;
    let cpu = qemu_cpu(core.arch(), tsc);
    let mut apic = wm::sample_apic(0);
    apic.tpr = 0;
    apic.isr = [0; 8];
    apic.irr = [0; 8];
    apic.lvt[0] = 0x2_0000 | TIMER_VECTOR as u32; // periodic
    for d in &mut st.devices {
        match d.name.as_str() {
            "cpu" => {
                d.fields = wm::cpu_fields(&cpu);
                d.subsections = Vec::new();
            }
            "apic" => d.fields = wm::apic_fields(&apic),
            "0000:00:04.0/ivshmem-plain" => {
                d.fields = wm::ivshmem_fields(&wm::sample_ivshmem(BAR2));
            }
            _ => {}
        }
    }
    st.bytes()
}
