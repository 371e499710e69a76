//! Compatibility mode (32-bit code under a 64-bit kernel) in every engine tier: a 64-bit kernel
//! enters a 32-bit CPL3 code segment with IRETQ; the 32-bit code checks operand, address and
//! stack sizes, the instructions only legacy modes have, and comes back to the kernel through
//! `int 0x80`, SYSCALL (CSTAR), SYSENTER/SYSEXIT, SYSRETL, far transfers and faults. Expected
//! values follow the SDM's definitions (noted at each check).

mod common;

use common::*;
use iced_x86::code_asm::*;
use krr_runtime::arch::msr;
use krr_runtime::vector::{GP, PF, UD};

/// GDT entries this test adds after the machine's: 0x38 32-bit user code, 0x40 32-bit user
/// data, 0x48 64-bit user code, 0x50 user data with base `U32DATA`.
const U32_CS: u16 = 0x3b;
const U32_SS: u16 = 0x43;
const U64_CS: u16 = 0x4b;
const BASED_DS: u16 = 0x53;
/// STAR: SYSCALL to 0x08/0x10; SYSRETL to CS 0x3b / SS 0x43, SYSRETQ to CS 0x4b.
const COMPAT_STAR: u64 = (0x38u64 << 48) | (0x08u64 << 32);
/// SYSENTER_CS: SYSENTER to 0x08/0x10, SYSEXIT (32-bit) to CS 0x1b / SS 0x23.
const SYSENTER_CS: u64 = 0x08;

const U32CODE: u64 = TEST_AREA;
const U64CODE: u64 = TEST_AREA + 0x8000;
const U32DATA: u64 = TEST_AREA + 0x10000;
const U32STACK: u64 = U32DATA + 0x4000;
/// Kernel stack for SYSENTER (IA32_SYSENTER_ESP).
const SYSENTER_STACK: u64 = KSTACK_TOP - 0x800;
/// User RFLAGS: IOPL 3, so that 32-bit code may report on the test ports itself.
const USER_FLAGS: u32 = 0x3002;

/// Report EAX's value from 32-bit code (as a 64-bit report: EAX, then 0).
fn report32(a: &mut CodeAssembler) -> AsmResult {
    a.out(REPORT_PORT as u32, eax)?;
    a.push(eax)?;
    a.xor(eax, eax)?;
    a.out(REPORT_PORT as u32, eax)?;
    a.pop(eax)
}

fn report_reg32(a: &mut CodeAssembler, r: AsmRegister32) -> AsmResult {
    a.mov(eax, r)?;
    report32(a)
}

/// Write the 64-bit `value` to MSR `index` (clobbers RAX, RCX, RDX).
fn wrmsr_label(k: &mut Asm, index: u32, l: CodeLabel) -> AsmResult {
    k.lea(rax, ptr(l))?;
    k.mov(rdx, rax)?;
    k.shr(rdx, 32)?;
    k.mov(ecx, index)?;
    k.wrmsr()
}

/// The kernel: set the MSRs, enter the 32-bit code with IRETQ; the SYSCALL (CSTAR) and
/// SYSENTER entries report what the CPU handed them and return with SYSRETL and SYSEXIT.
fn kernel(k: &mut Asm) -> AsmResult {
    let mut cstar = k.create_label();
    let mut sysenter = k.create_label();
    wrmsr(k, msr::STAR, COMPAT_STAR)?;
    wrmsr_label(k, msr::CSTAR, cstar)?;
    wrmsr(k, msr::SYSENTER_CS, SYSENTER_CS)?;
    wrmsr(k, msr::SYSENTER_ESP, SYSENTER_STACK)?;
    wrmsr_label(k, msr::SYSENTER_EIP, sysenter)?;
    k.push(U32_SS as i32)?;
    k.push(U32STACK as i32)?;
    k.push(USER_FLAGS as i32)?;
    k.push(U32_CS as i32)?;
    k.push(U32CODE as i32)?;
    k.iretq()?;

    // SYSCALL from compatibility mode: RCX = the next EIP, R11 = RFLAGS, CS/SS from STAR.
    k.set_label(&mut cstar)?;
    k.name("cstar", cstar);
    report(k, rcx)?;
    report(k, r11)?;
    k.mov(eax, cs)?;
    report(k, rax)?;
    k.sysret()?; // SYSRETL: to EIP = ECX in the 32-bit code segment STAR[63:48].

    // SYSENTER: RSP = IA32_SYSENTER_ESP; the 32-bit caller passed its return EIP in EDX and
    // its ESP in ECX, which SYSEXIT uses.
    k.set_label(&mut sysenter)?;
    k.name("sysenter", sysenter);
    k.pushfq()?; // (before the reports change the flags)
    k.pop(rbx)?;
    report(k, rsp)?;
    k.mov(eax, cs)?;
    report(k, rax)?;
    report(k, rbx)?;
    k.sysexit()
}

/// 64-bit user code reached by a far CALL from the 32-bit code: reports a 64-bit value and
/// returns with a 32-bit far RET (RETF pops EIP and CS, 4 bytes each).
fn user64(u: &mut Asm) -> AsmResult {
    u.mov(rax, 0x1_2345_6789u64)?;
    u.out(REPORT_PORT as u32, eax)?;
    u.shr(rax, 32)?;
    u.out(REPORT_PORT as u32, eax)?;
    u.mov(rax, rsp)?;
    u.out(REPORT_PORT as u32, eax)?;
    u.shr(rax, 32)?;
    u.out(REPORT_PORT as u32, eax)?;
    u.db(&[0xcb]) // RETF (32-bit operand size)
}

/// The 32-bit program; each step reports what the SDM says it produces.
fn user32(u: &mut Asm) -> AsmResult {
    let a = &mut u.a;
    let mut sub = a.create_label();
    let mut after_call = a.create_label();
    report_reg32(a, esp)?;
    // PUSH imm / POP r32 move ESP by 4; CALL pushes the 4-byte return EIP.
    a.push(0x1122_3344)?;
    a.pop(ebx)?;
    report_reg32(a, ebx)?;
    a.call(sub)?;
    a.set_label(&mut after_call)?;
    u.name("after_call", after_call);
    let a = &mut u.a;
    report_reg32(a, esp)?;
    // PUSHAD: EAX, ECX, EDX, EBX, the old ESP, EBP, ESI, EDI; POPAD skips ESP.
    for (r, v) in [
        (eax, 1),
        (ecx, 2),
        (edx, 3),
        (ebx, 4),
        (ebp, 6),
        (esi, 7),
        (edi, 8),
    ] {
        a.mov(r, v)?;
    }
    a.pushad()?;
    a.mov(eax, dword_ptr(esp + 12))?;
    report32(a)?;
    a.mov(eax, dword_ptr(esp + 28))?;
    report32(a)?;
    a.mov(eax, dword_ptr(esp))?;
    report32(a)?;
    a.mov(dword_ptr(esp + 12), 0x1234)?;
    for r in [eax, ecx, edx, ebx, ebp, esi, edi] {
        a.xor(r, r)?;
    }
    a.popad()?;
    a.lea(eax, dword_ptr(eax + ecx * 2))?;
    a.lea(eax, dword_ptr(eax + edi * 8))?;
    report32(a)?; // 1 + 2*2 + 8*8 = 69
    report_reg32(a, esp)?;
    // INC/DEC are the one-byte 0x40-0x4F forms here.
    a.mov(eax, 0xffff_ffffu32)?;
    a.db(&[0x40])?; // inc eax
    a.pushfd()?;
    report32(a)?;
    a.pop(eax)?;
    a.and(eax, 0xcd5)?;
    report32(a)?; // ZF | PF | AF (0xffffffff + 1)
    a.mov(ecx, 0)?;
    a.db(&[0x49])?; // dec ecx
    report_reg32(a, ecx)?;
    // Addresses wrap at 4 GiB: 0xfffffff0 + (U32DATA + 0x20) is U32DATA + 0x10.
    a.mov(dword_ptr(U32DATA as u32 + 0x10), 0x5566_7788)?;
    a.mov(ebx, 0xffff_fff0u32)?;
    a.mov(eax, dword_ptr(ebx + (U32DATA as i32 + 0x20)))?;
    report32(a)?;
    // 16-bit addressing (0x67): BX + SI wraps at 64 KiB.
    a.mov(ebx, 0x1234_fff0)?;
    a.mov(esi, 0x20)?;
    a.db(&[0x67, 0x8d, 0x00])?; // lea eax, [bx+si]
    report32(a)?;
    // A data segment's base applies in compatibility mode.
    a.mov(eax, BASED_DS as u32)?;
    a.mov(fs, ax)?;
    a.mov(eax, dword_ptr(0x10).fs())?;
    report32(a)?;
    // 16-bit operand size: PUSH AX moves ESP by 2.
    a.mov(eax, 0xabcd)?;
    a.push(ax)?;
    a.mov(eax, esp)?;
    a.pop(cx)?;
    report32(a)?;
    report_reg32(a, ecx)?;
    // ENTER/LEAVE with a 32-bit frame.
    a.mov(ebp, 0x77)?;
    a.enter(8, 0)?;
    report_reg32(a, ebp)?;
    report_reg32(a, esp)?;
    a.leave()?;
    report_reg32(a, ebp)?;
    // BCD: 0x19 + 0x28 = 0x41 with AF; DAA makes it 0x47. AAM 10 of 63: AH 6, AL 3.
    a.mov(eax, 0x19)?;
    a.add(al, 0x28)?;
    a.daa()?;
    report32(a)?;
    a.mov(eax, 63)?;
    a.aam(10)?;
    report32(a)?;
    // LOOP counts in ECX; JECXZ.
    a.mov(ecx, 3)?;
    a.xor(eax, eax)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.add(eax, 5)?;
    a.loop_(top)?;
    report32(a)?;
    // String instructions: EDI through ES (whose base applies), ESI through DS.
    a.mov(eax, BASED_DS as u32)?;
    a.mov(es, ax)?;
    a.mov(edi, 0x40)?;
    a.mov(eax, 0xa1b2_c3d4u32)?;
    a.stosd()?;
    a.mov(eax, dword_ptr(U32DATA as u32 + 0x40))?;
    report32(a)?;
    report_reg32(a, edi)?;
    a.mov(esi, U32DATA as u32 + 0x40)?;
    a.mov(edi, 0x80)?;
    a.mov(ecx, 4)?;
    a.rep().movsb()?;
    a.mov(eax, dword_ptr(U32DATA as u32 + 0x80))?;
    report32(a)?;
    a.lea(eax, dword_ptr(ecx + edi))?;
    report32(a)?;
    a.mov(eax, U32_SS as u32)?;
    a.mov(es, ax)?;
    // int 0x80 to the kernel and back (the handler returns to the pushed EIP).
    a.mov(eax, 0x80)?;
    u.def("int80")?;
    u.a.int(0x80)?;
    u.def("after_int80")?;
    let a = &mut u.a;
    // SYSCALL from compatibility mode (the CSTAR entry), back with SYSRETL.
    a.syscall()?;
    u.def("after_syscall")?;
    let a = &mut u.a;
    a.mov(eax, cs)?;
    report32(a)?;
    // SYSENTER, back with SYSEXIT to EIP = EDX, ESP = ECX.
    a.mov(ecx, esp)?;
    // EDX = the address after SYSENTER: CALL's return address plus POP EDX (1 byte), ADD EDX,
    // imm8 (3), CMP EDX, EDX (2: ZF and PF for the kernel to see) and SYSENTER (2).
    let mut here = u.a.create_label();
    let mut back = u.a.create_label();
    u.a.call(here)?;
    u.a.set_label(&mut here)?;
    u.a.pop(edx)?;
    u.a.add(edx, 8)?;
    u.a.cmp(edx, edx)?;
    u.a.sysenter()?;
    u.a.set_label(&mut back)?;
    u.name("after_sysexit", back);
    let a = &mut u.a;
    a.mov(eax, cs)?;
    report32(a)?;
    a.mov(eax, ss)?;
    report32(a)?;
    a.mov(eax, U32_SS as u32)?;
    a.mov(ss, ax)?;
    // SYSEXIT's CS 0x1b names a data descriptor: back to 0x3b with a 32-bit far RET to the
    // instruction after it (POP EAX 1 byte, ADD EAX, imm32 5, PUSH imm8 2, PUSH EAX 1, RETF 1).
    let mut here = a.create_label();
    a.call(here)?;
    a.set_label(&mut here)?;
    a.pop(eax)?;
    a.add(eax, 10)?;
    a.push(U32_CS as i32)?;
    a.push(eax)?;
    a.retf()?;
    a.mov(eax, cs)?;
    report32(a)?;
    // A far CALL to 64-bit code and its 32-bit far RET back.
    a.call_far(U64_CS, U64CODE as u32)?;
    a.mov(eax, cs)?;
    report32(a)?;
    report_reg32(a, esp)?;
    // #PF from compatibility mode: a user read of an unmapped page.
    u.def("pf_site")?;
    u.a.mov(eax, dword_ptr(0x7000_0000))?;
    u.def("pf_next")?;
    // #GP: a DPL0 code segment into DS.
    u.a.mov(eax, KERNEL_CS as u32)?;
    u.def("gp_site")?;
    u.a.mov(ds, ax)?;
    // #UD: SWAPGS exists only in 64-bit mode.
    u.def("gp_next")?;
    u.a.db(&[0x0f, 0x01, 0xf8])?;
    u.def("ud_next")?;
    u.a.int(0x81)?;
    let a = &mut u.a;
    a.set_label(&mut sub)?;
    a.mov(eax, dword_ptr(esp))?;
    report32(a)?;
    a.ret()
}

/// The machine: GDT entries for the compatibility-mode segments, the 32- and 64-bit user
/// code mapped at `U32CODE` and `U64CODE`, gates 0x80 and 0x81 open to CPL3.
fn compat_machine(user32: fn(&mut Asm) -> AsmResult) -> Machine {
    let mut m = Machine::new(kernel, |_| Ok(()));
    let gdt = [
        (0x38, 0x00cf_fb00_0000_ffffu64), // 32-bit user code
        (0x40, 0x00cf_f300_0000_ffff),    // 32-bit user data
        (0x48, 0x00af_fb00_0000_ffff),    // 64-bit user code
        (0x50, 0x00cf_f300_0000_ffff | ((U32DATA & 0xff_ffff) << 16)), // data, base U32DATA
    ];
    for (sel, d) in gdt {
        m.mem.write_u64(GDT + sel, d).unwrap();
    }
    m.mem.write(GDTR_IMAGE, &0x67u16.to_le_bytes()).unwrap();
    for (bitness, at, f) in [(32, U32CODE, user32), (64, U64CODE, user64)] {
        let mut u = Asm::with_bitness(bitness);
        u.def(if bitness == 32 { "u32main" } else { "u64main" })
            .unwrap();
        f(&mut u).unwrap();
        let code = u.assemble(at, &mut m.labels);
        m.mem.write(at, &code).unwrap();
        let end = at + (code.len() as u64).div_ceil(4096) * 4096;
        m.pt.identity(&mut m.mem, at, end, pte::US);
    }
    m.pt.identity(&mut m.mem, U32DATA, U32STACK, pte::US | pte::RW | pte::NX);
    for v in [0x80, 0x81] {
        m.gate(
            v,
            Gate {
                dpl: 3,
                ..Gate::default()
            },
        );
    }
    m.action(0x80, 1);
    m
}

#[test]
fn a_32_bit_program_runs_under_a_64_bit_kernel() {
    let r = all_tiers(|tier| {
        let mut m = compat_machine(user32);
        m.resume_at(PF, "pf_next");
        m.resume_at(GP, "gp_next");
        m.resume_at(UD, "ud_next");
        m.run(tier)
    });
    let l = |n: &str| r.label(n);
    let s = U32STACK;
    let expected: Vec<u64> = vec![
        s,           // ESP as IRETQ loaded it
        0x1122_3344, // PUSH imm32 / POP
        l("after_call"),
        s,
        s,    // PUSHAD's saved ESP
        1,    // its EAX
        8,    // its EDI, at the new ESP
        69,   // POPAD restored EAX, ECX, EDI (and skipped ESP)
        s,    // ESP back
        0,    // INC EAX (0x40) of 0xffffffff
        0x54, // ZF | AF | PF
        0xffff_ffff,
        0x5566_7788, // the wrapped address
        0x10,        // 16-bit addressing wraps
        0x5566_7788, // FS base
        s - 2,       // PUSH AX
        0xffff_abcd, // POP CX (ECX was 0xffffffff)
        s - 4,       // ENTER: EBP = the frame
        s - 12,      // ESP below the 8 bytes
        0x77,        // LEAVE restored EBP
        0x47,        // DAA
        0x0603,      // AAM
        15,          // LOOP ran 3 times
        0xa1b2_c3d4, // STOSD to ES:EDI
        0x44,
        0xa1b2_c3d4,              // REP MOVSB
        0x84,                     // ECX 0, EDI past the bytes
        l("after_syscall"),       // SYSCALL: RCX = next EIP
        USER_FLAGS as u64 | 0x44, // R11 = RFLAGS (ZF, PF: the last report's XOR)
        KERNEL_CS as u64,
        U32_CS as u64,            // SYSRETL went back to compatibility mode
        SYSENTER_STACK,           // SYSENTER: RSP
        KERNEL_CS as u64,         // CS from IA32_SYSENTER_CS
        USER_FLAGS as u64 | 0x44, // RFLAGS: ZF, PF of CMP EDX, EDX (IF, VM, RF clear already)
        (SYSENTER_CS + 16) | 3,   // SYSEXIT: CS = SYSENTER_CS + 16
        (SYSENTER_CS + 24) | 3,   // SS = SYSENTER_CS + 24
        U32_CS as u64,            // RETF to 0x3b
        0x1_2345_6789,            // the 64-bit code ran
        s - 8,                    // with the far CALL's 8 bytes (EIP, CS) on the stack
        U32_CS as u64,            // RETF (32-bit) came back
        s,
    ];
    assert_eq!(r.reports.len(), expected.len(), "{:#x?}", r.reports);
    for (i, (got, want)) in r.reports.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "report {i}: {:#x?}", r.reports);
    }
    // Events: int 0x80, #PF, #GP, #UD, int 0x81; each frame in the 64-bit format with the
    // 32-bit CS and SS, EIP and ESP.
    let ev: Vec<_> = r
        .events
        .iter()
        .map(|e| (e.vector, e.error_code, e.rip, e.cs, e.rsp, e.ss))
        .collect();
    let (ucs, uss) = (U32_CS as u64, U32_SS as u64);
    assert_eq!(
        ev,
        vec![
            (0x80, 0, l("after_int80"), ucs, s, uss),
            (PF, 4, l("pf_site"), ucs, s, uss),
            (GP, KERNEL_CS as u64, l("gp_site"), ucs, s, uss),
            (UD, 0, l("gp_next"), ucs, s, uss),
            (0x81, 0, l("ud_next") + 2, ucs, s, uss),
        ],
        "{:#x?}",
        r.events
    );
    assert_eq!(r.events[1].cr2, 0x7000_0000);
    // The privilege change switched to RSP0 and pushed a 64-bit frame.
    assert_eq!(r.events[0].frame, RSP0_TOP - 40);
}

/// SYSCALL, then SYSENTER (returning with SYSEXIT to the instruction after it), then stop.
fn syscall_then_sysenter(u: &mut Asm) -> AsmResult {
    u.a.nop()?; // (carries the label `u32main`)
    u.def("syscall_site")?;
    u.a.syscall()?;
    u.def("after_syscall")?;
    let a = &mut u.a;
    a.mov(ecx, esp)?;
    let mut here = a.create_label();
    a.call(here)?;
    a.set_label(&mut here)?;
    a.pop(edx)?;
    a.add(edx, 8)?; // POP EDX 1 byte, ADD EDX, imm8 3, CMP EDX, EDX 2, SYSENTER 2
    a.cmp(edx, edx)?;
    u.def("sysenter_site")?;
    u.a.sysenter()?;
    u.def("after_sysenter")?;
    u.a.int(0x81)
}

/// Intel CPUs have no SYSCALL in compatibility mode (#UD), AMD CPUs no SYSENTER in long mode
/// (#UD): each works on the other vendor (Linux's vDSO picks by vendor).
#[test]
fn syscall_and_sysenter_in_compat_mode_follow_the_vendor() {
    for (vendor, ud_site, resume) in [
        (b"GenuineIntel", "syscall_site", "after_syscall"),
        (b"AuthenticAMD", "sysenter_site", "after_sysenter"),
    ] {
        let r = all_tiers(|tier| {
            let mut m = compat_machine(syscall_then_sysenter);
            m.resume_at(UD, resume);
            let mut s = m.start(tier);
            s.edit_cpuid(|e| {
                if e.leaf == 0 {
                    let w = |i: usize| u32::from_le_bytes(vendor[i..i + 4].try_into().unwrap());
                    (e.ebx, e.edx, e.ecx) = (w(0), w(4), w(8));
                }
            });
            let exit = s.run();
            s.finish(exit)
        });
        let l = |n: &str| r.label(n);
        let ev: Vec<_> = r.events.iter().map(|e| (e.vector, e.rip)).collect();
        assert_eq!(
            ev,
            vec![(UD, l(ud_site)), (0x81, l("after_sysenter") + 2)],
            "{}",
            String::from_utf8_lossy(vendor)
        );
        let flags = USER_FLAGS as u64;
        let expected = if ud_site == "syscall_site" {
            // SYSENTER ran: RSP, CS, RFLAGS in the kernel.
            vec![SYSENTER_STACK, KERNEL_CS as u64, flags | 0x44]
        } else {
            // SYSCALL ran: RCX = the next EIP, R11 = RFLAGS, CS.
            vec![l("after_syscall"), flags, KERNEL_CS as u64]
        };
        assert_eq!(r.reports, expected, "{}", String::from_utf8_lossy(vendor));
    }
}

/// Every AL (AH 0x5a) with every CF/AF through one BCD instruction: the FNV-1a hash of
/// AX | (RFLAGS & (OF|SF|ZF|AF|PF|CF)) << 16 over the 1024 inputs, reported (clobbers EAX,
/// EBX, ECX, EDX, ESI).
fn bcd_sweep(a: &mut CodeAssembler, op: fn(&mut CodeAssembler) -> AsmResult) -> AsmResult {
    let mut top = a.create_label();
    a.mov(esi, 0x811c_9dc5u32)?;
    a.xor(ebx, ebx)?;
    a.set_label(&mut top)?;
    a.movzx(eax, bl)?;
    a.or(eax, 0x5a00)?;
    a.mov(ecx, ebx)?;
    a.shr(ecx, 8)?;
    a.mov(edx, ecx)?;
    a.and(ecx, 1)?; // CF
    a.and(edx, 2)?;
    a.shl(edx, 3)?; // AF
    a.or(ecx, edx)?;
    a.or(ecx, 2)?;
    a.push(ecx)?;
    a.popfd()?;
    op(a)?;
    a.pushfd()?;
    a.pop(ecx)?;
    a.and(ecx, 0x8d5)?;
    a.shl(ecx, 16)?;
    a.movzx(eax, ax)?;
    a.or(eax, ecx)?;
    a.xor(esi, eax)?;
    a.imul_3(esi, esi, 0x0100_0193)?;
    a.inc(ebx)?;
    a.cmp(ebx, 1024)?;
    a.jne(top)?;
    report_reg32(a, esi)
}

fn bcd_program(u: &mut Asm) -> AsmResult {
    let a = &mut u.a;
    a.nop()?;
    for op in [
        (|a: &mut CodeAssembler| a.daa()) as fn(&mut CodeAssembler) -> AsmResult,
        |a| a.das(),
        |a| a.aaa(),
        |a| a.aas(),
        |a| a.aam(10),
        |a| a.aad(10),
    ] {
        bcd_sweep(a, op)?;
    }
    a.int(0x81)
}

/// DAA, DAS, AAA, AAS, AAM and AAD over every AL, CF and AF input, flags the SDM leaves
/// undefined included: the hashes are this host's (an AMD EPYC running the same loop as a
/// 32-bit Linux program; `tests/guest/isa/compat32.S` has it too).
#[test]
fn bcd_adjustments_match_this_host_for_every_input() {
    let r = all_tiers(|tier| compat_machine(bcd_program).run(tier));
    assert_eq!(
        r.reports,
        vec![
            0x5a7c_c145,
            0xbf8f_d385,
            0x5884_b7c5,
            0xe8a9_74c5,
            0x1ae0_1a85,
            0x0ebe_d1c5
        ],
        "{:#x?}",
        r.reports
    );
}

/// A 16-bit code segment (D clear) at 0x58 and a 16-bit stack segment (B clear) at 0x60,
/// both flat, DPL3; the 16-bit code runs from linear page 0.
const U16_CS: u16 = 0x5b;
const U16_SS: u16 = 0x63;

/// Report EAX from 16-bit code (clobbers EAX).
fn report16(a: &mut CodeAssembler) -> AsmResult {
    a.out(REPORT_PORT as u32, eax)?;
    a.xor(eax, eax)?;
    a.out(REPORT_PORT as u32, eax)
}

/// 16-bit code: operand and address size 16, SP-only stack, near CALL/RET of 2 bytes.
fn code16(a: &mut CodeAssembler) -> AsmResult {
    let mut sub = a.create_label();
    a.mov(ax, U16_SS as u32)?;
    a.mov(ss, ax)?;
    a.mov(sp, 0x1000)?;
    a.mov(ax, 0x1234)?;
    a.push(ax)?;
    a.pop(bx)?;
    a.add(bx, bx)?;
    a.movzx(eax, bx)?;
    report16(a)?;
    a.push(0x55)?; // PUSH imm8: 2 bytes here
    a.pop(cx)?;
    a.mov(eax, esp)?;
    report16(a)?; // ESP's upper half kept, SP 0x1000
    a.movzx(eax, cx)?;
    report16(a)?;
    a.mov(bx, 0xfff0)?;
    a.mov(si, 0x30)?;
    a.lea(eax, ptr(bx + si))?; // 16-bit addressing: wraps to 0x20
    report16(a)?;
    a.call(sub)?;
    a.int(0x81)?;
    a.set_label(&mut sub)?;
    a.mov(eax, esp)?;
    report16(a)?; // CALL pushed 2 bytes
    a.ret()
}

fn far_jump_to_16_bit_code(u: &mut Asm) -> AsmResult {
    u.a.nop()?;
    u.a.jmp_far(U16_CS, 0)
}

/// 16-bit code in compatibility mode, entered by a direct far JMP from 32-bit code.
#[test]
fn sixteen_bit_code_segment_runs() {
    let r = all_tiers(|tier| {
        let mut m = compat_machine(far_jump_to_16_bit_code);
        m.mem.write_u64(GDT + 0x58, 0x0000_fb00_0000_ffff).unwrap();
        m.mem.write_u64(GDT + 0x60, 0x0000_f300_0000_ffff).unwrap();
        let mut a = CodeAssembler::new(16).unwrap();
        code16(&mut a).unwrap();
        let code = a.assemble(0).unwrap();
        let page = TEST_AREA + 0x20000;
        m.mem.write(page, &code).unwrap();
        m.pt.map(&mut m.mem, 0, page, PageSize::K4, pte::US | pte::RW);
        m.run(tier)
    });
    let high = U32STACK & !0xffff;
    assert_eq!(
        r.reports,
        vec![0x2468, high | 0x1000, 0x55, 0x20, high | 0x0ffe],
        "{:#x?}",
        r.reports
    );
    let e = r.event();
    assert_eq!(
        (e.vector, e.cs, e.rsp, e.ss),
        (0x81, U16_CS as u64, high | 0x1000, U16_SS as u64)
    );
}

/// ARPL, SALC, LES and BOUND (in range, then #BR), then stop.
fn legacy_instructions(u: &mut Asm) -> AsmResult {
    let a = &mut u.a;
    a.nop()?;
    a.mov(eax, 0x10)?;
    a.mov(ecx, 3)?;
    a.arpl(ax, cx)?; // RPL 0 < 3: raised, ZF
    a.pushfd()?;
    report32(a)?;
    a.pop(eax)?;
    a.and(eax, 0x40)?;
    report32(a)?;
    a.stc()?;
    a.salc()?;
    a.movzx(eax, al)?;
    report32(a)?;
    a.mov(dword_ptr(U32DATA as u32 + 0x100), 0x1234_5678)?;
    a.mov(word_ptr(U32DATA as u32 + 0x104), BASED_DS as u32)?;
    a.les(ebx, fword_ptr(U32DATA as u32 + 0x100))?;
    report_reg32(a, ebx)?;
    a.mov(eax, es)?;
    report32(a)?;
    a.mov(dword_ptr(U32DATA as u32 + 0x108), -5i32)?;
    a.mov(dword_ptr(U32DATA as u32 + 0x10c), 100)?;
    a.mov(eax, -5i32)?;
    a.bound(eax, qword_ptr(U32DATA as u32 + 0x108))?;
    a.mov(eax, 101)?;
    u.def("bound_site")?;
    u.a.bound(eax, qword_ptr(U32DATA as u32 + 0x108))?;
    u.def("bound_next")?;
    u.a.int(0x81)
}

#[test]
fn arpl_salc_les_and_bound() {
    let r = all_tiers(|tier| {
        let mut m = compat_machine(legacy_instructions);
        m.resume_at(krr_runtime::vector::BR, "bound_next");
        m.run(tier)
    });
    assert_eq!(
        r.reports,
        vec![0x13, 0x40, 0xff, 0x1234_5678, BASED_DS as u64],
        "{:#x?}",
        r.reports
    );
    let ev: Vec<_> = r.events.iter().map(|e| (e.vector, e.rip)).collect();
    assert_eq!(
        ev,
        vec![
            (krr_runtime::vector::BR, r.label("bound_site")),
            (0x81, r.label("bound_next") + 2)
        ]
    );
}
