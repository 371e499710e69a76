//! AVX state and the VEX instructions' system side, in every engine tier: YMM upper halves
//! kept by legacy SSE and zeroed by VEX.128 forms and VZEROUPPER/VZEROALL; the #UD/#NM
//! gating (CR4.OSXSAVE, XCR0, CR0.TS); XSAVE component 2 in the standard (XSAVE/XRSTOR) and
//! compacted (XSAVEC, XSAVES/XRSTORS) formats, XCOMP_BV, IA32_XSS and CPUID leaf 0xD; masked
//! moves faulting only on selected elements (as measured on this host); gathers, with their
//! partial progress at a fault. The VEX operations themselves are compared with this CPU by
//! the differential harness (tests/diff_cpu.rs, every VEX form).

mod common;
use common::*;
use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction, MemoryOperand, Register};
use krr_jit::snippet::*;
use krr_runtime::arch::vector::{GP, NM, PF, UD};

const SNIP_CODE: u64 = 0x1000_0000;
const SNIP_DATA: u64 = 0x2000_0000;
const SNIP_TIERS: [Tier; 4] = [
    Tier::Interpreter,
    Tier::Jit,
    Tier::JitSingleStep,
    Tier::Tiered,
];

fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Distinct recognisable values: register `r`'s XMM part and upper half.
fn xmm_v(r: usize) -> u128 {
    0x1111_2222_3333_4444_5555_6666_7777_8800 | r as u128
}
fn hi_v(r: usize) -> u128 {
    0xaaaa_bbbb_cccc_dddd_eeee_ffff_0000_1100 | r as u128
}

fn snippet_state() -> UserState {
    let mut st = UserState {
        rip: SNIP_CODE,
        rflags: 0x202,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    for r in 0..16 {
        st.xmm[r] = xmm_v(r);
        st.ymm_hi[r] = hi_v(r);
    }
    st.gpr[6] = SNIP_DATA; // rsi
    st
}

/// Run a user-mode snippet in every tier; every tier must end the same way. Returns the
/// interpreter's result.
fn run_snip(
    prog: impl Fn(&mut CodeAssembler) -> Result<(), IcedError>,
    data: Vec<u8>,
    st: &UserState,
) -> SnippetResult {
    let code = assemble(prog, SNIP_CODE);
    let snippet = Snippet {
        code_addr: SNIP_CODE,
        code,
        regions: vec![Region {
            addr: SNIP_DATA,
            data,
        }],
    };
    let mut first: Option<SnippetResult> = None;
    for tier in SNIP_TIERS {
        let r = run_snippet(&snippet, st, tier, 10_000).unwrap();
        if let Some(f) = &first {
            assert_eq!(r.outcome, f.outcome, "{tier:?}");
            assert_eq!(r.state, f.state, "{tier:?}");
            assert_eq!(r.regions, f.regions, "{tier:?}");
        } else {
            first = Some(r);
        }
    }
    first.unwrap()
}

#[test]
fn legacy_sse_keeps_upper_halves_and_vex128_zeroes_them() {
    if !has_avx2() {
        return;
    }
    let st = snippet_state();
    let r = run_snip(
        |a| {
            a.paddd(xmm1, xmm2)?; // legacy: 255:128 unchanged
            a.movaps(xmm7, xmm8)?;
            a.vpaddd(xmm3, xmm3, xmm4)?; // VEX.128: zeroed
            a.vpaddd(ymm5, ymm5, ymm6)?; // VEX.256: computed
            a.vmovdqu(xmm9, xmmword_ptr(rsi))?; // VEX.128 load: zeroed
            a.vmovdqu(ymm10, ymmword_ptr(rsi))?;
            a.vmovdqu(ymmword_ptr(rsi + 32), ymm11)?;
            Ok(())
        },
        (0..64u8).collect(),
        &st,
    );
    assert_eq!(r.outcome, SnippetEnd::Completed);
    let add32 = |a: u128, b: u128| -> u128 {
        (0..4).fold(0, |v, i| {
            let x = (a >> (32 * i)) as u32;
            let y = (b >> (32 * i)) as u32;
            v | (x.wrapping_add(y) as u128) << (32 * i)
        })
    };
    let s = &r.state;
    assert_eq!(s.xmm[1], add32(xmm_v(1), xmm_v(2)));
    assert_eq!(s.ymm_hi[1], hi_v(1), "legacy PADDD keeps bits 255:128");
    assert_eq!(s.ymm_hi[7], hi_v(7), "legacy MOVAPS keeps bits 255:128");
    assert_eq!(s.xmm[3], add32(xmm_v(3), xmm_v(4)));
    assert_eq!(s.ymm_hi[3], 0, "VEX.128 zeroes bits 255:128");
    assert_eq!(s.ymm_hi[5], add32(hi_v(5), hi_v(6)));
    assert_eq!(s.ymm_hi[9], 0);
    let mem: Vec<u8> = (0..32u8).collect();
    assert_eq!(
        s.xmm[10],
        u128::from_le_bytes(mem[..16].try_into().unwrap())
    );
    assert_eq!(
        s.ymm_hi[10],
        u128::from_le_bytes(mem[16..].try_into().unwrap())
    );
    let stored = &r.regions[0].data[32..64];
    assert_eq!(stored[..16], xmm_v(11).to_le_bytes());
    assert_eq!(stored[16..], hi_v(11).to_le_bytes());

    let r = run_snip(|a| a.vzeroupper(), vec![0; 64], &st);
    for i in 0..16 {
        assert_eq!(
            (r.state.xmm[i], r.state.ymm_hi[i]),
            (xmm_v(i), 0),
            "VZEROUPPER"
        );
    }
    let r = run_snip(|a| a.vzeroall(), vec![0; 64], &st);
    assert_eq!(r.state.xmm, [0; 16], "VZEROALL");
    assert_eq!(r.state.ymm_hi, [0; 16], "VZEROALL");
}

/// A 32-byte window at `SNIP_DATA + 4096 - 16`: elements 0-3 (dwords of 8 bytes... see each
/// case) in the mapped page, the rest in the unmapped page after the region.
#[test]
fn masked_moves_fault_only_on_selected_elements() {
    if !has_avx2() {
        return;
    }
    let window = SNIP_DATA + 4096 - 16;
    let masks: [([i32; 8], Option<u64>); 4] = [
        ([-1, -1, -1, -1, 0, 0, 0, 0], None),
        ([0; 8], None),
        ([0, -1, 0, 0, 0, 0, 0, -1], Some(4096 + 12)),
        ([-1, 0, 0, 0, -1, 0, 0, 0], Some(4096)),
    ];
    for (mask, fault) in masks {
        let mut st = snippet_state();
        let m: Vec<u8> = mask.iter().flat_map(|x| x.to_le_bytes()).collect();
        st.xmm[2] = u128::from_le_bytes(m[..16].try_into().unwrap());
        st.ymm_hi[2] = u128::from_le_bytes(m[16..].try_into().unwrap());
        st.gpr[6] = window;
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let want = |r: &SnippetResult| match fault {
            None => assert_eq!(r.outcome, SnippetEnd::Completed, "mask {mask:?}"),
            Some(off) => match r.outcome {
                SnippetEnd::Exception {
                    vector, address, ..
                } => assert_eq!((vector, address), (PF, SNIP_DATA + off), "mask {mask:?}"),
                o => panic!("mask {mask:?}: {o:?}"),
            },
        };
        let r = run_snip(
            |a| a.vpmaskmovd(ymm1, ymm2, ymmword_ptr(rsi)),
            data.clone(),
            &st,
        );
        want(&r);
        if fault.is_none() {
            let mut v = [0u8; 32];
            for i in 0..8 {
                if mask[i] < 0 {
                    let o = 4096 - 16 + 4 * i;
                    v[4 * i..4 * i + 4].copy_from_slice(&data[o..o + 4]);
                }
            }
            assert_eq!(r.state.xmm[1].to_le_bytes(), v[..16]);
            assert_eq!(r.state.ymm_hi[1].to_le_bytes(), v[16..]);
        } else {
            assert_eq!(r.state.xmm[1], xmm_v(1), "a faulting load writes nothing");
        }
        let r = run_snip(
            |a| a.vpmaskmovd(ymmword_ptr(rsi), ymm2, ymm3),
            data.clone(),
            &st,
        );
        want(&r);
        let got = &r.regions[0].data;
        let src: Vec<u8> = [xmm_v(3).to_le_bytes(), hi_v(3).to_le_bytes()].concat();
        for i in 0..4 {
            let o = 4096 - 16 + 4 * i;
            let expect = if fault.is_none() && mask[i] < 0 {
                &src[4 * i..4 * i + 4]
            } else {
                &data[o..o + 4]
            };
            assert_eq!(&got[o..o + 4], expect, "mask {mask:?} element {i}");
        }
    }
}

/// VPGATHERDD ymm1, [rsi + `index` * 4], ymm3 (code_asm names only the EVEX form).
fn gather_dd(a: &mut CodeAssembler, index: Register) -> Result<(), IcedError> {
    let m = MemoryOperand::new(Register::RSI, index, 4, 0, 0, false, Register::None);
    let i = Instruction::with3(
        Code::VEX_Vpgatherdd_ymm_vm32y_ymm,
        Register::YMM1,
        m,
        Register::YMM3,
    )?;
    a.add_instruction(i)
}

#[test]
fn gathers_read_selected_elements_and_keep_progress_at_a_fault() {
    if !has_avx2() {
        return;
    }
    let table: Vec<u8> = (0..4096u32)
        .flat_map(|i| (i * 3 + 1).to_le_bytes())
        .take(4096)
        .collect();
    let mut st = snippet_state();
    // ymm2: dword indices 0, 5, 100, 7, -1 (before the table: rsi points 16 bytes in), 3, 2, 1.
    let idx: [i32; 8] = [0, 5, 100, 7, -1, 3, 2, 1];
    let b: Vec<u8> = idx.iter().flat_map(|x| x.to_le_bytes()).collect();
    st.xmm[2] = u128::from_le_bytes(b[..16].try_into().unwrap());
    st.ymm_hi[2] = u128::from_le_bytes(b[16..].try_into().unwrap());
    // ymm3: mask selecting all but element 3.
    let mask: [i32; 8] = [-1, -1, -1, 0, -1, -1, -1, -1];
    let m: Vec<u8> = mask.iter().flat_map(|x| x.to_le_bytes()).collect();
    st.xmm[3] = u128::from_le_bytes(m[..16].try_into().unwrap());
    st.ymm_hi[3] = u128::from_le_bytes(m[16..].try_into().unwrap());
    st.gpr[6] = SNIP_DATA + 16;
    let r = run_snip(|a| gather_dd(a, Register::YMM2), table.clone(), &st);
    assert_eq!(r.outcome, SnippetEnd::Completed);
    let dword = |o: usize| u32::from_le_bytes(table[o..o + 4].try_into().unwrap());
    let old: Vec<u8> = [xmm_v(1).to_le_bytes(), hi_v(1).to_le_bytes()].concat();
    let mut want = [0u8; 32];
    for i in 0..8 {
        let v = if mask[i] < 0 {
            dword((16 + 4 * idx[i] as isize) as usize)
        } else {
            u32::from_le_bytes(old[4 * i..4 * i + 4].try_into().unwrap())
        };
        want[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    assert_eq!(r.state.xmm[1].to_le_bytes(), want[..16]);
    assert_eq!(r.state.ymm_hi[1].to_le_bytes(), want[16..]);
    assert_eq!((r.state.xmm[3], r.state.ymm_hi[3]), (0, 0), "mask cleared");

    // Element 4's index now points past the table's page: elements 0-2 are gathered (their
    // mask elements cleared), element 4 faults, 5-7 are left for the restart.
    let mut far_state = st;
    let far: [i32; 8] = [0, 5, 100, 7, 5000, 3, 2, 1];
    let b: Vec<u8> = far.iter().flat_map(|x| x.to_le_bytes()).collect();
    far_state.ymm_hi[2] = u128::from_le_bytes(b[16..].try_into().unwrap());
    let r = run_snip(|a| gather_dd(a, Register::YMM2), table.clone(), &far_state);
    match r.outcome {
        SnippetEnd::Exception {
            vector, address, ..
        } => assert_eq!((vector, address), (PF, SNIP_DATA + 16 + 4 * 5000)),
        o => panic!("{o:?}"),
    }
    assert_eq!(
        r.state.xmm[1].to_le_bytes(),
        want[..16],
        "elements 0-3 done"
    );
    let m = r.state.xmm[3].to_le_bytes();
    assert_eq!(m[..12], [0; 12], "mask elements 0-2 cleared");
    assert_eq!(m[12..], [0; 4], "element 3 was not selected");
    assert_eq!(
        r.state.ymm_hi[3], far_state.ymm_hi[3],
        "elements 4-7 still selected"
    );
    assert_eq!(r.state.ymm_hi[1], hi_v(1), "elements 4-7 not gathered yet");

    // Destination, index and mask must differ: #UD.
    let r = run_snip(|a| gather_dd(a, Register::YMM1), table, &st);
    assert!(matches!(
        r.outcome,
        SnippetEnd::Exception { vector: UD, .. }
    ));
}

/// Set (`on`) or clear bits of CR0/CR4 (clobbers RAX, RCX).
fn set_cr(a: &mut Asm, cr: AsmRegisterCr, bits: u64, on: bool) -> AsmResult {
    a.mov(rax, cr)?;
    a.mov(rcx, if on { bits } else { !bits })?;
    if on {
        a.or(rax, rcx)?;
    } else {
        a.and(rax, rcx)?;
    }
    a.mov(cr, rax)
}

fn xsetbv(a: &mut Asm, v: u32) -> AsmResult {
    a.xor(ecx, ecx)?;
    a.xor(edx, edx)?;
    a.mov(eax, v)?;
    a.xsetbv()
}

/// #UD without CR4.OSXSAVE or without XCR0's AVX bit, #NM with CR0.TS; BMI (a VEX GPR
/// instruction) needs none of it; XSETBV refuses AVX without SSE.
#[test]
fn vex_gating() {
    if !has_avx2() {
        return;
    }
    let r = run_all(
        |k| {
            k.mov(rbx, 5u64)?;
            k.andn(rbx, rbx, rbx)?; // BMI1: no OSXSAVE needed
            report(k, rbx)?;
            cases(k, 4, |k, i| match i {
                0 => k.vpaddd(ymm1, ymm1, ymm1), // #UD: CR4.OSXSAVE = 0
                1 => {
                    set_cr(k, cr4, cr4::OSXSAVE, true)?;
                    xsetbv(k, 3)?;
                    k.vaddps(xmm1, xmm1, xmm1) // #UD: XCR0.AVX = 0
                }
                2 => xsetbv(k, 5), // #GP: AVX without SSE
                _ => {
                    xsetbv(k, 7)?;
                    k.vpaddd(ymm1, ymm1, ymm1)?;
                    set_cr(k, cr0, cr0::TS, true)?;
                    k.vpaddd(ymm1, ymm1, ymm1) // #NM
                }
            })?;
            set_cr(k, cr0, cr0::TS, false)?;
            stop(k)
        },
        |_| Ok(()),
        |m| {
            m.resume_at(UD, "next");
            m.resume_at(GP, "next");
            m.resume_at(NM, "next");
        },
    );
    assert_eq!(r.reports, vec![0]);
    let got: Vec<u8> = r.events.iter().map(|e| e.vector).collect();
    assert_eq!(got, vec![UD, UD, GP, NM]);
    assert_eq!(r.cpu.xcr0, 7);
}

/// Where the kernel tests keep their XSAVE areas (64-byte aligned, in KSCRATCH's pages).
const STD: u64 = KSCRATCH;
const CMP: u64 = KSCRATCH + 0x400;
const SRC: u64 = KSCRATCH + 0x800;
const XS: u64 = KSCRATCH + 0x1000;

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// XSAVE/XRSTOR with component 2 at 576 (standard format), XSAVEC and XSAVES (compacted:
/// XCOMP_BV = bit 63 | RFBM, component 2 right after the header), XRSTOR of the compacted
/// format, XRSTORS refusing the standard one, XSAVES at CPL3, IA32_XSS, CPUID leaf 0xD's
/// sizes for XCR0 = 7.
#[test]
fn xsave_images_with_ymm() {
    if !has_avx2() {
        return;
    }
    let r = run_all(
        |k| {
            set_cr(k, cr4, cr4::OSXSAVE, true)?;
            xsetbv(k, 7)?;
            // YMM0-15 from SRC (512 bytes: register i's 32 bytes at SRC + 32 i).
            for i in 0..16 {
                let y = [
                    ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11,
                    ymm12, ymm13, ymm14, ymm15,
                ][i];
                k.vmovdqu(y, ymmword_ptr(SRC + 32 * i as u64))?;
            }
            k.mov(eax, 7)?;
            k.xor(edx, edx)?;
            k.xsave64(ptr(STD))?;
            k.xsavec64(ptr(CMP))?;
            k.vzeroall()?;
            // XRSTOR of the compacted image brings every register back.
            k.mov(eax, 7)?;
            k.xrstor64(ptr(CMP))?;
            k.vmovdqu(ymmword_ptr(SRC + 0x200), ymm15)?;
            k.vzeroupper()?;
            // And of the standard one.
            k.mov(eax, 7)?;
            k.xrstor64(ptr(STD))?;
            k.vmovdqu(ymmword_ptr(SRC + 0x220), ymm7)?;
            // RFBM without AVX: the upper halves stay as they are.
            k.vzeroupper()?;
            k.mov(eax, 3)?;
            k.xrstor64(ptr(STD))?;
            k.vmovdqu(ymmword_ptr(SRC + 0x240), ymm7)?;
            // XSAVES at CPL0 writes the compacted form too.
            k.mov(eax, 7)?;
            k.xrstor64(ptr(STD))?;
            k.xsaves64(ptr(XS))?;
            k.mov(eax, 7)?;
            k.xrstors64(ptr(XS))?;
            // CPUID leaf 0xD for XCR0 = 7.
            for sub in 0..3 {
                k.mov(eax, 0xd)?;
                k.mov(ecx, sub)?;
                k.cpuid()?;
                k.mov(r8, rax)?;
                report(k, r8)?;
                report(k, rbx)?;
                report(k, rcx)?;
            }
            // IA32_XSS reads 0.
            k.mov(ecx, 0xda0)?;
            k.rdmsr()?;
            report(k, rax)?;
            cases(k, 3, |k, i| match i {
                // XRSTORS needs the compacted form: #GP.
                0 => {
                    k.mov(eax, 7)?;
                    k.xrstors64(ptr(STD))
                }
                // IA32_XSS takes no component: #GP.
                1 => {
                    k.mov(ecx, 0xda0)?;
                    k.mov(eax, 1)?;
                    k.xor(edx, edx)?;
                    k.wrmsr()
                }
                // XRSTOR of a header naming AVX with XCR0 = 3: #GP.
                _ => {
                    xsetbv(k, 3)?;
                    k.mov(eax, 7)?;
                    k.xrstor64(ptr(STD))
                }
            })?;
            stop(k)
        },
        |_| Ok(()),
        |m| {
            let src: Vec<u8> = (0..512u32).map(|i| (i * 13 + 5) as u8).collect();
            m.mem.write(SRC, &src).unwrap();
            m.resume_at(GP, "next");
        },
    );
    let src: Vec<u8> = (0..512u32).map(|i| (i * 13 + 5) as u8).collect();
    let upper = |i: usize| &src[32 * i + 16..32 * i + 32];
    let std = r.bytes(STD, 832);
    assert_eq!(u64_at(&std, 512), 7, "XSTATE_BV");
    assert_eq!(u64_at(&std, 520), 0, "XCOMP_BV of the standard form");
    for i in 0..16 {
        assert_eq!(&std[160 + 16 * i..176 + 16 * i], &src[32 * i..32 * i + 16]);
        assert_eq!(&std[576 + 16 * i..592 + 16 * i], upper(i), "YMM{i}_H");
    }
    let cmp = r.bytes(CMP, 832);
    assert_eq!(u64_at(&cmp, 512), 7, "XSTATE_BV");
    assert_eq!(u64_at(&cmp, 520), 1 << 63 | 7, "XCOMP_BV");
    assert_eq!(
        &cmp[576..832],
        &std[576..832],
        "component 2 right after the header"
    );
    let xsaves = r.bytes(XS, 832);
    assert_eq!(&xsaves[512..528], &cmp[512..528]);
    assert_eq!(&xsaves[576..832], &cmp[576..832]);
    let back = r.bytes(SRC + 0x200, 0x60);
    assert_eq!(
        &back[0..32],
        &src[15 * 32..16 * 32],
        "restored from the compacted form"
    );
    assert_eq!(
        &back[32..64],
        &src[7 * 32..8 * 32],
        "restored from the standard form"
    );
    assert_eq!(&back[64..80], &src[7 * 32..7 * 32 + 16]);
    assert_eq!(
        &back[80..96],
        &[0; 16],
        "RFBM without AVX leaves the upper halves"
    );
    assert_eq!(
        r.reports,
        vec![7, 832, 832, 0b1011, 832, 0, 256, 576, 0, 0],
        "CPUID 0xD.0-2 (EAX EBX ECX), IA32_XSS"
    );
    let got: Vec<u8> = r.events.iter().map(|e| e.vector).collect();
    assert_eq!(got, vec![GP, GP, GP]);
    for i in 0..16 {
        let want = u128::from_le_bytes(upper(i).try_into().unwrap());
        let have = r.core.cpu().ymm_hi[i];
        assert_eq!(
            have[0] as u128 | (have[1] as u128) << 64,
            want,
            "YMM{i}_H at the end"
        );
    }
}

/// XSAVES is CPL0-only: #GP(0) at CPL3 (XSAVEC is not).
#[test]
fn xsaves_at_cpl3_faults() {
    if !has_avx2() {
        return;
    }
    let r = run_all(
        |k| {
            set_cr(k, cr4, cr4::OSXSAVE, true)?;
            xsetbv(k, 7)?;
            iret_to_user(k, UCODE, USTACK_TOP, 0x202)
        },
        |u| {
            u.mov(eax, 7)?;
            u.xor(edx, edx)?;
            u.mov(rbx, UDATA)?;
            u.xsavec64(ptr(rbx))?;
            u.def("xsaves")?;
            u.xsaves64(ptr(rbx))
        },
        |_| {},
    );
    let e = r.event();
    assert_eq!((e.vector, e.error_code, e.rip), (GP, 0, r.label("xsaves")));
    assert_eq!(r.u64_at(UDATA + 520), 1 << 63 | 7, "XSAVEC ran at CPL3");
}
