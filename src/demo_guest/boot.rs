//! The boot loader's part of the demo: the guest's code in RAM and the CPU in the state the
//! Linux 64-bit boot protocol leaves it in.

use super::kernel::kernel;
use super::user::user;
use super::*;
use krr_runtime::DescriptorTable;

/// Write the guest into `m.core.mem()` and set `m.cpu` to the boot state: 64-bit mode, CPL0,
/// interrupts off, a flat boot GDT and boot page tables identity-mapping the first 8 MiB
/// (supervisor, 2 MiB pages), RIP at the kernel's entry.
pub fn load(m: &mut Machine) -> Result<(), String> {
    if m.core.mem().size() < MEM_BYTES {
        return Err(format!(
            "the demo guest needs {} MiB of RAM, the machine has {}",
            MEM_BYTES >> 20,
            m.core.mem().size() >> 20
        ));
    }
    let kcode = kernel().map_err(|e| format!("assembling the demo kernel: {e}"))?;
    let ucode = user().map_err(|e| format!("assembling the demo user program: {e}"))?;
    if kcode.len() as u64 > KCODE_MAX || ucode.len() as u64 > UCODE_MAX {
        return Err(format!(
            "demo guest code too large: kernel {} bytes (max {KCODE_MAX}), user {} (max {UCODE_MAX})",
            kcode.len(),
            ucode.len()
        ));
    }
    let mem_err = |e: krr_runtime::MemoryError| format!("writing the demo guest: {e}");
    m.core.mem_mut().write(KCODE, &kcode).map_err(mem_err)?;
    m.core.mem_mut().write(UCODE, &ucode).map_err(mem_err)?;
    // The boot loader's part: flat GDT (0x08 code, 0x10 data), identity map of 8 MiB.
    for (i, d) in [0u64, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff]
        .iter()
        .enumerate()
    {
        m.core
            .mem_mut()
            .write_u64(BOOT_GDT + 8 * i as u64, *d)
            .map_err(mem_err)?;
    }
    for t in [BOOT_PML4, BOOT_PDPT, BOOT_PD] {
        m.core.mem_mut().write(t, &[0u8; 4096]).map_err(mem_err)?;
    }
    m.core
        .mem_mut()
        .write_u64(BOOT_PML4, BOOT_PDPT | P | RW)
        .map_err(mem_err)?;
    m.core
        .mem_mut()
        .write_u64(BOOT_PDPT, BOOT_PD | P | RW)
        .map_err(mem_err)?;
    for i in 0..4u64 {
        m.core
            .mem_mut()
            .write_u64(BOOT_PD + 8 * i, (i << 21) | P | RW | PS)
            .map_err(mem_err)?;
    }

    crate::machine::linux::enter_flat_long_mode(
        m.core.arch_mut(),
        DescriptorTable {
            base: BOOT_GDT,
            limit: 23,
        },
        (KERNEL_CS, KERNEL_DS),
        BOOT_PML4,
        KCODE,
    );
    m.core.flush_tlb();
    Ok(())
}
