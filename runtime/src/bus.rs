//! How the CPU reaches everything outside itself: port IO, MMIO, and the nondeterministic
//! inputs (TSC, hardware random numbers). The engine calls the driver's `Bus` at the exact
//! instruction, with the CPU state written back, and never reads host time or randomness
//! itself. A recorder's bus forwards to devices and logs the results; a replayer's bus returns
//! the logged results and checks that the guest asks for them at the recorded place.

use crate::CpuState;

pub trait Bus {
    /// IN: `size` is 1, 2 or 4.
    fn port_in(&mut self, cpu: &CpuState, port: u16, size: u8) -> u32;
    fn port_out(&mut self, cpu: &CpuState, port: u16, size: u8, value: u32);
    /// A load from a physical address with no RAM behind it (`size` 1, 2, 4 or 8).
    fn mmio_read(&mut self, cpu: &CpuState, phys: u64, size: u8) -> u64;
    fn mmio_write(&mut self, cpu: &CpuState, phys: u64, size: u8, value: u64);
    /// RDTSC/RDTSCP.
    fn rdtsc(&mut self, cpu: &CpuState) -> u64;
    /// RDRAND (`seed` false) / RDSEED: `None` reports failure (CF=0).
    fn rdrand(&mut self, cpu: &CpuState, size: u8, seed: bool) -> Option<u64>;
    /// RDMSR of a device's MSR ([`crate::arch::msr::is_device_msr`]): `None` refuses it
    /// (#GP). Without a device that owns it, every access is refused.
    fn msr_read(&mut self, _cpu: &CpuState, _index: u32) -> Option<u64> {
        None
    }
    /// WRMSR of a device's MSR: `false` refuses it (#GP).
    fn msr_write(&mut self, _cpu: &CpuState, _index: u32, _value: u64) -> bool {
        false
    }
    /// MOV from CR8 on a machine whose local APIC holds the TPR: its bits 7:4. `None`: no
    /// APIC, CR8 is the CPU's own register.
    fn cr8_read(&mut self, _cpu: &CpuState) -> Option<u64> {
        None
    }
    /// MOV to CR8 (already checked: bits 3:0 only), for the local APIC's TPR.
    fn cr8_write(&mut self, _cpu: &CpuState, _value: u64) {}
    /// VMCALL (any CPL): `true` handles it (the driver reads and writes the registers it
    /// needs through its own state access after the run; the instruction retires with no
    /// register changed, as KRR's hypercalls leave them); `false` raises #UD, as on a CPU
    /// without a hypervisor to call.
    fn hypercall(&mut self, _cpu: &CpuState) -> bool {
        false
    }
    /// RDPMC of counter ECX where the CPL/CR4.PCE check allowed it: `None` raises #GP (the
    /// model has no performance counters).
    fn rdpmc(&mut self, _cpu: &CpuState, _counter: u32) -> Option<u64> {
        None
    }
    /// The guest executed `mnemonic` (CPUID, RDMSR), whose result the model computes: a
    /// replayer of recordings that did not record it says so.
    fn model_answered(&mut self, _cpu: &CpuState, _mnemonic: &'static str) {}
    /// After a port access, RDTSC, RDRAND/RDSEED, RDPMC or VMCALL: should the engine return
    /// right after this instruction (before the next one starts, chained code included)? A
    /// replayer whose last event the instruction consumed ends exactly there.
    fn stop_after_instruction(&self, _cpu: &CpuState) -> bool {
        false
    }
    /// Ask the engine to return to the driver at the next block boundary (a device raised an
    /// interrupt the CPU can take now, the guest asked to power off, ...).
    fn wants_exit(&self, _cpu: &CpuState) -> bool {
        false
    }
}

/// The bus pointer kept in [`CpuState::bus`] while the engine runs.
pub type BusPtr = Option<std::ptr::NonNull<dyn Bus>>;

/// Run `f` with `bus` attached to `cpu` (port IO, MMIO and the nondeterministic inputs reach
/// it through [`with_bus`]); it is detached again before this returns.
pub fn attached<R>(cpu: &mut CpuState, bus: &mut dyn Bus, f: impl FnOnce(&mut CpuState) -> R) -> R {
    // SAFETY: the pointer is used only while `f` runs (through `with_bus`) and is cleared
    // before this returns, so extending its lifetime to 'static is never observable.
    let ptr: std::ptr::NonNull<dyn Bus> = unsafe {
        std::mem::transmute::<std::ptr::NonNull<dyn Bus + '_>, std::ptr::NonNull<dyn Bus>>(
            std::ptr::NonNull::from(bus),
        )
    };
    let outer = cpu.exec.bus.replace(ptr);
    let r = f(cpu);
    cpu.exec.bus = outer;
    r
}

/// Borrow the bus the engine is running with, if any.
pub fn with_bus<R>(cpu: &mut CpuState, f: impl FnOnce(&mut dyn Bus, &CpuState) -> R) -> Option<R> {
    let mut p = cpu.exec.bus?;
    // SAFETY: `cpu.exec.bus` is set by `attached` from a `&mut dyn Bus` that outlives the call
    // and cleared before it returns; nothing else holds that borrow meanwhile.
    let bus = unsafe { p.as_mut() };
    Some(f(bus, cpu))
}
