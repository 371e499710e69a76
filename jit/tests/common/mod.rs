//! A small whole-system test machine: guest physical memory with 4-level page tables, a GDT,
//! an IDT whose 256 gates all lead to one reporting handler, a TSS with RSP0 and IST1, kernel
//! code at CPL0 and user code for CPL3, all assembled with iced-x86's `CodeAssembler`; a bus
//! that records port IO; and a runner that executes the machine in every engine tier and
//! requires identical results.
//!
//! Linear layout (identity-mapped unless a test maps something else):
//!
//! | range | what | mapping |
//! |---|---|---|
//! | `GDT` 0x1000, `IDT` 0x2000, `TSS` 0x3000 | descriptor tables | S, RW, NX |
//! | `KDATA` 0x4000-0x7fff | `ACTION` table, GDTR/IDTR images, `KSCRATCH` | S, RW, NX |
//! | 0x8000-0xffff | kernel stack (`KSTACK_TOP`) | S, RW, NX |
//! | 0x10000-0x13fff | privilege-change stack (`RSP0_TOP`, TSS.RSP0) | S, RW, NX |
//! | 0x14000-0x17fff | IST1 stack (`IST1_TOP`, TSS.IST1) | S, RW, NX |
//! | `KCODE` 0x20000-0x2ffff | prologue, handler stubs, the test's kernel code | S, RX (as far as the code goes) |
//! | `PT_POOL` 0x100000-0x17ffff | the page tables themselves | S, RW, NX |
//! | `UCODE` 0x400000-0x403fff | the test's user code | U, RX (as far as the code goes) |
//! | `UDATA` 0x410000-0x413fff | user data, user stack (`USTACK_TOP`) | U, RW, NX |
//! | `TEST_AREA` 0x500000-0x5fffff | free for each test (physical pages too) | unmapped |
//!
//! GDT: 0x08 64-bit kernel code, 0x10 kernel data, 0x18 user data (0x1b), 0x20 64-bit user code
//! (0x23), 0x28 the 16-byte TSS descriptor: STAR[47:32] = 0x08 gives SYSCALL CS 0x08 / SS 0x10
//! and STAR[63:48] = 0x10 gives SYSRET SS 0x1b / CS 0x23, as Linux lays its GDT out.
//!
//! Every IDT gate `v` is a 64-bit interrupt gate (DPL0, no IST) to a stub that pushes a zero
//! error code when the CPU pushes none, pushes `v` and jumps to a common handler. The handler
//! reports an [`Event`] on port `EVENT_PORT` (vector, error code, CR2, the frame's RIP, CS,
//! RFLAGS, RSP, SS, the address of the frame's RIP slot, its own RFLAGS) and then does what `ACTION[v]`
//! says: 0 = stop the run ([`stop`]: `Exit::BusRequest`), 1 = IRETQ to the pushed RIP, anything else
//! = IRETQ to that address (with the pushed CS/RFLAGS/RSP/SS).
//!
//! Guest code reports 64-bit values on `REPORT_PORT` with [`report`] (CPL0 only: IOPL is 0).

#![allow(dead_code)]

use iced_x86::code_asm::*;
use krr_jit::engine::{Engine, EngineConfig, Exit};
use krr_jit::snippet::Tier;
use krr_runtime::{rflags, seg, Bus, Core, CpuState, GuestMemory, Segment};
use std::collections::HashMap;

pub const RAM: u64 = 8 << 20;
pub const GDT: u64 = 0x1000;
pub const IDT: u64 = 0x2000;
pub const TSS: u64 = 0x3000;
pub const KDATA: u64 = 0x4000;
/// 256 qwords: what the common handler does after reporting vector `v`.
pub const ACTION: u64 = KDATA;
pub const GDTR_IMAGE: u64 = KDATA + 0x800;
pub const IDTR_IMAGE: u64 = KDATA + 0x810;
/// 32 qwords the test writes before the run and the guest reads (`Machine::param`).
pub const PARAMS: u64 = KDATA + 0x900;
/// Free kernel scratch memory (three pages, 64-byte aligned).
pub const KSCRATCH: u64 = 0x5000;
pub const KSTACK_TOP: u64 = 0x10000;
pub const RSP0_TOP: u64 = 0x14000;
pub const IST1_TOP: u64 = 0x18000;
pub const KCODE: u64 = 0x20000;
pub const KCODE_SIZE: u64 = 0x10000;
pub const PT_POOL: (u64, u64) = (0x10_0000, 0x18_0000);
pub const UCODE: u64 = 0x40_0000;
pub const UDATA: u64 = 0x41_0000;
pub const USTACK_TOP: u64 = 0x41_4000;
pub const TEST_AREA: u64 = 0x50_0000;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_SS: u16 = 0x10;
pub const USER_SS: u16 = 0x1b;
pub const USER_CS: u16 = 0x23;
pub const TSS_SEL: u16 = 0x28;
/// STAR as Linux-style kernels set it for this GDT.
pub const STAR: u64 = (0x10u64 << 48) | (0x08u64 << 32);

pub const REPORT_PORT: u8 = 0xe9;
pub const EVENT_PORT: u8 = 0xea;
/// A write here ends the run: the bus asks the engine to return (`Exit::BusRequest`).
pub const EXIT_PORT: u8 = 0xf4;
/// A device page above RAM: a store into it is an MMIO write (recorded as an [`Io::Out`] whose
/// port is the offset in the page) after which the bus asks the engine to return (a
/// doorbell); tests map it where they want it. Other MMIO, and any MMIO read, panics.
pub const DOORBELL: u64 = RAM + 0x10_0000;

/// Page-table entry, CR0, CR4 and EFER bits.
pub use krr_runtime::arch::{cr0, cr4, efer, pte};

pub const TIERS: [Tier; 4] = [
    Tier::Interpreter,
    Tier::Jit,
    Tier::JitSingleStep,
    Tier::Tiered,
];

/// Page sizes for [`Pt::map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    K4,
    M2,
    G1,
}

/// A 4-level page-table builder writing entries straight into guest memory.
pub struct Pt {
    pub cr3: u64,
    next: u64,
    end: u64,
}

impl Pt {
    pub fn new(mem: &mut GuestMemory, start: u64, end: u64) -> Pt {
        let mut p = Pt {
            cr3: 0,
            next: start,
            end,
        };
        p.cr3 = p.alloc(mem);
        p
    }

    pub fn alloc(&mut self, mem: &mut GuestMemory) -> u64 {
        let page = self.next;
        assert!(page + 4096 <= self.end, "page-table pool exhausted");
        self.next += 4096;
        mem.write(page, &[0u8; 4096]).unwrap();
        page
    }

    /// Physical address of the entry for `linear` at `level` (3 = PML4E, 2 = PDPTE, 1 = PDE,
    /// 0 = PTE), creating the tables above it (P|RW|US, so the leaf decides permissions).
    pub fn entry_create(&mut self, mem: &mut GuestMemory, linear: u64, level: u32) -> u64 {
        let mut table = self.cr3;
        for l in (level + 1..4).rev() {
            let addr = table + ((linear >> (12 + 9 * l)) & 0x1ff) * 8;
            let e = mem.read_u64(addr).unwrap();
            table = if e & pte::P == 0 {
                let t = self.alloc(mem);
                mem.write_u64(addr, t | pte::P | pte::RW | pte::US).unwrap();
                t
            } else {
                assert!(e & pte::PS == 0, "{linear:#x} is inside a large page");
                e & pte::ADDR
            };
        }
        table + ((linear >> (12 + 9 * level)) & 0x1ff) * 8
    }

    /// Physical address of an existing entry (panics if a table above it is missing).
    pub fn entry(&self, mem: &GuestMemory, linear: u64, level: u32) -> u64 {
        let mut table = self.cr3;
        for l in (level + 1..4).rev() {
            let e = mem
                .read_u64(table + ((linear >> (12 + 9 * l)) & 0x1ff) * 8)
                .unwrap();
            assert!(e & pte::P != 0, "no table for {linear:#x} at level {l}");
            table = e & pte::ADDR;
        }
        table + ((linear >> (12 + 9 * level)) & 0x1ff) * 8
    }

    /// Map one page; `flags` are the leaf's bits besides P (and PS, added for large pages).
    pub fn map(
        &mut self,
        mem: &mut GuestMemory,
        linear: u64,
        phys: u64,
        size: PageSize,
        flags: u64,
    ) {
        let (level, ps) = match size {
            PageSize::K4 => (0, 0),
            PageSize::M2 => (1, pte::PS),
            PageSize::G1 => (2, pte::PS),
        };
        let e = self.entry_create(mem, linear, level);
        mem.write_u64(e, phys | flags | ps | pte::P).unwrap();
    }

    /// Identity-map `[start, end)` with 4 KiB pages.
    pub fn identity(&mut self, mem: &mut GuestMemory, start: u64, end: u64, flags: u64) {
        let mut a = start;
        while a < end {
            self.map(mem, a, a, PageSize::K4, flags);
            a += 4096;
        }
    }
}

/// The code `f` emits, assembled at `ip` (for tests that need only the bytes).
pub fn assemble(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>, ip: u64) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).unwrap();
    f(&mut a).unwrap();
    a.assemble(ip).unwrap()
}

/// An assembler that also records named labels, so tests can find addresses after assembly.
pub struct Asm {
    pub a: CodeAssembler,
    named: Vec<(String, CodeLabel)>,
}

impl std::ops::Deref for Asm {
    type Target = CodeAssembler;
    fn deref(&self) -> &CodeAssembler {
        &self.a
    }
}
impl std::ops::DerefMut for Asm {
    fn deref_mut(&mut self) -> &mut CodeAssembler {
        &mut self.a
    }
}

pub type AsmResult = Result<(), IcedError>;

impl Asm {
    pub fn new() -> Asm {
        Asm::with_bitness(64)
    }

    /// An assembler for 16-, 32- or 64-bit code.
    pub fn with_bitness(bitness: u32) -> Asm {
        Asm {
            a: CodeAssembler::new(bitness).unwrap(),
            named: Vec::new(),
        }
    }

    /// Define `name` at the next instruction.
    pub fn def(&mut self, name: &str) -> AsmResult {
        let mut l = self.a.create_label();
        self.a.set_label(&mut l)?;
        self.named.push((name.to_string(), l));
        Ok(())
    }

    /// Record an already created label under `name` (it must be set somewhere).
    pub fn name(&mut self, name: &str, l: CodeLabel) {
        self.named.push((name.to_string(), l));
    }

    /// The code assembled at `ip`, with its named labels' addresses added to `labels`.
    pub fn assemble(mut self, ip: u64, labels: &mut HashMap<String, u64>) -> Vec<u8> {
        let r = self
            .a
            .assemble_options(
                ip,
                iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .unwrap();
        for (n, l) in &self.named {
            let prev = labels.insert(n.clone(), r.label_ip(l).unwrap());
            assert!(prev.is_none(), "label {n} defined twice");
        }
        r.inner.code_buffer
    }
}

impl Default for Asm {
    fn default() -> Self {
        Asm::new()
    }
}

/// Run `body(a, i)` for `i` in `0..n`, each case labelled `t{i}`, resuming at label `next`
/// after any case (a handler whose action resumes at `next` moves on to the following case).
/// R15 counts cases; bodies must keep it. Falls through after the last case.
pub fn cases(a: &mut Asm, n: usize, body: impl Fn(&mut Asm, usize) -> AsmResult) -> AsmResult {
    cases_tagged(a, "", n, body)
}

/// [`cases`] with labels `next{tag}` and `t{tag}_{i}`, for a second set in the same code.
pub fn cases_tagged(
    a: &mut Asm,
    tag: &str,
    n: usize,
    body: impl Fn(&mut Asm, usize) -> AsmResult,
) -> AsmResult {
    let mut next = a.create_label();
    let mut done = a.create_label();
    let mut starts: Vec<CodeLabel> = (0..n).map(|_| a.create_label()).collect();
    a.xor(r15d, r15d)?;
    a.set_label(&mut next)?;
    a.name(&format!("next{tag}"), next);
    for (i, s) in starts.iter().enumerate() {
        a.cmp(r15d, i as i32)?;
        a.je(*s)?;
    }
    a.jmp(done)?;
    for (i, s) in starts.iter_mut().enumerate() {
        a.set_label(s)?;
        a.inc(r15d)?;
        if tag.is_empty() {
            a.def(&format!("t{i}"))?;
        } else {
            a.def(&format!("t{tag}_{i}"))?;
        }
        body(a, i)?;
        a.jmp(next)?;
    }
    a.set_label(&mut done)?;
    a.nop()
}

/// Report the 64-bit value of `r` on `REPORT_PORT` (clobbers RAX; CPL0 or IOPL 3 only).
pub fn report(a: &mut CodeAssembler, r: AsmRegister64) -> AsmResult {
    if r != rax {
        a.mov(rax, r)?;
    }
    out64(a, REPORT_PORT)
}

/// End the run: OUT to `EXIT_PORT`, then spin through an indirect jump (which always returns
/// to the dispatcher, where the engine checks `Bus::wants_exit` and returns
/// `Exit::BusRequest`). Clobbers RAX.
pub fn stop(a: &mut CodeAssembler) -> AsmResult {
    a.out(EXIT_PORT as u32, al)?;
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    a.lea(rax, ptr(l))?;
    a.jmp(rax)
}

/// Report an immediate (clobbers RAX).
pub fn report_imm(a: &mut CodeAssembler, v: u64) -> AsmResult {
    a.mov(rax, v)?;
    out64(a, REPORT_PORT)
}

fn out64(a: &mut CodeAssembler, port: u8) -> AsmResult {
    a.out(port as u32, eax)?;
    a.shr(rax, 32)?;
    a.out(port as u32, eax)
}

/// Enter CPL3 at `target` with RSP `stack` and RFLAGS `flags` through IRETQ (clobbers RAX).
pub fn iret_to_user(a: &mut CodeAssembler, target: u64, stack: u64, flags: u32) -> AsmResult {
    a.push(USER_SS as i32)?;
    a.mov(rax, stack)?;
    a.push(rax)?;
    a.push(flags as i32)?;
    a.push(USER_CS as i32)?;
    a.mov(rax, target)?;
    a.push(rax)?;
    a.iretq()
}

/// The guest-side operand for parameter `i`.
pub fn param(i: usize) -> AsmMemoryOperand {
    qword_ptr(PARAMS + 8 * i as u64)
}

/// Guest-side `ACTION[v] = what` (clobbers RAX).
pub fn set_action(a: &mut CodeAssembler, v: u8, what: u64) -> AsmResult {
    a.mov(rax, what)?;
    a.mov(qword_ptr(ACTION + 8 * v as u64), rax)
}

/// Guest-side `ACTION[v] = address of label` (clobbers RAX).
pub fn set_action_label(a: &mut CodeAssembler, v: u8, l: CodeLabel) -> AsmResult {
    a.lea(rax, ptr(l))?;
    a.mov(qword_ptr(ACTION + 8 * v as u64), rax)
}

/// WRMSR `msr` <- `value` (clobbers RAX, RCX, RDX).
pub fn wrmsr(a: &mut CodeAssembler, msr: u32, value: u64) -> AsmResult {
    a.mov(ecx, msr)?;
    a.mov(eax, value as u32)?;
    a.mov(edx, (value >> 32) as u32)?;
    a.wrmsr()
}

fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// One exception or interrupt the common handler saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub vector: u8,
    /// The pushed error code (0 when the CPU pushed none).
    pub error_code: u64,
    pub cr2: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
    /// Linear address of the frame's RIP slot (where the handler's stack was).
    pub frame: u64,
    /// RFLAGS in the handler (IF clear through an interrupt gate, TF/NT/RF clear).
    pub hflags: u64,
}

/// One port access other than the report ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    In { port: u16, size: u8, value: u32 },
    Out { port: u16, size: u8, value: u32 },
}

/// The bus: records everything; IN from port `p` returns `0x1234_5600 | (p & 0xff) + n`
/// truncated to the access size, `n` counting reads.
#[derive(Default)]
pub struct TestBus {
    words: HashMap<u16, Vec<u32>>,
    pub io: Vec<Io>,
    reads: u32,
    pub exit_requested: bool,
}

impl TestBus {
    /// The raw event words so far (for diagnostics).
    pub fn clone_events(&self) -> Vec<u64> {
        self.qwords(EVENT_PORT)
    }

    /// The values reported on `REPORT_PORT` so far.
    pub fn reports(&self) -> Vec<u64> {
        self.qwords(REPORT_PORT)
    }

    fn qwords(&self, port: u8) -> Vec<u64> {
        let w = self.words.get(&(port as u16)).cloned().unwrap_or_default();
        assert!(
            w.len() % 2 == 0,
            "odd number of 32-bit reports on {port:#x}: {w:#x?}"
        );
        w.chunks(2)
            .map(|c| c[0] as u64 | (c[1] as u64) << 32)
            .collect()
    }
}

impl Bus for TestBus {
    fn port_in(&mut self, _cpu: &CpuState, port: u16, size: u8) -> u32 {
        let v = (0x1234_5600 | (port as u32 & 0xff)).wrapping_add(self.reads);
        self.reads += 1;
        let v = match size {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        };
        self.io.push(Io::In {
            port,
            size,
            value: v,
        });
        v
    }
    fn port_out(&mut self, _cpu: &CpuState, port: u16, size: u8, value: u32) {
        if port == EXIT_PORT as u16 {
            self.exit_requested = true;
        } else if (port == REPORT_PORT as u16 || port == EVENT_PORT as u16) && size == 4 {
            self.words.entry(port).or_default().push(value);
        } else {
            self.io.push(Io::Out { port, size, value });
        }
    }
    fn mmio_read(&mut self, _cpu: &CpuState, phys: u64, _size: u8) -> u64 {
        panic!("unexpected MMIO read at {phys:#x}")
    }
    fn mmio_write(&mut self, _cpu: &CpuState, phys: u64, size: u8, value: u64) {
        assert!(
            (DOORBELL..DOORBELL + 0x1000).contains(&phys),
            "unexpected MMIO write at {phys:#x}"
        );
        self.io.push(Io::Out {
            port: (phys - DOORBELL) as u16,
            size,
            value: value as u32,
        });
        self.exit_requested = true;
    }
    fn rdtsc(&mut self, _cpu: &CpuState) -> u64 {
        1000
    }
    fn rdrand(&mut self, _cpu: &CpuState, _size: u8, _seed: bool) -> Option<u64> {
        Some(42)
    }
    fn wants_exit(&self, _cpu: &CpuState) -> bool {
        self.exit_requested
    }
}

/// Architectural state compared between tiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snap {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub seg: [Segment; 6],
    pub tr: Segment,
    pub gdtr: (u64, u16),
    pub idtr: (u64, u16),
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub xcr0: u64,
    pub kernel_gs_base: u64,
    pub star: u64,
    pub lstar: u64,
    pub sfmask: u64,
    pub icount: u64,
    pub mxcsr: u32,
    pub xmm: [[u64; 2]; 16],
    pub ymm_hi: [[u64; 2]; 16],
    pub fcw: u16,
    pub fsw: u16,
    pub ftw: u8,
}

fn snap(cpu: &CpuState) -> Snap {
    let arith = cpu.arith_flags();
    Snap {
        gpr: cpu.gpr,
        rip: cpu.rip,
        rflags: (cpu.rflags & !rflags::ARITH) | arith,
        seg: cpu.seg,
        tr: cpu.tr,
        gdtr: (cpu.gdtr.base, cpu.gdtr.limit),
        idtr: (cpu.idtr.base, cpu.idtr.limit),
        cr0: cpu.cr0,
        cr2: cpu.cr2,
        cr3: cpu.cr3,
        cr4: cpu.cr4,
        cr8: cpu.cr8,
        efer: cpu.efer,
        xcr0: cpu.xcr0,
        kernel_gs_base: cpu.kernel_gs_base,
        star: cpu.star,
        lstar: cpu.lstar,
        sfmask: cpu.sfmask,
        icount: cpu.icount,
        mxcsr: cpu.mxcsr,
        xmm: cpu.xmm,
        ymm_hi: cpu.ymm_hi,
        fcw: cpu.x87.fcw,
        fsw: cpu.x87.fsw,
        ftw: cpu.x87.ftw,
    }
}

/// A machine ready to run: memory, page tables, descriptor tables, code.
pub struct Machine {
    pub mem: GuestMemory,
    pub pt: Pt,
    pub labels: HashMap<String, u64>,
    /// Initial control state (applied when the run starts).
    pub cr0: u64,
    pub cr4: u64,
    pub efer: u64,
    pub rflags: u64,
    /// Initial general-purpose registers (RSP is `KSTACK_TOP` unless changed).
    pub gpr: [u64; 16],
    pub budget: u64,
    /// The engine's behaviour profile.
    pub profile: krr_runtime::Profile,
}

/// Gate settings for [`Machine::gate`].
#[derive(Clone, Copy, Debug)]
pub struct Gate {
    pub present: bool,
    pub dpl: u8,
    pub ist: u8,
    /// 0xe interrupt gate, 0xf trap gate.
    pub typ: u8,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            present: true,
            dpl: 0,
            ist: 0,
            typ: 0xe,
        }
    }
}

impl Machine {
    /// Build the machine: `kernel` is assembled after the prologue (which loads GDTR, IDTR,
    /// TR and SS and sets RSP to `KSTACK_TOP`) and the handler stubs, starting at label
    /// `kmain`; `user` is assembled at `UCODE`.
    pub fn new(
        kernel: impl FnOnce(&mut Asm) -> AsmResult,
        user: impl FnOnce(&mut Asm) -> AsmResult,
    ) -> Machine {
        let mut mem = GuestMemory::new(RAM).unwrap();
        let mut pt = Pt::new(&mut mem, PT_POOL.0, PT_POOL.1);
        let s_data = pte::RW | pte::NX;
        let mut labels = HashMap::new();
        let mut k = Asm::new();
        build_kernel(&mut k, kernel).unwrap();
        let kcode = k.assemble(KCODE, &mut labels);
        assert!(kcode.len() as u64 <= KCODE_SIZE, "kernel code too large");
        mem.write(KCODE, &kcode).unwrap();

        let mut u = Asm::new();
        user(&mut u).unwrap();
        if u.a.instructions().is_empty() {
            u.a.ud2().unwrap();
        }
        let ucode = u.assemble(UCODE, &mut labels);
        assert!(ucode.len() <= 0x4000, "user code too large");
        mem.write(UCODE, &ucode).unwrap();

        // Code is mapped only as far as it goes, so that no other page of the code ranges
        // is mapped (see `fetch_ahead_side_effects_are_tier_independent` in system.rs).
        let pages = |len: usize| (len as u64).div_ceil(4096) * 4096;
        pt.identity(&mut mem, GDT, KCODE, s_data);
        pt.identity(&mut mem, KCODE, KCODE + pages(kcode.len()), 0);
        pt.identity(&mut mem, UCODE, UCODE + pages(ucode.len()), pte::US);
        pt.identity(&mut mem, UDATA, UDATA + 0x4000, pte::US | pte::RW | pte::NX);
        pt.identity(&mut mem, PT_POOL.0, PT_POOL.1, s_data);

        // GDT.
        let gdt: [u64; 5] = [
            0,
            0x00af_9b00_0000_ffff, // 0x08 kernel code, 64-bit
            0x00cf_9300_0000_ffff, // 0x10 kernel data
            0x00cf_f300_0000_ffff, // 0x18 user data
            0x00af_fb00_0000_ffff, // 0x20 user code, 64-bit
        ];
        for (i, d) in gdt.iter().enumerate() {
            mem.write_u64(GDT + 8 * i as u64, *d).unwrap();
        }
        // 0x28: available 64-bit TSS, limit 0x67.
        let tss_lo =
            0x67 | ((TSS & 0xff_ffff) << 16) | (0x89u64 << 40) | (((TSS >> 24) & 0xff) << 56);
        mem.write_u64(GDT + 0x28, tss_lo).unwrap();
        mem.write_u64(GDT + 0x30, TSS >> 32).unwrap();
        mem.write(GDTR_IMAGE, &0x37u16.to_le_bytes()).unwrap();
        mem.write_u64(GDTR_IMAGE + 2, GDT).unwrap();
        mem.write(IDTR_IMAGE, &0xfffu16.to_le_bytes()).unwrap();
        mem.write_u64(IDTR_IMAGE + 2, IDT).unwrap();
        // TSS: RSP0, IST1, no I/O bitmap.
        mem.write_u64(TSS + 4, RSP0_TOP).unwrap();
        mem.write_u64(TSS + 0x24, IST1_TOP).unwrap();
        mem.write(TSS + 0x66, &0x68u16.to_le_bytes()).unwrap();

        let mut gpr = [0u64; 16];
        gpr[4] = KSTACK_TOP;
        let mut m = Machine {
            mem,
            pt,
            labels,
            cr0: cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG,
            cr4: cr4::PAE | cr4::PGE | cr4::OSFXSR | cr4::OSXMMEXCPT,
            efer: efer::SCE | efer::LME | efer::LMA | efer::NXE,
            rflags: rflags::FIXED1,
            gpr,
            budget: 1_000_000,
            profile: krr_runtime::Profile::Host,
        };
        for v in 0..=255u8 {
            m.gate(v, Gate::default());
        }
        m
    }

    pub fn label(&self, name: &str) -> u64 {
        *self
            .labels
            .get(name)
            .unwrap_or_else(|| panic!("no label {name}"))
    }

    /// Rewrite IDT gate `v` (the target stays the vector's stub).
    pub fn gate(&mut self, v: u8, g: Gate) {
        let target = self.label(&format!("stub{v}"));
        let lo = (target & 0xffff)
            | ((KERNEL_CS as u64) << 16)
            | ((g.ist as u64) << 32)
            | ((g.typ as u64) << 40)
            | ((g.dpl as u64) << 45)
            | ((g.present as u64) << 47)
            | (((target >> 16) & 0xffff) << 48);
        self.mem.write_u64(IDT + 16 * v as u64, lo).unwrap();
        self.mem
            .write_u64(IDT + 16 * v as u64 + 8, target >> 32)
            .unwrap();
    }

    /// What the handler does after reporting vector `v`: `0` stop, `1` return, else resume at
    /// that address.
    pub fn action(&mut self, v: u8, what: u64) {
        self.mem.write_u64(ACTION + 8 * v as u64, what).unwrap();
    }

    /// Set parameter `i` (the qword at `PARAMS + 8 * i`).
    pub fn param(&mut self, i: usize, v: u64) {
        assert!(i < 32);
        self.mem.write_u64(PARAMS + 8 * i as u64, v).unwrap();
    }

    /// The current value of parameter `i`.
    pub fn param_value(&self, i: usize) -> u64 {
        self.mem.read_u64(PARAMS + 8 * i as u64).unwrap()
    }

    /// After vector `v`, resume at label `name`.
    pub fn resume_at(&mut self, v: u8, name: &str) {
        let a = self.label(name);
        self.action(v, a);
    }

    /// Set up the CPU and an engine for `tier`.
    pub fn start(self, tier: Tier) -> Session {
        let mut core = Core::with_memory(self.mem);
        let cpu = core.arch_mut();
        cpu.seg[seg::CS] = Segment::flat(KERNEL_CS, Segment::CODE64_DPL0);
        cpu.seg[seg::SS] = Segment::flat(KERNEL_SS, Segment::DATA_DPL0);
        for s in [seg::DS, seg::ES, seg::FS, seg::GS] {
            cpu.seg[s] = Segment::default();
        }
        cpu.cr0 = self.cr0;
        cpu.cr3 = self.pt.cr3;
        cpu.cr4 = self.cr4;
        cpu.efer = self.efer;
        cpu.rflags = self.rflags;
        cpu.gpr = self.gpr;
        cpu.rip = KCODE;
        core.set_icount_limit(self.budget);
        let engine = Engine::new(EngineConfig {
            deliver_exceptions: true,
            profile: self.profile,
            ..tier.engine_config()
        })
        .unwrap();
        Session {
            tier,
            engine,
            core,
            bus: TestBus::default(),
            labels: self.labels,
        }
    }

    /// Run in `tier` until the engine returns, and collect the outcome.
    pub fn run(self, tier: Tier) -> Outcome {
        let mut s = self.start(tier);
        let exit = s.run();
        s.finish(exit)
    }
}

fn build_kernel(k: &mut Asm, body: impl FnOnce(&mut Asm) -> AsmResult) -> AsmResult {
    let mut kmain = k.create_label();
    let mut common = k.create_label();
    // Prologue.
    k.lgdt(ptr(GDTR_IMAGE))?;
    k.lidt(ptr(IDTR_IMAGE))?;
    k.mov(ax, TSS_SEL as u32)?;
    k.ltr(ax)?;
    k.mov(ax, KERNEL_SS as u32)?;
    k.mov(ss, ax)?;
    k.mov(rsp, KSTACK_TOP)?;
    k.jmp(kmain)?;
    // Stubs.
    for v in 0..=255u8 {
        k.def(&format!("stub{v}"))?;
        if !has_error_code(v) {
            k.push(0)?;
        }
        k.push(v as i32)?;
        k.jmp(common)?;
    }
    // Common handler. Stack: rdx, rcx, rax, vector, error code, RIP, CS, RFLAGS, RSP, SS.
    k.set_label(&mut common)?;
    k.push(rax)?;
    k.push(rcx)?;
    k.push(rdx)?;
    for off in [24, 32] {
        k.mov(rax, qword_ptr(rsp + off))?;
        out64(k, EVENT_PORT)?;
    }
    k.mov(rax, cr2)?;
    out64(k, EVENT_PORT)?;
    for off in [40, 48, 56, 64, 72] {
        k.mov(rax, qword_ptr(rsp + off))?;
        out64(k, EVENT_PORT)?;
    }
    k.lea(rax, qword_ptr(rsp + 40))?;
    out64(k, EVENT_PORT)?;
    k.pushfq()?;
    k.pop(rax)?;
    out64(k, EVENT_PORT)?;
    let mut halt = k.create_label();
    let mut ret = k.create_label();
    k.mov(rcx, qword_ptr(rsp + 24))?;
    k.mov(rax, qword_ptr(rcx * 8 + ACTION as i32))?;
    k.test(rax, rax)?;
    k.jz(halt)?;
    k.cmp(rax, 1)?;
    k.je(ret)?;
    k.mov(qword_ptr(rsp + 40), rax)?;
    k.set_label(&mut ret)?;
    k.pop(rdx)?;
    k.pop(rcx)?;
    k.pop(rax)?;
    k.add(rsp, 16)?;
    k.iretq()?;
    k.set_label(&mut halt)?;
    k.name("handler_stop", halt);
    stop(k)?;
    // The test's kernel code.
    // (A NOP carries the label so that the test may label its first instruction.)
    k.set_label(&mut kmain)?;
    k.name("kmain", kmain);
    k.nop()?;
    body(k)?;
    Ok(())
}

/// A machine running in one tier.
pub struct Session {
    pub tier: Tier,
    pub engine: Engine,
    /// The CPU and the machine's memory.
    pub core: Core,
    pub bus: TestBus,
    pub labels: HashMap<String, u64>,
}

impl Session {
    /// Change the CPU model's CPUID entries (tests of what a model without a feature does).
    pub fn edit_cpuid(&mut self, f: impl FnMut(&mut krr_runtime::cpuid::CpuidEntry)) {
        let t = self.core.cpuid_mut();
        let n = t.len as usize;
        t.entries[..n].iter_mut().for_each(f);
    }

    pub fn cpu(&self) -> &CpuState {
        self.core.cpu()
    }

    pub fn run(&mut self) -> Exit {
        self.bus.exit_requested = false;
        self.engine.run_with_bus(&mut self.core, &mut self.bus)
    }

    pub fn finish(mut self, exit: Exit) -> Outcome {
        let events = self
            .bus
            .qwords(EVENT_PORT)
            .chunks(10)
            .map(|c| {
                assert_eq!(c.len(), 10, "truncated event report");
                Event {
                    vector: c[0] as u8,
                    error_code: c[1],
                    cr2: c[2],
                    rip: c[3],
                    cs: c[4],
                    rflags: c[5],
                    rsp: c[6],
                    ss: c[7],
                    frame: c[8],
                    hflags: c[9],
                }
            })
            .collect();
        Outcome {
            tier: self.tier,
            exit,
            reports: self.bus.qwords(REPORT_PORT),
            events,
            io: std::mem::take(&mut self.bus.io),
            cpu: snap(self.core.cpu()),
            labels: self.labels.clone(),
            core: self.core,
        }
    }
}

/// What a run produced.
pub struct Outcome {
    pub tier: Tier,
    pub exit: Exit,
    pub reports: Vec<u64>,
    pub events: Vec<Event>,
    pub io: Vec<Io>,
    pub cpu: Snap,
    pub labels: HashMap<String, u64>,
    /// The CPU and memory at the end.
    pub core: Core,
}

impl Outcome {
    pub fn label(&self, name: &str) -> u64 {
        *self
            .labels
            .get(name)
            .unwrap_or_else(|| panic!("no label {name}"))
    }
    pub fn u64_at(&self, phys: u64) -> u64 {
        self.core.mem().read_u64(phys).unwrap()
    }
    pub fn bytes(&self, phys: u64, len: usize) -> Vec<u8> {
        self.core.mem().slice(phys, len).unwrap().to_vec()
    }
    /// The only event (panics unless exactly one).
    pub fn event(&self) -> Event {
        assert_eq!(
            self.events.len(),
            1,
            "{:?}: expected one event, got {:#x?}",
            self.tier,
            self.events
        );
        self.events[0]
    }

    /// Panic unless `other` (another tier) produced exactly the same results.
    pub fn assert_same(&self, other: &Outcome) {
        let t = (self.tier, other.tier);
        assert_eq!(self.exit, other.exit, "exit differs {t:?}");
        assert_eq!(self.events, other.events, "events differ {t:?}");
        assert_eq!(self.reports, other.reports, "reports differ {t:?}");
        assert_eq!(self.io, other.io, "port IO differs {t:?}");
        assert_eq!(self.cpu, other.cpu, "CPU state differs {t:?}");
        let a = self.core.mem().slice(0, RAM as usize).unwrap();
        let b = other.core.mem().slice(0, RAM as usize).unwrap();
        if a != b {
            let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap() & !7;
            panic!(
                "guest memory differs {t:?}, first at {first:#x}: {:#x} vs {:#x}",
                self.u64_at(first as u64),
                other.u64_at(first as u64)
            );
        }
    }
}

/// Run `f` in every tier, require identical outcomes, and return the interpreter's.
pub fn all_tiers(f: impl Fn(Tier) -> Outcome) -> Outcome {
    let reference = f(TIERS[0]);
    for &t in &TIERS[1..] {
        let o = f(t);
        reference.assert_same(&o);
    }
    reference
}

/// Build a machine with `setup` and run it in every tier.
pub fn run_all(
    kernel: impl Fn(&mut Asm) -> AsmResult,
    user: impl Fn(&mut Asm) -> AsmResult,
    setup: impl Fn(&mut Machine),
) -> Outcome {
    all_tiers(|tier| {
        let mut m = Machine::new(&kernel, &user);
        setup(&mut m);
        m.run(tier)
    })
}
