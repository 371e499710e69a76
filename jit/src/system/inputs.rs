//! The nondeterministic inputs the machine's bus supplies: RDTSC/RDTSCP, RDRAND/RDSEED, RDPID,
//! RDPMC (no counters in the model: only a bus's recorded values) and VMCALL (a bus that
//! plays a hypervisor, as KRR's replayer does).

use super::*;

/// The inputs instructions.
pub(super) fn execute(cpu: &mut CpuState, insn: &Instruction) -> SysResult {
    let cpl = cpu.cpl();
    match insn.mnemonic() {
        M::Rdtsc | M::Rdtscp => {
            if cpl > 0 && cpu.cr4 & cr4::TSD != 0 {
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
            SysResult::Done(None)
        }
        M::Rdpmc => {
            if cpl > 0 && cpu.cr4 & cr4::PCE == 0 {
                return gp0();
            }
            // The model has no performance counters (CPUID leaf 0xA is absent); a replayer's
            // bus may serve recorded values.
            let counter = cpu.gpr[RCX] as u32;
            match bus::with_bus(cpu, |bus, cpu| bus.rdpmc(cpu, counter)).flatten() {
                Some(v) => {
                    cpu.gpr[RAX] = v & 0xffff_ffff;
                    cpu.gpr[RDX] = (v >> 32) & 0xffff_ffff;
                    SysResult::Done(None)
                }
                None => gp0(),
            }
        }
        M::Rdrand | M::Rdseed => {
            let size = insn.op0_register().size() as u8;
            let seed = insn.mnemonic() == M::Rdseed;
            let Some(r) = bus::with_bus(cpu, |bus, cpu| bus.rdrand(cpu, size, seed)) else {
                return no_bus(insn);
            };
            set_reg(cpu, insn.op0_register(), r.unwrap_or(0));
            set_arith(cpu, r.is_some() as u64);
            SysResult::Done(None)
        }
        M::Vmcall => {
            if bus::with_bus(cpu, |bus, cpu| bus.hypercall(cpu)) == Some(true) {
                SysResult::Done(None)
            } else {
                ud()
            }
        }
        M::Rdpid => {
            let v = cpu.tsc_aux;
            set_reg(cpu, insn.op0_register(), v);
            SysResult::Done(None)
        }
        _ => unreachable!("routed here by system::execute"),
    }
}

pub(super) fn no_bus(insn: &Instruction) -> SysResult {
    log::warn!(
        "`{insn}` at RIP {:#x} needs a device bus and none is attached: raising #UD",
        insn.ip()
    );
    ud()
}
