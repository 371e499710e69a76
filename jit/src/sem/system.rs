//! System instructions: control/debug registers, descriptor tables, segment loads, MSRs,
//! SYSCALL/SYSRET/IRETQ/SWAPGS, FS/GS base access, XSAVE/FXSAVE, x87 control, TLB and cache
//! maintenance, port IO and the nondeterministic inputs (RDTSC, RDRAND, ...).
//!
//! They are rare and change how later code must be translated, so they always end a block and
//! run in the interpreter: compiled code hands the instruction to `krr_interpret`. The code
//! below works on the CPU state directly and performs every check before its first write, so
//! a faulting instruction changes nothing.

use super::int::read_rflags;
use super::*;
use iced_x86::{Mnemonic as M, OpKind};
use krr_runtime::debugreg::{self, dr6, dr7};
use krr_runtime::desc::{self, DescFault};
use krr_runtime::gpr::{RAX, RCX, RDI, RDX, RSI, RSP};
use krr_runtime::{bus, mmu, rflags, vector, CpuState, ExceptionRecord, Segment};

/// Does the engine handle `m` here (and so end blocks after it)?
pub fn handles(insn: &Instruction) -> bool {
    match insn.mnemonic() {
        M::Mov => (0..insn.op_count()).any(|i| {
            insn.op_kind(i) == OpKind::Register && {
                let r = insn.op_register(i);
                r.is_cr() || r.is_dr() || r.is_segment_register()
            }
        }),
        M::Push | M::Pop => {
            insn.op0_kind() == OpKind::Register && insn.op0_register().is_segment_register()
        }
        m => matches!(
            m,
            M::Hlt
                | M::Cli
                | M::Sti
                | M::Lgdt
                | M::Lidt
                | M::Sgdt
                | M::Sidt
                | M::Lldt
                | M::Sldt
                | M::Ltr
                | M::Str
                | M::Lmsw
                | M::Smsw
                | M::Clts
                | M::Invlpg
                | M::Invpcid
                | M::Wbinvd
                | M::Invd
                | M::Wbnoinvd
                | M::Clflush
                | M::Clflushopt
                | M::Clwb
                | M::Rdmsr
                | M::Wrmsr
                | M::Rdtsc
                | M::Rdtscp
                | M::Rdpmc
                | M::Rdrand
                | M::Rdseed
                | M::Rdpid
                | M::Syscall
                | M::Sysret
                | M::Sysretq
                | M::Iretq
                | M::Iretd
                | M::Iret
                | M::Swapgs
                | M::Rdfsbase
                | M::Rdgsbase
                | M::Wrfsbase
                | M::Wrgsbase
                | M::Xgetbv
                | M::Xsetbv
                | M::Fxsave
                | M::Fxsave64
                | M::Fxrstor
                | M::Fxrstor64
                | M::Xsave
                | M::Xsave64
                | M::Xsaveopt
                | M::Xsaveopt64
                | M::Xrstor
                | M::Xrstor64
                | M::Fninit
                | M::Fnstcw
                | M::Fldcw
                | M::Fnstsw
                | M::Fnclex
                | M::Wait
                | M::Clac
                | M::Stac
                | M::In
                | M::Out
                | M::Insb
                | M::Insw
                | M::Insd
                | M::Outsb
                | M::Outsw
                | M::Outsd
                | M::Int
                | M::Int1
                | M::Into
                | M::Lsl
                | M::Lar
                | M::Verr
                | M::Verw
        ),
    }
}

/// The outcome of a system instruction run on the CPU state.
enum Sys {
    /// Retired; continue at `next` (or the next instruction).
    Done(Option<u64>),
    Fault(ExceptionRecord),
    /// A trap that is not a software interrupt (INT1): reported past the instruction, which
    /// retires, without the gate DPL check.
    Trap(ExceptionRecord),
    Unbacked(u64),
    Halt,
}

fn gp0() -> Sys {
    Sys::Fault(fault(vector::GP, Some(0)))
}

fn ud() -> Sys {
    Sys::Fault(fault(vector::UD, None))
}

fn fault(v: u8, code: Option<u32>) -> ExceptionRecord {
    ExceptionRecord {
        vector: v,
        has_error_code: code.is_some(),
        software: false,
        error_code: code.unwrap_or(0),
        address: 0,
    }
}

impl From<DescFault> for Sys {
    fn from(f: DescFault) -> Sys {
        match f {
            DescFault::Exception(e) => Sys::Fault(e),
            DescFault::Unbacked(p) => Sys::Unbacked(p),
        }
    }
}

/// `?` for descriptor-table results inside functions returning `Sys`.
macro_rules! tryd {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(f) => return Sys::from(f),
        }
    };
}

pub fn execute<B: Builder>(b: &mut B) -> R<()> {
    if !b.is_interpreter() {
        let z = b.c(0);
        b.call(Helper::Interpret, [z, z, z])?;
        // The interpreter has set RIP: the next instruction (most), or a computed target
        // (IRETQ, SYSCALL, SYSRET), possibly at another privilege level or with other paging
        // controls. Leave through the dispatcher so that it looks the block up afresh.
        let rip = b.load_state(krr_runtime::offsets::RIP);
        b.flow(Flow::Jump(rip), None);
        return Ok(());
    }
    let insn = *b.insn();
    // Operand values the generic helpers compute (addresses, register reads) come first: the
    // interpreter evaluates them on the spot.
    let addr = if (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory) {
        let a = access_address(b)?;
        b.const_of(a)
    } else {
        None
    };
    let flags_before = read_rflags(b);
    let flags_before = b
        .const_of(flags_before)
        .expect("interpreter values are concrete");
    let cpu = b.cpu_mut().expect("the interpreter exposes the CPU");
    match run(cpu, &insn, addr, flags_before) {
        Sys::Done(next) => {
            if let Some(t) = next {
                let t = b.c(t);
                b.flow(Flow::Jump(t), None);
            }
            Ok(())
        }
        Sys::Fault(e) => {
            let a = if e.software {
                b.raise_trap(e.vector)
            } else {
                b.raise(e.vector, e.has_error_code.then_some(e.error_code))
            };
            // Keep the whole record (the software flag, a #PF address).
            if let Some(cpu) = b.cpu_mut() {
                cpu.exception = e;
            }
            Err(a)
        }
        Sys::Trap(e) => {
            let a = b.raise_trap(e.vector);
            if let Some(cpu) = b.cpu_mut() {
                cpu.exception = e;
            }
            Err(a)
        }
        Sys::Unbacked(p) => {
            let cpu = b.cpu_mut().expect("interpreter");
            cpu.unbacked_phys = p;
            cpu.helper_status = crate::helpers::UNBACKED;
            Err(Abort)
        }
        Sys::Halt => Err(b.halt()),
    }
}

fn cr0(cpu: &CpuState) -> u64 {
    cpu.cr0
}

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR0_PG: u64 = 1 << 31;
const CR4_TSD: u64 = 1 << 2;
const CR4_DE: u64 = 1 << 3;
const CR4_PAE: u64 = 1 << 5;
const CR4_PCE: u64 = 1 << 8;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_FSGSBASE: u64 = 1 << 16;
const CR4_PCIDE: u64 = 1 << 17;
const CR4_OSXSAVE: u64 = 1 << 18;
const CR4_UMIP: u64 = 1 << 11;
const EFER_SCE: u64 = 1;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
/// XCR0 components the CPU model exposes (CPUID leaf 0xD, within what the engine implements).
fn xcr0_supported(cpu: &CpuState) -> u64 {
    let [eax, _, _, edx] = cpu.cpuid.lookup(0xd, 0);
    (eax as u64 | (edx as u64) << 32) & krr_runtime::cpuid::XCR0_SUPPORTED
}

fn reg_value(cpu: &CpuState, r: Register) -> u64 {
    let (idx, part) = gpr_of(r);
    let v = cpu.gpr[idx];
    match part {
        RegPart::Q64 => v,
        RegPart::D32 => v & 0xffff_ffff,
        RegPart::W16 => v & 0xffff,
        RegPart::Low8 => v & 0xff,
        RegPart::High8 => (v >> 8) & 0xff,
    }
}

fn set_reg(cpu: &mut CpuState, r: Register, v: u64) {
    let (idx, part) = gpr_of(r);
    let old = cpu.gpr[idx];
    cpu.gpr[idx] = match part {
        RegPart::Q64 => v,
        RegPart::D32 => v & 0xffff_ffff,
        RegPart::W16 => (old & !0xffff) | (v & 0xffff),
        RegPart::Low8 => (old & !0xff) | (v & 0xff),
        RegPart::High8 => (old & !0xff00) | ((v & 0xff) << 8),
    };
}

fn read_mem(cpu: &mut CpuState, addr: u64, buf: &mut [u8]) -> Result<(), Sys> {
    let idx = mmu::mmu_index(cpu);
    mmu::load_bytes(cpu, addr, buf, idx).map_err(|f| mem_sys(cpu, f))
}

fn write_mem(cpu: &mut CpuState, addr: u64, data: &[u8]) -> Result<(), Sys> {
    let idx = mmu::mmu_index(cpu);
    mmu::store_bytes(cpu, addr, data, idx).map_err(|f| mem_sys(cpu, f))
}

/// Translate `[addr, addr + len)` for a write at the current privilege, faulting as the store
/// would, without storing (the caller stores once it has the value).
fn probe_write(cpu: &mut CpuState, addr: u64, len: u64) -> Result<(), Sys> {
    let user = mmu::is_user_index(mmu::mmu_index(cpu));
    let last = addr.wrapping_add(len - 1);
    for a in [addr, last] {
        if let Err(e) = mmu::translate(cpu, a, mmu::Access::Write, user) {
            cpu.exception = e;
            return Err(Sys::Fault(e));
        }
    }
    Ok(())
}

fn mem_sys(cpu: &CpuState, f: mmu::MemFault) -> Sys {
    match f {
        mmu::MemFault::Exception => Sys::Fault(cpu.exception),
        mmu::MemFault::Unbacked { phys } => Sys::Unbacked(phys),
    }
}

macro_rules! trym {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return s,
        }
    };
}

/// Set the six arithmetic flags to concrete bits.
fn set_arith(cpu: &mut CpuState, bits: u64) {
    cpu.cc_op = super::FlagOp::CONCRETE.encode();
    cpu.cc_res = bits & rflags::ARITH;
}

/// Write a whole RFLAGS value (arithmetic bits into the lazy state).
fn set_rflags(cpu: &mut CpuState, v: u64) {
    set_arith(cpu, v);
    cpu.rflags = (v & !rflags::ARITH) | rflags::FIXED1;
}

fn run(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>, flags: u64) -> Sys {
    let cpl = cpu.cpl();
    let priv0 = cpl == 0;
    let iopl = ((flags >> 12) & 3) as u8;
    let mem_addr = || addr.expect("memory operand present");
    match insn.mnemonic() {
        M::Hlt => {
            if !priv0 {
                return gp0();
            }
            Sys::Halt
        }
        M::Cli | M::Sti => {
            if cpl > iopl {
                return gp0();
            }
            if insn.mnemonic() == M::Sti {
                if flags & rflags::IF == 0 {
                    // Interrupts stay blocked until the instruction after STI has retired.
                    cpu.irq_shadow_at = cpu.icount + 1;
                }
                cpu.rflags |= rflags::IF;
            } else {
                cpu.rflags &= !rflags::IF;
            }
            Sys::Done(None)
        }
        M::Clac | M::Stac => {
            if !priv0 {
                return ud();
            }
            if insn.mnemonic() == M::Stac {
                cpu.rflags |= rflags::AC;
            } else {
                cpu.rflags &= !rflags::AC;
            }
            Sys::Done(None)
        }
        M::Mov => mov_special(cpu, insn, addr),
        M::Push | M::Pop => push_pop_segment(cpu, insn),
        M::Lgdt | M::Lidt => {
            if !priv0 {
                return gp0();
            }
            let mut b = [0u8; 10];
            trym!(read_mem(cpu, mem_addr(), &mut b));
            let t = krr_runtime::DescriptorTable {
                limit: u16::from_le_bytes([b[0], b[1]]),
                base: u64::from_le_bytes(b[2..10].try_into().expect("8 bytes")),
            };
            if insn.mnemonic() == M::Lgdt {
                cpu.gdtr = t;
            } else {
                cpu.idtr = t;
            }
            Sys::Done(None)
        }
        M::Sgdt | M::Sidt => {
            if cpl > 0 && cpu.cr4 & CR4_UMIP != 0 {
                return gp0();
            }
            let t = if insn.mnemonic() == M::Sgdt {
                cpu.gdtr
            } else {
                cpu.idtr
            };
            let mut b = [0u8; 10];
            b[..2].copy_from_slice(&t.limit.to_le_bytes());
            b[2..].copy_from_slice(&t.base.to_le_bytes());
            trym!(write_mem(cpu, mem_addr(), &b));
            Sys::Done(None)
        }
        M::Sldt | M::Str | M::Smsw => {
            if cpl > 0 && cpu.cr4 & CR4_UMIP != 0 {
                return gp0();
            }
            let v = match insn.mnemonic() {
                M::Sldt => cpu.ldtr.selector as u64,
                M::Str => cpu.tr.selector as u64,
                _ => cpu.cr0 & 0xffff,
            };
            if insn.op0_kind() == OpKind::Memory {
                trym!(write_mem(cpu, mem_addr(), &(v as u16).to_le_bytes()));
            } else {
                set_reg(cpu, insn.op0_register(), v);
            }
            Sys::Done(None)
        }
        M::Lldt | M::Ltr => {
            if !priv0 {
                return gp0();
            }
            let sel = trym!(read_u16_operand(cpu, insn, addr));
            let is_tr = insn.mnemonic() == M::Ltr;
            if sel & !3 == 0 {
                if is_tr {
                    return gp0();
                }
                cpu.ldtr = Segment::default();
                return Sys::Done(None);
            }
            let (d, hi) = tryd!(desc::read_system_descriptor(cpu, sel));
            let want = if is_tr { 9 } else { 2 };
            if d.is_code_or_data() || d.typ() != want {
                return Sys::Fault(fault(vector::GP, Some(sel as u32 & !3)));
            }
            if !d.present() {
                return Sys::Fault(fault(vector::NP, Some(sel as u32 & !3)));
            }
            let mut s = d.to_segment(sel);
            s.base |= hi << 32;
            if is_tr {
                tryd!(desc::mark_tss_busy(cpu, sel));
                s.attrs |= 2;
                cpu.tr = s;
            } else {
                cpu.ldtr = s;
            }
            Sys::Done(None)
        }
        M::Lmsw => {
            if !priv0 {
                return gp0();
            }
            let v = trym!(read_u16_operand(cpu, insn, addr)) as u64;
            // LMSW sets PE but never clears it, and only touches the low four bits.
            cpu.cr0 = (cpu.cr0 & !0xe) | (v & 0xf) | (cpu.cr0 & CR0_PE);
            Sys::Done(None)
        }
        M::Clts => {
            if !priv0 {
                return gp0();
            }
            cpu.cr0 &= !CR0_TS;
            Sys::Done(None)
        }
        M::Invlpg => {
            if !priv0 {
                return gp0();
            }
            cpu.tlb.flush_page(mem_addr());
            Sys::Done(None)
        }
        M::Invpcid => {
            if !priv0 {
                return gp0();
            }
            let kind = reg_value(cpu, insn.op0_register());
            let mut d = [0u8; 16];
            trym!(read_mem(cpu, mem_addr(), &mut d));
            let pcid = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
            let linear = u64::from_le_bytes(d[8..].try_into().expect("8 bytes"));
            if kind > 3 || pcid > 0xfff {
                return gp0();
            }
            match kind {
                0 => {
                    if !mmu::is_canonical(linear) {
                        return gp0();
                    }
                    // Drops the page for every PCID (more than required).
                    cpu.tlb.flush_page(linear);
                }
                1 => {
                    let current = cpu.cr4 & CR4_PCIDE != 0 && cpu.cr3 & 0xfff == pcid;
                    cpu.tlb.flush_pcid(pcid as u16, current);
                }
                _ => cpu.tlb.flush(),
            }
            Sys::Done(None)
        }
        M::Wbinvd | M::Invd | M::Wbnoinvd => {
            // Memory is coherent and uncached in this model: nothing to write back.
            if !priv0 {
                return gp0();
            }
            Sys::Done(None)
        }
        M::Clflush | M::Clflushopt | M::Clwb => {
            // Faults like a byte read of the line; there is no cache to flush.
            let mut b = [0u8; 1];
            trym!(read_mem(cpu, mem_addr(), &mut b));
            Sys::Done(None)
        }
        M::Rdmsr | M::Wrmsr => {
            if !priv0 {
                return gp0();
            }
            let index = cpu.gpr[RCX] as u32;
            if insn.mnemonic() == M::Rdmsr {
                let v = match read_msr(cpu, index) {
                    Some(v) => v,
                    None => {
                        log::debug!(
                            "RDMSR of unknown MSR {index:#x} at RIP {:#x}: #GP",
                            insn.ip()
                        );
                        return gp0();
                    }
                };
                cpu.gpr[RAX] = v & 0xffff_ffff;
                cpu.gpr[RDX] = v >> 32;
            } else {
                let v = (cpu.gpr[RAX] & 0xffff_ffff) | (cpu.gpr[RDX] << 32);
                if !write_msr(cpu, index, v) {
                    log::debug!("WRMSR {index:#x} <- {v:#x} at RIP {:#x}: #GP", insn.ip());
                    return gp0();
                }
            }
            Sys::Done(None)
        }
        M::Rdtsc | M::Rdtscp => {
            if cpl > 0 && cpu.cr4 & CR4_TSD != 0 {
                return gp0();
            }
            let Some(t) = bus::with_bus(cpu, |bus, cpu| bus.rdtsc(cpu)) else {
                return no_bus(insn);
            };
            cpu.gpr[RAX] = t & 0xffff_ffff;
            cpu.gpr[RDX] = t >> 32;
            if insn.mnemonic() == M::Rdtscp {
                cpu.gpr[RCX] = cpu.tsc_aux & 0xffff_ffff;
            }
            Sys::Done(None)
        }
        M::Rdpmc => {
            if cpl > 0 && cpu.cr4 & CR4_PCE == 0 {
                return gp0();
            }
            // The model has no performance counters (CPUID leaf 0xA is absent).
            gp0()
        }
        M::Rdrand | M::Rdseed => {
            let size = insn.op0_register().size() as u8;
            let seed = insn.mnemonic() == M::Rdseed;
            let Some(r) = bus::with_bus(cpu, |bus, cpu| bus.rdrand(cpu, size, seed)) else {
                return no_bus(insn);
            };
            set_reg(cpu, insn.op0_register(), r.unwrap_or(0));
            set_arith(cpu, r.is_some() as u64);
            Sys::Done(None)
        }
        M::Rdpid => {
            let v = cpu.tsc_aux;
            set_reg(cpu, insn.op0_register(), v);
            Sys::Done(None)
        }
        M::Syscall => {
            if cpu.efer & EFER_SCE == 0 {
                return ud();
            }
            let next = insn.next_ip();
            cpu.gpr[RCX] = next;
            cpu.gpr[11] = flags & !rflags::RF;
            let sel = ((cpu.star >> 32) & 0xfffc) as u16;
            cpu.seg[seg::CS] = Segment {
                selector: sel,
                attrs: 0xa09b,
                limit: 0xffff_ffff,
                base: 0,
            };
            cpu.seg[seg::SS] = Segment {
                selector: sel + 8,
                attrs: 0xc093,
                limit: 0xffff_ffff,
                base: 0,
            };
            set_rflags(cpu, flags & !cpu.sfmask & !rflags::RF);
            Sys::Done(Some(cpu.lstar))
        }
        M::Sysret | M::Sysretq => {
            if cpu.efer & EFER_SCE == 0 {
                return ud();
            }
            if !priv0 {
                return gp0();
            }
            let wide = insn.mnemonic() == M::Sysretq;
            let target = if wide {
                cpu.gpr[RCX]
            } else {
                cpu.gpr[RCX] & 0xffff_ffff
            };
            if !mmu::is_canonical(target) {
                return gp0();
            }
            let base = ((cpu.star >> 48) & 0xffff) as u16;
            let (cs_sel, cs_attrs) = if wide {
                (base + 16, 0xa0fb)
            } else {
                (base, 0xc0fb)
            };
            cpu.seg[seg::CS] = Segment {
                selector: cs_sel | 3,
                attrs: cs_attrs,
                limit: 0xffff_ffff,
                base: 0,
            };
            cpu.seg[seg::SS] = Segment {
                selector: (base + 8) | 3,
                attrs: 0xc0f3,
                limit: 0xffff_ffff,
                base: 0,
            };
            let new_flags =
                (cpu.gpr[11] & rflags::WRITABLE & !(rflags::RF | rflags::VM)) | rflags::FIXED1;
            set_rflags(cpu, new_flags);
            if new_flags & rflags::TF != 0 {
                // SYSRET single-steps by TF as it leaves it: the #DB trap comes right after
                // it, at the user RIP (the engine's checked mode delivers it).
                cpu.pending_db |= dr6::BS;
            }
            Sys::Done(Some(target))
        }
        M::Iretq | M::Iretd | M::Iret => iret(cpu, insn, flags),
        M::Swapgs => {
            if !priv0 {
                return gp0();
            }
            std::mem::swap(&mut cpu.seg[seg::GS].base, &mut cpu.kernel_gs_base);
            Sys::Done(None)
        }
        M::Rdfsbase | M::Rdgsbase | M::Wrfsbase | M::Wrgsbase => {
            if cpu.cr4 & CR4_FSGSBASE == 0 {
                return ud();
            }
            let s = if matches!(insn.mnemonic(), M::Rdfsbase | M::Wrfsbase) {
                seg::FS
            } else {
                seg::GS
            };
            let r = insn.op0_register();
            if matches!(insn.mnemonic(), M::Rdfsbase | M::Rdgsbase) {
                let v = cpu.seg[s].base;
                set_reg(cpu, r, v);
            } else {
                let v = reg_value(cpu, r);
                if !mmu::is_canonical(v) {
                    return gp0();
                }
                cpu.seg[s].base = v;
            }
            Sys::Done(None)
        }
        M::Xgetbv => {
            if cpu.cr4 & CR4_OSXSAVE == 0 {
                return ud();
            }
            let v = match cpu.gpr[RCX] as u32 {
                0 => cpu.xcr0,
                _ => return gp0(),
            };
            cpu.gpr[RAX] = v & 0xffff_ffff;
            cpu.gpr[RDX] = v >> 32;
            Sys::Done(None)
        }
        M::Xsetbv => {
            if cpu.cr4 & CR4_OSXSAVE == 0 {
                return ud();
            }
            let v = (cpu.gpr[RAX] & 0xffff_ffff) | (cpu.gpr[RDX] << 32);
            if !priv0 || cpu.gpr[RCX] as u32 != 0 || v & 1 == 0 || v & !xcr0_supported(cpu) != 0 {
                return gp0();
            }
            cpu.xcr0 = v;
            Sys::Done(None)
        }
        M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64 => fxsave(cpu, insn, mem_addr()),
        M::Xsave | M::Xsave64 | M::Xsaveopt | M::Xsaveopt64 | M::Xrstor | M::Xrstor64 => {
            xsave(cpu, insn, mem_addr())
        }
        M::Fninit | M::Fnstcw | M::Fldcw | M::Fnstsw | M::Fnclex | M::Wait => {
            x87_control(cpu, insn, addr)
        }
        M::In | M::Out | M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => {
            port_io(cpu, insn)
        }
        M::Int => Sys::Fault(ExceptionRecord {
            software: true,
            ..fault(insn.immediate(0) as u8, None)
        }),
        M::Into => {
            if flags & rflags::OF != 0 {
                Sys::Fault(ExceptionRecord {
                    software: true,
                    ..fault(vector::OF, None)
                })
            } else {
                Sys::Done(None)
            }
        }
        // INT1 (ICEBP): a #DB trap past the instruction, without the gate's DPL check and
        // without DR6 bits (SDM INT n/INTO/INT1/INT3 "Description").
        M::Int1 => Sys::Trap(fault(vector::DB, None)),
        M::Lsl | M::Lar => load_limit_or_rights(cpu, insn, addr),
        M::Verr | M::Verw => verify_segment(cpu, insn, addr),
        _ => {
            log::warn!(
                "system instruction `{insn}` at RIP {:#x} is not implemented: raising #UD",
                insn.ip()
            );
            cpu.unimplemented_count += 1;
            ud()
        }
    }
}

/// LSL / LAR: the limit or access rights of the descriptor a selector names, with ZF saying
/// whether the selector is valid and visible at this privilege (SDM LSL/LAR). The vDSO's
/// `getcpu` reads the CPU number this way.
fn load_limit_or_rights(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> Sys {
    let sel = if insn.op1_kind() == OpKind::Memory {
        let mut b = [0u8; 2];
        trym!(read_mem(cpu, addr.expect("memory operand"), &mut b));
        u16::from_le_bytes(b)
    } else {
        reg_value(cpu, insn.op1_register()) as u16
    };
    let lsl = insn.mnemonic() == M::Lsl;
    let cpl = cpu.cpl();
    let valid = match desc::read_descriptor(cpu, sel) {
        Ok(Some(d)) => {
            let conforming_code = d.is_code() && d.typ() & 4 != 0;
            let visible = conforming_code || d.dpl() >= cpl.max((sel & 3) as u8);
            // System descriptor types LSL accepts: LDT (2), available/busy TSS (9/11); LAR
            // also accepts call gates (12).
            let type_ok =
                d.is_code_or_data() || matches!((d.typ(), lsl), (2 | 9 | 11, _) | (12, false));
            (visible && type_ok).then_some(d)
        }
        Ok(None) => None,
        // An index beyond the table limit just clears ZF.
        Err(DescFault::Exception(e)) if e.vector == vector::GP => None,
        Err(f) => return Sys::from(f),
    };
    let flags = crate::interp::materialize_flags(cpu);
    match valid {
        Some(d) => {
            let v = if lsl {
                d.limit() as u64
            } else {
                (d.0 >> 32) & 0x00ff_ff00
            };
            set_reg(cpu, insn.op0_register(), v);
            set_arith(cpu, flags | rflags::ZF);
        }
        None => set_arith(cpu, flags & !rflags::ZF),
    }
    Sys::Done(None)
}

/// VERR / VERW: ZF says whether the selector names a segment readable / writable at this
/// privilege. Linux executes VERW on every return to user mode (the MDS buffer-clearing idiom).
fn verify_segment(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> Sys {
    let sel = if insn.op0_kind() == OpKind::Memory {
        let mut b = [0u8; 2];
        trym!(read_mem(cpu, addr.expect("memory operand"), &mut b));
        u16::from_le_bytes(b)
    } else {
        reg_value(cpu, insn.op0_register()) as u16
    };
    let cpl = cpu.cpl();
    let ok = match desc::read_descriptor(cpu, sel) {
        Ok(Some(d)) if d.is_code_or_data() => {
            let conforming_code = d.is_code() && d.typ() & 4 != 0;
            let visible = conforming_code || d.dpl() >= cpl.max((sel & 3) as u8);
            let access = if insn.mnemonic() == M::Verr {
                !d.is_code() || d.typ() & 2 != 0
            } else {
                !d.is_code() && d.typ() & 2 != 0
            };
            visible && access
        }
        Ok(_) => false,
        Err(DescFault::Exception(e)) if e.vector == vector::GP => false,
        Err(f) => return Sys::from(f),
    };
    let flags = crate::interp::materialize_flags(cpu);
    set_arith(
        cpu,
        if ok {
            flags | rflags::ZF
        } else {
            flags & !rflags::ZF
        },
    );
    Sys::Done(None)
}

fn no_bus(insn: &Instruction) -> Sys {
    log::warn!(
        "`{insn}` at RIP {:#x} needs a device bus and none is attached: raising #UD",
        insn.ip()
    );
    ud()
}

fn read_u16_operand(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> Result<u16, Sys> {
    if insn.op0_kind() == OpKind::Memory {
        let mut b = [0u8; 2];
        read_mem(cpu, addr.expect("memory operand"), &mut b)?;
        Ok(u16::from_le_bytes(b))
    } else {
        Ok(reg_value(cpu, insn.op0_register()) as u16)
    }
}

fn mov_special(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> Sys {
    let priv0 = cpu.cpl() == 0;
    let (dst, src) = (insn.op0_register(), insn.op1_register());
    if dst.is_segment_register() || src.is_segment_register() {
        return mov_segment(cpu, insn, addr);
    }
    if src.is_dr() || dst.is_dr() {
        return mov_debug(cpu, insn);
    }
    if !priv0 {
        return gp0();
    }
    if src.is_cr() {
        let v = match src {
            Register::CR0 => cpu.cr0,
            Register::CR2 => cpu.cr2,
            Register::CR3 => cpu.cr3,
            Register::CR4 => cpu.cr4,
            Register::CR8 => cpu.cr8,
            _ => return ud(),
        };
        cpu.gpr[gpr_of(dst).0] = v;
        return Sys::Done(None);
    }
    if dst.is_cr() {
        let v = cpu.gpr[gpr_of(src).0];
        match dst {
            Register::CR0 => {
                if v >> 32 != 0 || (v & CR0_PG != 0 && v & CR0_PE == 0) {
                    return gp0();
                }
                // Long mode cannot turn paging off without leaving long mode first.
                if cpu.efer & EFER_LMA != 0 && v & CR0_PG == 0 {
                    return gp0();
                }
                if (v ^ cpu.cr0) & (CR0_PG | CR0_PE | (1 << 16)) != 0 {
                    cpu.tlb.flush();
                }
                cpu.cr0 = v | 0x10; // ET is hardwired to 1
            }
            Register::CR2 => cpu.cr2 = v,
            Register::CR3 => {
                // Bit 63 (PCID no-flush) is not stored.
                let keep = v >> 63 != 0;
                let v = v & !(1 << 63);
                if v >> 52 != 0 {
                    return gp0();
                }
                // With PCIDs, a load with bit 63 set keeps that PCID's translations (SDM
                // 4.10.4.1); without, every load invalidates the non-global ones (all of them
                // here: more than required).
                if cpu.cr4 & CR4_PCIDE != 0 {
                    cpu.tlb.load_cr3(Some((v & 0xfff) as u16), !keep);
                } else {
                    cpu.tlb.load_cr3(None, true);
                }
                cpu.cr3 = v;
            }
            Register::CR4 => {
                // Bits for features CPUID does not report are reserved (SDM MOV CR "#GP(0) If
                // an attempt is made to write a 1 to any reserved bit in CR4").
                if v & !cpu.cpuid.cr4_supported() != 0
                    || (v & CR4_PCIDE != 0 && cpu.cr3 & 0xfff != 0 && cpu.cr4 & CR4_PCIDE == 0)
                    // IA-32e mode cannot run without PAE.
                    || (cpu.efer & EFER_LMA != 0 && v & CR4_PAE == 0)
                {
                    return gp0();
                }
                cpu.tlb.flush();
                cpu.cr4 = v;
            }
            Register::CR8 => {
                if v >> 4 != 0 {
                    return gp0();
                }
                cpu.cr8 = v;
            }
            _ => return ud(),
        }
        return Sys::Done(None);
    }
    ud()
}

/// MOV to or from DR0-DR7. DR4/DR5 alias DR6/DR7 unless CR4.DE makes them #UD; with DR7.GD
/// set any access is a #DB fault with DR6.BD set (GD is cleared for the handler); then the
/// privilege check (the order of the SDM's MOV DR "Operation" and of Bochs).
fn mov_debug(cpu: &mut CpuState, insn: &Instruction) -> Sys {
    let (dst, src) = (insn.op0_register(), insn.op1_register());
    let reg = if src.is_dr() { src } else { dst };
    let i = match reg as usize - Register::DR0 as usize {
        4 | 5 if cpu.cr4 & CR4_DE != 0 => return ud(),
        i @ (4 | 5) => i + 2,
        i if i > 7 => return ud(),
        i => i,
    };
    if cpu.dr[7] & dr7::GD != 0 {
        cpu.dr[6] |= dr6::BD;
        cpu.dr[7] &= !dr7::GD;
        return Sys::Fault(fault(vector::DB, None));
    }
    if cpu.cpl() != 0 {
        return gp0();
    }
    if src.is_dr() {
        cpu.gpr[gpr_of(dst).0] = cpu.dr[i];
        return Sys::Done(None);
    }
    let v = cpu.gpr[gpr_of(src).0];
    if (i == 6 || i == 7) && v >> 32 != 0 {
        return gp0();
    }
    cpu.dr[i] = match i {
        // Only B0-B3, BD, BS and BT are writable.
        6 => (v & (dr6::B_MASK | dr6::BD | dr6::BS | (1 << 15))) | dr6::FIXED1,
        7 => (v & !dr7::RESERVED0) | dr7::FIXED1,
        _ => v,
    };
    if i == 7 && cpu.cr4 & CR4_DE != 0 && (0..4).any(|b| debugreg::kind(v, b) == 2) {
        static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!(
                "guest set an I/O breakpoint (DR7={v:#x}, CR4.DE=1); krr does not model I/O \
                 breakpoints: they never trigger"
            );
        }
    }
    // A breakpoint enabled now takes effect from the next instruction on: the instruction
    // ends its block and the dispatcher switches to its checked mode (engine::debug).
    Sys::Done(None)
}

fn seg_index(r: Register) -> usize {
    match r {
        Register::ES => seg::ES,
        Register::CS => seg::CS,
        Register::SS => seg::SS,
        Register::DS => seg::DS,
        Register::FS => seg::FS,
        _ => seg::GS,
    }
}

/// Load a data segment register (or SS) in 64-bit mode.
fn load_segment(cpu: &mut CpuState, s: usize, sel: u16) -> Result<(), Sys> {
    let cpl = cpu.cpl();
    let rpl = (sel & 3) as u8;
    let Some(d) = desc::read_descriptor(cpu, sel).map_err(Sys::from)? else {
        // Null selector: allowed for data segments, and for SS at CPL < 3 in 64-bit mode.
        if s == seg::SS && (cpl == 3 || rpl != cpl) {
            return Err(gp0());
        }
        let base = if s == seg::FS || s == seg::GS {
            cpu.seg[s].base
        } else {
            0
        };
        cpu.seg[s] = Segment {
            selector: sel,
            attrs: 0,
            limit: 0,
            base,
        };
        return Ok(());
    };
    let code = sel as u32 & !3;
    if s == seg::SS {
        let writable_data = d.is_code_or_data() && !d.is_code() && d.typ() & 2 != 0;
        if rpl != cpl || d.dpl() != cpl || !writable_data {
            return Err(Sys::Fault(fault(vector::GP, Some(code))));
        }
        if !d.present() {
            return Err(Sys::Fault(fault(vector::SS, Some(code))));
        }
    } else {
        let readable = d.is_code_or_data() && (!d.is_code() || d.typ() & 2 != 0);
        let conforming = d.is_code() && d.typ() & 4 != 0;
        if !readable || (!conforming && (rpl.max(cpl) > d.dpl())) {
            return Err(Sys::Fault(fault(vector::GP, Some(code))));
        }
        if !d.present() {
            return Err(Sys::Fault(fault(vector::NP, Some(code))));
        }
    }
    cpu.seg[s] = d.to_segment(sel);
    Ok(())
}

fn mov_segment(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> Sys {
    if insn.op0_register().is_segment_register() {
        let r = insn.op0_register();
        if r == Register::CS {
            return ud();
        }
        let sel = if insn.op1_kind() == OpKind::Memory {
            let mut b = [0u8; 2];
            trym!(read_mem(cpu, addr.expect("memory operand"), &mut b));
            u16::from_le_bytes(b)
        } else {
            reg_value(cpu, insn.op1_register()) as u16
        };
        trym!(load_segment(cpu, seg_index(r), sel));
        if r == Register::SS {
            // Interrupts and debug traps wait until the next instruction has completed.
            cpu.irq_shadow_at = cpu.icount + 1;
            cpu.db_inhibit_at = cpu.icount + 1;
        }
        Sys::Done(None)
    } else {
        let sel = cpu.seg[seg_index(insn.op1_register())].selector as u64;
        if insn.op0_kind() == OpKind::Memory {
            trym!(write_mem(
                cpu,
                addr.expect("memory operand"),
                &(sel as u16).to_le_bytes()
            ));
        } else {
            // A 32/64-bit register destination gets the selector zero-extended.
            let r = insn.op0_register();
            let v = if r.size() == 2 { sel } else { sel & 0xffff };
            set_reg(cpu, r, v);
        }
        Sys::Done(None)
    }
}

fn push_pop_segment(cpu: &mut CpuState, insn: &Instruction) -> Sys {
    let r = insn.op0_register();
    let size = if insn.code().op_code().operand_size() == 16 {
        2
    } else {
        8
    };
    let rsp = cpu.gpr[RSP];
    if insn.mnemonic() == M::Push {
        let v = cpu.seg[seg_index(r)].selector as u64;
        let new = rsp.wrapping_sub(size);
        trym!(write_mem(cpu, new, &v.to_le_bytes()[..size as usize]));
        cpu.gpr[RSP] = new;
    } else {
        // Only POP FS and POP GS exist in 64-bit mode.
        let mut b = [0u8; 8];
        trym!(read_mem(cpu, rsp, &mut b[..size as usize]));
        let sel = u16::from_le_bytes([b[0], b[1]]);
        trym!(load_segment(cpu, seg_index(r), sel));
        cpu.gpr[RSP] = rsp.wrapping_add(size);
    }
    Sys::Done(None)
}

fn iret(cpu: &mut CpuState, insn: &Instruction, flags: u64) -> Sys {
    if insn.mnemonic() != M::Iretq {
        // 16/32-bit IRET returns only to compatibility/legacy modes, which krr does not run.
        return ud();
    }
    let cpl = cpu.cpl();
    let rsp = cpu.gpr[RSP];
    let mut frame = [0u8; 40];
    trym!(read_mem(cpu, rsp, &mut frame));
    let word = |i: usize| u64::from_le_bytes(frame[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (rip, cs_sel, new_flags, new_rsp, ss_sel) =
        (word(0), word(1) as u16, word(2), word(3), word(4) as u16);
    let rpl = (cs_sel & 3) as u8;
    if rpl < cpl {
        return Sys::Fault(fault(vector::GP, Some(cs_sel as u32 & !3)));
    }
    let Some(cs) = tryd!(desc::read_descriptor(cpu, cs_sel)) else {
        return gp0();
    };
    if !cs.is_code()
        || (cs.typ() & 4 == 0 && cs.dpl() != rpl)
        || (cs.typ() & 4 != 0 && cs.dpl() > rpl)
    {
        return Sys::Fault(fault(vector::GP, Some(cs_sel as u32 & !3)));
    }
    if !cs.present() {
        return Sys::Fault(fault(vector::NP, Some(cs_sel as u32 & !3)));
    }
    if !cs.long() {
        log::warn!(
            "IRETQ to a non-64-bit code segment at RIP {:#x}: compatibility mode is not supported",
            insn.ip()
        );
        return gp0();
    }
    if !mmu::is_canonical(rip) {
        return gp0();
    }
    // Validate SS before changing anything.
    let new_ss = if ss_sel & !3 == 0 {
        if rpl == 3 {
            return gp0();
        }
        Segment {
            selector: ss_sel,
            attrs: 0,
            limit: 0,
            base: 0,
        }
    } else {
        let Some(d) = tryd!(desc::read_descriptor(cpu, ss_sel)) else {
            return gp0();
        };
        let writable_data = d.is_code_or_data() && !d.is_code() && d.typ() & 2 != 0;
        if (ss_sel & 3) as u8 != rpl || d.dpl() != rpl || !writable_data {
            return Sys::Fault(fault(vector::GP, Some(ss_sel as u32 & !3)));
        }
        if !d.present() {
            return Sys::Fault(fault(vector::SS, Some(ss_sel as u32 & !3)));
        }
        d.to_segment(ss_sel)
    };
    // Which flags the old privilege level may change. RF is loaded from the frame: the next
    // instruction then ignores instruction breakpoints and clears it when it completes (the
    // engine runs an instruction with RF=1 in its checked mode, which does that).
    let mut changeable =
        rflags::ARITH | rflags::TF | rflags::DF | rflags::NT | rflags::RF | rflags::AC | rflags::ID;
    if cpl == 0 {
        changeable |= rflags::IOPL | rflags::VIF | rflags::VIP;
    }
    let iopl = ((flags >> 12) & 3) as u8;
    if cpl <= iopl {
        changeable |= rflags::IF;
    }
    let merged = (flags & !changeable) | (new_flags & changeable);
    cpu.seg[seg::CS] = cs.to_segment(cs_sel);
    cpu.seg[seg::SS] = new_ss;
    cpu.gpr[RSP] = new_rsp;
    set_rflags(cpu, merged);
    if rpl > cpl {
        // Returning outward: data segments the new level may not use become null.
        for s in [seg::ES, seg::DS, seg::FS, seg::GS] {
            let a = cpu.seg[s].attrs;
            let dpl = ((a >> 5) & 3) as u8;
            let conforming_code = a & 0x1c == 0x1c;
            if a & 0x80 != 0 && !conforming_code && dpl < rpl {
                let base = cpu.seg[s].base;
                cpu.seg[s] = Segment {
                    selector: 0,
                    attrs: 0,
                    limit: 0,
                    base: if s >= seg::FS { base } else { 0 },
                };
            }
        }
    }
    Sys::Done(Some(rip))
}

const MSR_TSC: u32 = 0x10;
const MSR_PLATFORM_ID: u32 = 0x17;
const MSR_APIC_BASE: u32 = 0x1b;
const MSR_SPEC_CTRL: u32 = 0x48;
const MSR_PRED_CMD: u32 = 0x49;
const MSR_UCODE_REV: u32 = 0x8b;
const MSR_MTRRCAP: u32 = 0xfe;
const MSR_SYSENTER_CS: u32 = 0x174;
const MSR_SYSENTER_ESP: u32 = 0x175;
const MSR_SYSENTER_EIP: u32 = 0x176;
const MSR_MCG_CAP: u32 = 0x179;
const MSR_MCG_STATUS: u32 = 0x17a;
const MSR_MISC_ENABLE: u32 = 0x1a0;
const MSR_PAT: u32 = 0x277;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_EFER: u32 = 0xc000_0080;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SFMASK: u32 = 0xc000_0084;
const MSR_FS_BASE: u32 = 0xc000_0100;
const MSR_GS_BASE: u32 = 0xc000_0101;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_TSC_AUX: u32 = 0xc000_0103;

/// Index into `cpu.mtrr` for the MTRR MSRs: 8 variable pairs (0x200-0x20f), 11 fixed, default.
fn mtrr_slot(index: u32) -> Option<usize> {
    match index {
        0x200..=0x20f => Some((index - 0x200) as usize),
        0x250 => Some(16),
        0x258 => Some(17),
        0x259 => Some(18),
        0x268..=0x26f => Some(19 + (index - 0x268) as usize),
        MSR_MTRR_DEF_TYPE => Some(27),
        _ => None,
    }
}

/// The MSRs the CPU model has (documented in ARCHITECTURE.md). `None`: #GP.
pub fn read_msr(cpu: &mut CpuState, index: u32) -> Option<u64> {
    Some(match index {
        MSR_TSC => bus::with_bus(cpu, |bus, cpu| bus.rdtsc(cpu))?,
        MSR_PLATFORM_ID | MSR_UCODE_REV | MSR_MCG_CAP | MSR_MCG_STATUS => 0,
        MSR_APIC_BASE => cpu.apic_base,
        MSR_SPEC_CTRL => cpu.spec_ctrl,
        // 8 variable ranges, fixed ranges, write-combining.
        MSR_MTRRCAP => 0x508,
        MSR_SYSENTER_CS => cpu.sysenter_cs,
        MSR_SYSENTER_ESP => cpu.sysenter_esp,
        MSR_SYSENTER_EIP => cpu.sysenter_eip,
        MSR_MISC_ENABLE => cpu.misc_enable,
        MSR_PAT => cpu.pat,
        MSR_EFER => cpu.efer,
        MSR_STAR => cpu.star,
        MSR_LSTAR => cpu.lstar,
        MSR_CSTAR => cpu.cstar,
        MSR_SFMASK => cpu.sfmask,
        MSR_FS_BASE => cpu.seg[seg::FS].base,
        MSR_GS_BASE => cpu.seg[seg::GS].base,
        MSR_KERNEL_GS_BASE => cpu.kernel_gs_base,
        MSR_TSC_AUX => cpu.tsc_aux,
        i => cpu.mtrr[mtrr_slot(i)?],
    })
}

/// Write an MSR; `false` means #GP (unknown MSR or a reserved bit set).
pub fn write_msr(cpu: &mut CpuState, index: u32, v: u64) -> bool {
    let canonical = mmu::is_canonical(v);
    match index {
        MSR_APIC_BASE => {
            // Only the xAPIC at its default address is modelled.
            if v & !0xffff_f900 != 0 {
                return false;
            }
            cpu.apic_base = v;
        }
        MSR_SPEC_CTRL => {
            if v & !0x7 != 0 {
                return false;
            }
            cpu.spec_ctrl = v;
        }
        MSR_PRED_CMD => {
            if v & !1 != 0 {
                return false;
            }
        }
        MSR_SYSENTER_CS => cpu.sysenter_cs = v & 0xffff,
        MSR_SYSENTER_ESP if canonical => cpu.sysenter_esp = v,
        MSR_SYSENTER_EIP if canonical => cpu.sysenter_eip = v,
        MSR_MCG_STATUS => {
            if v != 0 {
                return false;
            }
        }
        MSR_MISC_ENABLE => cpu.misc_enable = v,
        MSR_PAT => {
            // Each byte must be a valid memory type (0, 1, 4, 5, 6, 7).
            if (0..8).any(|i| matches!((v >> (i * 8)) & 0xff, 2 | 3 | 8..=255)) {
                return false;
            }
            cpu.pat = v;
        }
        MSR_EFER => {
            if v & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE) != 0 {
                return false;
            }
            // LMA is read-only; LME cannot change while paging is on.
            if (v ^ cpu.efer) & EFER_LME != 0 && cr0(cpu) & CR0_PG != 0 {
                return false;
            }
            if (v ^ cpu.efer) & EFER_NXE != 0 {
                cpu.tlb.flush();
            }
            cpu.efer = (v & !EFER_LMA) | (cpu.efer & EFER_LMA);
        }
        MSR_STAR => cpu.star = v,
        MSR_LSTAR if canonical => cpu.lstar = v,
        MSR_CSTAR if canonical => cpu.cstar = v,
        MSR_SFMASK => cpu.sfmask = v & 0xffff_ffff,
        MSR_FS_BASE if canonical => cpu.seg[seg::FS].base = v,
        MSR_GS_BASE if canonical => cpu.seg[seg::GS].base = v,
        MSR_KERNEL_GS_BASE if canonical => cpu.kernel_gs_base = v,
        MSR_TSC_AUX => {
            if v >> 32 != 0 {
                return false;
            }
            cpu.tsc_aux = v;
        }
        i => match mtrr_slot(i) {
            Some(slot) => cpu.mtrr[slot] = v,
            None => return false,
        },
    }
    true
}

fn fpu_check(cpu: &CpuState, wait: bool) -> Option<Sys> {
    if wait {
        // FWAIT faults only when both MP and TS are set.
        if cpu.cr0 & CR0_MP != 0 && cpu.cr0 & CR0_TS != 0 {
            return Some(Sys::Fault(fault(vector::NM, None)));
        }
        return None;
    }
    if cpu.cr0 & (CR0_EM | CR0_TS) != 0 {
        return Some(Sys::Fault(fault(vector::NM, None)));
    }
    None
}

fn x87_control(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> Sys {
    if let Some(f) = fpu_check(cpu, insn.mnemonic() == M::Wait) {
        return f;
    }
    match insn.mnemonic() {
        M::Fninit => {
            let st = cpu.x87.st;
            cpu.x87 = krr_runtime::X87State {
                st,
                ..Default::default()
            };
        }
        M::Fnstcw => trym!(write_mem(
            cpu,
            addr.expect("m16"),
            &cpu.x87.fcw.to_le_bytes()
        )),
        M::Fldcw => {
            let mut b = [0u8; 2];
            trym!(read_mem(cpu, addr.expect("m16"), &mut b));
            cpu.x87.fcw = u16::from_le_bytes(b) | 0x40;
        }
        M::Fnstsw => {
            let v = cpu.x87.fsw;
            if insn.op0_kind() == OpKind::Memory {
                trym!(write_mem(cpu, addr.expect("m16"), &v.to_le_bytes()));
            } else {
                cpu.gpr[RAX] = (cpu.gpr[RAX] & !0xffff) | v as u64;
            }
        }
        M::Fnclex => cpu.x87.fsw &= 0x7f00,
        _ => {}
    }
    Sys::Done(None)
}

/// The 512-byte FXSAVE image of the x87/SSE state.
fn fxsave_image(cpu: &CpuState) -> [u8; 512] {
    let mut b = [0u8; 512];
    let x = &cpu.x87;
    b[0..2].copy_from_slice(&x.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&x.fsw.to_le_bytes());
    b[4] = x.ftw;
    b[6..8].copy_from_slice(&x.fop.to_le_bytes());
    b[8..16].copy_from_slice(&x.fip.to_le_bytes());
    b[16..24].copy_from_slice(&x.fdp.to_le_bytes());
    b[24..28].copy_from_slice(&cpu.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for (i, st) in x.st.iter().enumerate() {
        b[32 + 16 * i..32 + 16 * i + 10].copy_from_slice(&st[..10]);
    }
    for (i, r) in cpu.xmm.iter().enumerate() {
        b[160 + 16 * i..168 + 16 * i].copy_from_slice(&r[0].to_le_bytes());
        b[168 + 16 * i..176 + 16 * i].copy_from_slice(&r[1].to_le_bytes());
    }
    b
}

/// MXCSR bits the model supports (DAZ included).
const MXCSR_MASK: u32 = 0xffff;

fn load_x87(cpu: &mut CpuState, b: &[u8]) {
    let x = &mut cpu.x87;
    x.fcw = u16::from_le_bytes([b[0], b[1]]);
    x.fsw = u16::from_le_bytes([b[2], b[3]]);
    x.ftw = b[4];
    x.fop = u16::from_le_bytes([b[6], b[7]]) & 0x7ff;
    x.fip = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    x.fdp = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    for i in 0..8 {
        x.st[i] = [0; 16];
        x.st[i][..10].copy_from_slice(&b[32 + 16 * i..42 + 16 * i]);
    }
}

fn load_xmm(cpu: &mut CpuState, b: &[u8]) {
    for i in 0..16 {
        cpu.xmm[i][0] =
            u64::from_le_bytes(b[160 + 16 * i..168 + 16 * i].try_into().expect("8 bytes"));
        cpu.xmm[i][1] =
            u64::from_le_bytes(b[168 + 16 * i..176 + 16 * i].try_into().expect("8 bytes"));
    }
}

fn fxsave(cpu: &mut CpuState, insn: &Instruction, addr: u64) -> Sys {
    if cpu.cr0 & (CR0_EM | CR0_TS) != 0 {
        return Sys::Fault(fault(vector::NM, None));
    }
    if addr & 15 != 0 {
        return gp0();
    }
    if matches!(insn.mnemonic(), M::Fxsave | M::Fxsave64) {
        // Bytes 416-511 (reserved, and available to software) are not written; the XMM
        // registers only with CR4.OSFXSR (SDM FXSAVE "Description").
        let img = fxsave_image(cpu);
        let len = if cpu.cr4 & CR4_OSFXSR != 0 { 416 } else { 160 };
        trym!(write_mem(cpu, addr, &img[..len]));
    } else {
        let mut img = [0u8; 512];
        trym!(read_mem(cpu, addr, &mut img));
        let mxcsr = u32::from_le_bytes(img[24..28].try_into().expect("4 bytes"));
        if mxcsr & !MXCSR_MASK != 0 {
            return gp0();
        }
        load_x87(cpu, &img);
        cpu.mxcsr = mxcsr;
        load_xmm(cpu, &img);
    }
    Sys::Done(None)
}

fn xsave(cpu: &mut CpuState, insn: &Instruction, addr: u64) -> Sys {
    if cpu.cr4 & CR4_OSXSAVE == 0 {
        return ud();
    }
    if cpu.cr0 & CR0_TS != 0 {
        return Sys::Fault(fault(vector::NM, None));
    }
    if addr & 63 != 0 {
        return gp0();
    }
    let rfbm = ((cpu.gpr[RDX] << 32) | (cpu.gpr[RAX] & 0xffff_ffff)) & cpu.xcr0;
    let restore = matches!(insn.mnemonic(), M::Xrstor | M::Xrstor64);
    if !restore {
        // Legacy area (the parts RFBM selects) and the header's XSTATE_BV; the rest of the
        // legacy area is left as it was in memory, as hardware does.
        let mut area = [0u8; 576];
        trym!(read_mem(cpu, addr, &mut area));
        let img = fxsave_image(cpu);
        if rfbm & 1 != 0 {
            area[0..24].copy_from_slice(&img[0..24]);
            area[32..160].copy_from_slice(&img[32..160]);
        }
        if rfbm & 2 != 0 {
            area[160..416].copy_from_slice(&img[160..416]);
        }
        // MXCSR and MXCSR_MASK belong to SSE state: saved when RFBM[1] (or RFBM[2], AVX) is
        // set (SDM Vol. 1 13.7).
        if rfbm & 6 != 0 {
            area[24..32].copy_from_slice(&img[24..32]);
        }
        let mut bv = u64::from_le_bytes(area[512..520].try_into().expect("8 bytes"));
        // Components in use are reported as 1 (hardware may report 1 for initial state too).
        bv = (bv & !rfbm) | rfbm;
        area[512..520].copy_from_slice(&bv.to_le_bytes());
        trym!(write_mem(cpu, addr, &area));
    } else {
        let mut area = [0u8; 576];
        trym!(read_mem(cpu, addr, &mut area));
        let bv = u64::from_le_bytes(area[512..520].try_into().expect("8 bytes"));
        let comp = u64::from_le_bytes(area[520..528].try_into().expect("8 bytes"));
        // The standard form: XCOMP_BV and the next 8 header bytes must be 0, XSTATE_BV only
        // enabled components (SDM XRSTOR "Protected Mode Exceptions").
        if comp != 0 || bv & !cpu.xcr0 != 0 || area[528..536].iter().any(|&b| b != 0) {
            return gp0();
        }
        let mxcsr = u32::from_le_bytes(area[24..28].try_into().expect("4 bytes"));
        // The standard form loads MXCSR whenever RFBM[1] or RFBM[2] is set, whatever
        // XSTATE_BV says (SDM Vol. 1 13.8.1).
        if rfbm & 6 != 0 && mxcsr & !MXCSR_MASK != 0 {
            return gp0();
        }
        if rfbm & 1 != 0 {
            if bv & 1 != 0 {
                load_x87(cpu, &area);
            } else {
                cpu.x87 = krr_runtime::X87State::default();
            }
        }
        if rfbm & 2 != 0 {
            if bv & 2 != 0 {
                load_xmm(cpu, &area);
            } else {
                cpu.xmm = [[0; 2]; 16];
            }
        }
        if rfbm & 6 != 0 {
            cpu.mxcsr = mxcsr;
        }
    }
    Sys::Done(None)
}

/// Outside IOPL, may the program access the `size` ports from `port`? The I/O permission
/// bitmap of the 64-bit TSS decides: its offset is the word at TSS offset 0x66, and every
/// port's bit must be clear, reading two bytes of the map, all within the TSS limit (SDM Vol. 1
/// 19.5.2 "I/O Permission Bit Map"). These are supervisor reads, whatever the CPL.
fn io_permitted(cpu: &mut CpuState, port: u16, size: u8) -> Result<(), Sys> {
    let (base, limit) = (cpu.tr.base, cpu.tr.limit as u64);
    if limit < 0x67 {
        return Err(gp0());
    }
    let mut b = [0u8; 2];
    desc::system_read(cpu, base.wrapping_add(0x66), &mut b).map_err(Sys::from)?;
    let byte = u16::from_le_bytes(b) as u64 + port as u64 / 8;
    if byte + 1 > limit {
        return Err(gp0());
    }
    desc::system_read(cpu, base.wrapping_add(byte), &mut b).map_err(Sys::from)?;
    let bits = u16::from_le_bytes(b) >> (port & 7);
    if bits & ((1u16 << size) - 1) != 0 {
        return Err(gp0());
    }
    Ok(())
}

fn port_io(cpu: &mut CpuState, insn: &Instruction) -> Sys {
    let m = insn.mnemonic();
    let size: u8 = match m {
        M::Insb | M::Outsb => 1,
        M::Insw | M::Outsw => 2,
        M::Insd | M::Outsd => 4,
        M::In => insn.op0_register().size() as u8,
        _ => insn.op1_register().size() as u8,
    };
    let port = |cpu: &CpuState| -> u16 {
        let k = if m == M::In {
            insn.op1_kind()
        } else {
            insn.op0_kind()
        };
        if matches!(k, OpKind::Immediate8) {
            insn.immediate8() as u16
        } else {
            cpu.gpr[RDX] as u16
        }
    };
    let cpl = cpu.cpl();
    let iopl = ((cpu.rflags >> 12) & 3) as u8;
    if cpl > iopl {
        // INS/OUTS use DX, which the REP loop does not change: one check covers every
        // iteration.
        let p = port(cpu);
        trym!(io_permitted(cpu, p, size));
    }
    if cpu.bus.is_none() {
        return no_bus(insn);
    }
    match m {
        M::In => {
            let p = port(cpu);
            let v = bus::with_bus(cpu, |bus, cpu| bus.port_in(cpu, p, size)).expect("bus checked");
            set_reg(cpu, insn.op0_register(), v as u64);
            Sys::Done(None)
        }
        M::Out => {
            let p = port(cpu);
            let v = reg_value(cpu, insn.op1_register()) as u32;
            bus::with_bus(cpu, |bus, cpu| bus.port_out(cpu, p, size, v));
            Sys::Done(None)
        }
        _ => string_io(cpu, insn, size),
    }
}

/// INS/OUTS, with REP: each iteration is committed as it completes.
fn string_io(cpu: &mut CpuState, insn: &Instruction, size: u8) -> Sys {
    let rep = insn.has_rep_prefix() || insn.has_repne_prefix();
    let input = matches!(insn.mnemonic(), M::Insb | M::Insw | M::Insd);
    let a32 = insn.memory_base().size() == 4 || matches!(insn.op0_kind(), OpKind::MemoryESEDI);
    let mask = if a32 { 0xffff_ffff } else { u64::MAX };
    let step = if cpu.rflags & rflags::DF != 0 {
        (size as u64).wrapping_neg()
    } else {
        size as u64
    };
    let seg_base = match insn.memory_segment() {
        Register::FS => cpu.seg[seg::FS].base,
        Register::GS => cpu.seg[seg::GS].base,
        _ => 0,
    };
    loop {
        if rep && cpu.gpr[RCX] & mask == 0 {
            break;
        }
        let port = cpu.gpr[RDX] as u16;
        if input {
            let dst = cpu.gpr[RDI] & mask;
            // Check that the destination is writable before reading the port: a port read has
            // side effects, and a fault here is a write fault (#PF with W=1).
            trym!(probe_write(cpu, dst, size as u64));
            let v =
                bus::with_bus(cpu, |bus, cpu| bus.port_in(cpu, port, size)).expect("bus checked");
            trym!(write_mem(cpu, dst, &v.to_le_bytes()[..size as usize]));
            cpu.gpr[RDI] = (cpu.gpr[RDI] & !mask) | (dst.wrapping_add(step) & mask);
        } else {
            let src = cpu.gpr[RSI] & mask;
            let mut b = [0u8; 4];
            trym!(read_mem(
                cpu,
                seg_base.wrapping_add(src),
                &mut b[..size as usize]
            ));
            let v = u32::from_le_bytes(b);
            bus::with_bus(cpu, |bus, cpu| bus.port_out(cpu, port, size, v));
            cpu.gpr[RSI] = (cpu.gpr[RSI] & !mask) | (src.wrapping_add(step) & mask);
        }
        if !rep {
            break;
        }
        cpu.gpr[RCX] = (cpu.gpr[RCX] & !mask) | (cpu.gpr[RCX].wrapping_sub(1) & mask);
    }
    Sys::Done(None)
}
