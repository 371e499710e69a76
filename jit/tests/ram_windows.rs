//! Guest RAM in windows with holes (QEMU's `pc` layout) in every engine tier: page tables in
//! a high window map code and data in all three windows; code runs from the high windows,
//! loads and stores go through the TLB and the slow path (an access across two windows), a
//! store into code in the high window (and a host write reported through `notify_write`)
//! replaces the translated block, a store into the hole reaches the bus as MMIO and a jump
//! into the hole is unbacked.

mod common;

use common::*;
use iced_x86::code_asm::*;
use krr_jit::engine::{Engine, Exit};
use krr_jit::snippet::Tier;
use krr_runtime::{rflags, seg, Core, Segment};

const LOW: (u64, u64) = (0, 2 << 20);
const HIGH: (u64, u64) = (1 << 32, 2 << 20);
const RING: (u64, u64) = (0xf_0000_0000, 1 << 20);
const PT: (u64, u64) = (RING.0 + 0x8_0000, RING.0 + 0x10_0000);

/// Linear addresses and where they are mapped.
const MAIN: u64 = 0x40_0000; // RING + 0 (two pages at most)
const MAIN_PHYS: u64 = RING.0;
const SMC_FN: u64 = 0x50_0000; // RING + 0x6000, writable: `mov eax, imm32; ret`
const SMC_PHYS: u64 = RING.0 + 0x6000;
const LOW_FN: u64 = 0x60_0000; // 0x1000: `lea rax, [rdi + 0x10]; ret`
const LOW_FN_PHYS: u64 = 0x1000;
const HIGH_FN: u64 = 0x60_1000; // HIGH + 0x3000: `lea rax, [rdi + 0x20]; ret`
const HIGH_FN_PHYS: u64 = HIGH.0 + 0x3000;
/// Data pages: one in each window, then the high window's last page followed by the ring's
/// second page (an access across them spans two windows).
const DATA: [(u64, u64); 5] = [
    (0x70_0000, 0x2000),
    (0x70_1000, HIGH.0 + 0x5000),
    (0x70_2000, RING.0 + 0x2000),
    (0x70_3000, HIGH.0 + HIGH.1 - 0x1000),
    (0x70_4000, RING.0 + 0x3000),
];
const ACROSS: u64 = 0x70_3ffc;
const STACK: (u64, u64) = (0x80_0000, HIGH.0 + 0x10_0000);
const STACK_TOP: u64 = STACK.0 + 0x2000;
/// Mapped to `DOORBELL` (in the hole below 4 GiB): the test bus's MMIO page.
const MMIO: u64 = 0x90_0000;
/// Mapped to physical 0x8000_0000, in the hole.
const HOLE_CODE: u64 = 0xa0_0000;
const HOLE_PHYS: u64 = 0x8000_0000;
const PASSES: u64 = 4;

fn main_code(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(rsp, STACK_TOP)?;
    a.mov(r12, PASSES)?;
    let mut pass = a.create_label();
    a.set_label(&mut pass)?;
    for (i, &(linear, _)) in DATA[..3].iter().enumerate() {
        a.mov(rcx, 0x1111_0000u64 + ((i as u64) << 8))?;
        a.add(rcx, r12)?;
        a.mov(qword_ptr(linear + 0x100), rcx)?;
        a.mov(rax, qword_ptr(linear + 0x100))?;
        report(a, rax)?;
    }
    // Across the end of the high window into the ring (the slow path in every tier).
    a.mov(rcx, 0x8877_6655_4433_2211u64)?;
    a.add(rcx, r12)?;
    a.mov(qword_ptr(ACROSS), rcx)?;
    a.mov(rax, qword_ptr(ACROSS))?;
    report(a, rax)?;
    // Calls into the low and high windows.
    for f in [LOW_FN, HIGH_FN] {
        a.mov(rdi, r12)?;
        a.mov(rax, f)?;
        a.call(rax)?;
        report(a, rax)?;
    }
    // Self-modifying code in the ring: call, patch the immediate, call again.
    a.mov(rax, SMC_FN)?;
    a.call(rax)?;
    report(a, rax)?;
    a.lea(ecx, dword_ptr(r12 + 100))?;
    a.mov(dword_ptr(SMC_FN + 1), ecx)?;
    a.mov(rax, SMC_FN)?;
    a.call(rax)?;
    report(a, rax)?;
    // Back to the host between passes (through the dispatcher).
    a.out(EXIT_PORT as u32, al)?;
    let mut next = a.create_label();
    a.lea(rax, ptr(next))?;
    a.jmp(rax)?;
    a.set_label(&mut next)?;
    a.dec(r12)?;
    a.jnz(pass)?;
    // MMIO in the hole, then a jump into the hole.
    a.mov(dword_ptr(MMIO + 0x10), 0x55)?;
    a.mov(rax, HOLE_CODE)?;
    a.jmp(rax)
}

/// The reports one run makes: per pass `k` (PASSES down to 1), the three windows' values,
/// the value across windows, the two calls, the SMC function before and after the guest's
/// patch (before: 7 on the first pass, then what the host wrote through `notify_write`).
fn expected_reports() -> Vec<u64> {
    let mut r = Vec::new();
    for (n, k) in (1..=PASSES).rev().enumerate() {
        for i in 0..3u64 {
            r.push(0x1111_0000 + (i << 8) + k);
        }
        r.push(0x8877_6655_4433_2211 + k);
        r.push(k + 0x10);
        r.push(k + 0x20);
        r.push(if n == 0 { 7 } else { host_patch(n) });
        r.push(k + 100);
    }
    r
}

/// What the host writes into the SMC function's immediate after `n` exits.
fn host_patch(n: usize) -> u64 {
    1000 + n as u64
}

fn build() -> Core {
    let mut core = Core::with_windows(&[LOW, HIGH, RING]).unwrap();
    let mem = core.mem_mut();
    let mut pt = Pt::new(mem, PT.0, PT.1);
    let code = assemble(main_code, MAIN);
    assert!(code.len() <= 0x2000);
    mem.write(MAIN_PHYS, &code).unwrap();
    for p in 0..(code.len() as u64).div_ceil(0x1000) {
        pt.map(
            mem,
            MAIN + p * 0x1000,
            MAIN_PHYS + p * 0x1000,
            PageSize::K4,
            0,
        );
    }
    let smc = assemble(
        |a| {
            a.mov(eax, 7)?;
            a.ret()
        },
        SMC_FN,
    );
    assert_eq!(smc[0], 0xb8, "mov eax, imm32");
    mem.write(SMC_PHYS, &smc).unwrap();
    pt.map(mem, SMC_FN, SMC_PHYS, PageSize::K4, pte::RW);
    for (linear, phys, disp) in [(LOW_FN, LOW_FN_PHYS, 0x10), (HIGH_FN, HIGH_FN_PHYS, 0x20)] {
        let f = assemble(
            |a| {
                a.lea(rax, ptr(rdi + disp))?;
                a.ret()
            },
            linear,
        );
        mem.write(phys, &f).unwrap();
        pt.map(mem, linear, phys, PageSize::K4, 0);
    }
    let data = pte::RW | pte::NX;
    for (linear, phys) in DATA {
        pt.map(mem, linear, phys, PageSize::K4, data);
    }
    for p in 0..2 {
        pt.map(
            mem,
            STACK.0 + p * 0x1000,
            STACK.1 + p * 0x1000,
            PageSize::K4,
            data,
        );
    }
    pt.map(mem, MMIO, DOORBELL, PageSize::K4, data);
    pt.map(mem, HOLE_CODE, HOLE_PHYS, PageSize::K4, 0);

    let cpu = core.arch_mut();
    cpu.seg[seg::CS] = Segment::flat(KERNEL_CS, Segment::CODE64_DPL0);
    cpu.seg[seg::SS] = Segment::flat(KERNEL_SS, Segment::DATA_DPL0);
    cpu.cr0 = cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::PG;
    cpu.cr3 = pt.cr3;
    cpu.cr4 = cr4::PAE | cr4::OSFXSR | cr4::OSXMMEXCPT;
    cpu.efer = efer::SCE | efer::LME | efer::LMA | efer::NXE;
    cpu.rflags = rflags::FIXED1;
    cpu.rip = MAIN;
    core.set_icount_limit(1_000_000);
    core
}

struct Run {
    exits: Vec<Exit>,
    reports: Vec<u64>,
    io: Vec<Io>,
    rip: u64,
    icount: u64,
    ram: Vec<u8>,
    compiled: u64,
    invalidated: u64,
    core: Core,
}

fn run(tier: Tier) -> Run {
    let mut core = build();
    let mut engine = Engine::new(tier.engine_config()).unwrap();
    let mut bus = TestBus::default();
    let mut exits = Vec::new();
    loop {
        bus.exit_requested = false;
        let exit = engine.run_with_bus(&mut core, &mut bus);
        exits.push(exit);
        if exit != Exit::BusRequest || exits.len() > 2 * PASSES as usize {
            break;
        }
        // The host rewrites the SMC function's immediate behind the CPU's back.
        let v = host_patch(exits.len()) as u32;
        core.mem_mut()
            .write(SMC_PHYS + 1, &v.to_le_bytes())
            .unwrap();
        engine.notify_write(&mut core, SMC_PHYS + 1, 4);
        if tier == Tier::Tiered {
            // Let the next pass run the blocks made hot so far as compiled code.
            engine.finish_compiling();
        }
    }
    let ram = core
        .mem()
        .window_bytes()
        .flat_map(|(_, b)| b.iter().copied())
        .collect();
    Run {
        exits,
        reports: bus.reports(),
        io: bus.io,
        rip: core.arch().rip,
        icount: core.arch().icount,
        ram,
        compiled: engine.stats.blocks_compiled,
        invalidated: engine.stats.blocks_invalidated,
        core,
    }
}

#[test]
fn code_and_data_in_every_window_in_every_tier() {
    let mut expected_exits = vec![Exit::BusRequest; PASSES as usize + 1];
    expected_exits.push(Exit::Unbacked { phys: HOLE_PHYS });
    let reference = run(TIERS[0]);
    for tier in TIERS {
        let r = if tier == TIERS[0] {
            &reference
        } else {
            &run(tier)
        };
        assert_eq!(r.exits, expected_exits, "{tier:?}");
        assert_eq!(r.reports, expected_reports(), "{tier:?}");
        assert_eq!(
            r.io,
            [Io::Out {
                port: 0x10,
                size: 4,
                value: 0x55
            }],
            "{tier:?}: the store into the hole is MMIO"
        );
        assert_eq!(r.rip, HOLE_CODE, "{tier:?}");
        assert_eq!(r.icount, reference.icount, "{tier:?}");
        assert!(r.ram == reference.ram, "{tier:?}: guest RAM differs");
        assert!(
            r.invalidated >= 2 * PASSES - 1,
            "{tier:?}: {} blocks invalidated",
            r.invalidated
        );
        if tier != Tier::Interpreter {
            assert!(r.compiled > 0, "{tier:?}: nothing compiled");
        }
        let mem = r.core.mem();
        // The walks set accessed and dirty bits in the ring's tables.
        let linears = DATA.iter().map(|d| d.0).chain([STACK_TOP - 8]);
        for linear in linears {
            let pte = mem.read_u64(leaf(&r.core, linear)).unwrap();
            assert_eq!(pte & (pte::A | pte::D), pte::A | pte::D, "{linear:#x}");
        }
        let mut across = mem.slice(DATA[3].1 + 0xffc, 4).unwrap().to_vec();
        across.extend(mem.slice(DATA[4].1, 4).unwrap());
        assert_eq!(across, (0x8877_6655_4433_2211u64 + 1).to_le_bytes());
        assert!(mem.read_u64(DATA[3].1 + 0xffc).is_err(), "across a window");
    }
}

/// Guest-physical address of the PTE that maps `linear` (4 KiB pages).
fn leaf(core: &Core, linear: u64) -> u64 {
    let mut table = core.arch().cr3 & pte::ADDR;
    for level in (1..4).rev() {
        let at = table + ((linear >> (12 + 9 * level)) & 0x1ff) * 8;
        table = core.mem().read_u64(at).unwrap() & pte::ADDR;
    }
    table + ((linear >> 12) & 0x1ff) * 8
}
