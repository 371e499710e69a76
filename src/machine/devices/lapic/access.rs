//! The two register interfaces over one register file: xAPIC MMIO (reserved registers set
//! ESR bit 7, read-only registers ignore writes) and x2APIC MSRs (every violation is #GP).

use super::regs::*;
use super::{ApicFault, ApicMode, ApicOutput, LocalApic, Lvt, TimerMode};

/// The end of the xAPIC register space: the SDM's illegal-register-address error covers
/// 0x000-0x3ff; the rest of the page reads 0 without one.
const REGISTER_SPACE_END: u32 = 0x400;

/// Which 256-bit register an offset falls in, and its 32-bit word.
enum VectorReg {
    Isr(usize),
    Tmr(usize),
    Irr(usize),
}

fn vector_reg(offset: u32) -> Option<VectorReg> {
    let word = |base: u32| {
        (base..base + VECTOR_REGS * REG_STRIDE)
            .contains(&offset)
            .then(|| ((offset - base) / REG_STRIDE) as usize)
    };
    word(APIC_ISR)
        .map(VectorReg::Isr)
        .or_else(|| word(APIC_TMR).map(VectorReg::Tmr))
        .or_else(|| word(APIC_IRR).map(VectorReg::Irr))
}

/// The writable bits of `value`. In x2APIC mode (`strict`) any other bit set is #GP.
fn field(value: u32, writable: u32, strict: bool) -> Result<u32, ApicFault> {
    if strict && value & !writable != 0 {
        return Err(ApicFault::ReservedBits);
    }
    Ok(value & writable)
}

impl LocalApic {
    /// A 32-bit read at `offset` (bits 11:0 of the address) of the xAPIC page. Outside xAPIC
    /// mode the page is not decoded and reads all ones; misaligned offsets read 0.
    pub fn mmio_read(&mut self, offset: u32, now_ns: u64) -> u32 {
        if self.mode() != ApicMode::XApic {
            log::debug!("local APIC: MMIO read {offset:#x} outside xAPIC mode");
            return u32::MAX;
        }
        let offset = offset & 0xfff;
        if !offset.is_multiple_of(REG_STRIDE) {
            log::debug!("local APIC: misaligned MMIO read {offset:#x}");
            return 0;
        }
        self.advance(now_ns);
        match self.read_register(offset, now_ns) {
            Ok(value) => value as u32,
            Err(ApicFault::ReservedRegister) if offset < REGISTER_SPACE_END => {
                self.error(ESR_ILLEGAL_REGISTER);
                0
            }
            // The write-only EOI register and the page above the registers read 0.
            Err(_) => 0,
        }
    }

    /// A 32-bit write at `offset` of the xAPIC page (ignored outside xAPIC mode and at
    /// misaligned offsets).
    pub fn mmio_write(&mut self, offset: u32, value: u32, now_ns: u64) {
        if self.mode() != ApicMode::XApic {
            log::debug!("local APIC: MMIO write {offset:#x} outside xAPIC mode");
            return;
        }
        let offset = offset & 0xfff;
        if !offset.is_multiple_of(REG_STRIDE) {
            log::debug!("local APIC: misaligned MMIO write {offset:#x} ignored");
            return;
        }
        self.advance(now_ns);
        match self.write_register(offset, u64::from(value), now_ns) {
            Err(ApicFault::ReservedRegister) if offset < REGISTER_SPACE_END => {
                self.error(ESR_ILLEGAL_REGISTER);
            }
            // Read-only registers ignore writes.
            _ => {}
        }
    }

    /// The xAPIC offset of x2APIC MSR `index`, or the #GP for it.
    fn x2apic_offset(&self, index: u32) -> Result<u32, ApicFault> {
        if !(X2APIC_MSR_BASE..=X2APIC_MSR_LAST).contains(&index) {
            return Err(ApicFault::ReservedRegister);
        }
        if self.mode() != ApicMode::X2Apic {
            return Err(ApicFault::NotX2apic);
        }
        Ok((index - X2APIC_MSR_BASE) << 4)
    }

    /// RDMSR of x2APIC register MSR `index` (0x800-0x8ff); `Err` = #GP(0).
    pub fn msr_read(&mut self, index: u32, now_ns: u64) -> Result<u64, ApicFault> {
        let offset = self.x2apic_offset(index)?;
        self.advance(now_ns);
        self.read_register(offset, now_ns)
    }

    /// WRMSR of x2APIC register MSR `index` (0x800-0x8ff); `Err` = #GP(0), nothing changed.
    pub fn msr_write(&mut self, index: u32, value: u64, now_ns: u64) -> Result<(), ApicFault> {
        let offset = self.x2apic_offset(index)?;
        self.advance(now_ns);
        self.write_register(offset, value, now_ns)
    }

    /// Read the register at xAPIC `offset` in the current mode.
    fn read_register(&self, offset: u32, now_ns: u64) -> Result<u64, ApicFault> {
        let x2 = self.mode() == ApicMode::X2Apic;
        if let Some(lvt) = Lvt::from_offset(offset) {
            return Ok(u64::from(self.lvt[lvt.index()]));
        }
        if let Some(reg) = vector_reg(offset) {
            return Ok(u64::from(match reg {
                VectorReg::Isr(i) => self.isr.word(i),
                VectorReg::Tmr(i) => self.tmr.word(i),
                VectorReg::Irr(i) => self.irr.word(i),
            }));
        }
        let value = match offset {
            APIC_ID if x2 => self.config.apic_id,
            APIC_ID => (self.config.apic_id & 0xff) << XAPIC_ID_SHIFT,
            APIC_VERSION => VERSION_VALUE,
            APIC_TPR => u32::from(self.tpr),
            APIC_APR | APIC_RRD if !x2 => 0,
            APIC_PPR => u32::from(self.ppr()),
            APIC_EOI => return Err(ApicFault::WriteOnly),
            APIC_SELF_IPI if x2 => return Err(ApicFault::WriteOnly),
            APIC_LDR if x2 => self.x2apic_ldr(),
            APIC_LDR => self.ldr,
            APIC_DFR if !x2 => self.dfr | DFR_ONES,
            APIC_SVR => self.svr,
            APIC_ESR => self.esr,
            APIC_ICR_LOW if x2 => {
                return Ok(u64::from(self.icr_high) << 32 | u64::from(self.icr_low));
            }
            APIC_ICR_LOW => self.icr_low,
            APIC_ICR_HIGH if !x2 => self.icr_high,
            APIC_TIMER_INITIAL => self.timer.initial(),
            APIC_TIMER_CURRENT => self.timer.current(self.timer_mode(), now_ns),
            APIC_TIMER_DIVIDE => self.timer.divide(),
            _ => return Err(ApicFault::ReservedRegister),
        };
        Ok(u64::from(value))
    }

    /// Write the register at xAPIC `offset` in the current mode. In x2APIC mode reserved
    /// bits are checked (only the ICR is 64 bits wide); in xAPIC mode they are dropped.
    fn write_register(&mut self, offset: u32, value: u64, now_ns: u64) -> Result<(), ApicFault> {
        let x2 = self.mode() == ApicMode::X2Apic;
        if x2 && offset != APIC_ICR_LOW && value >> 32 != 0 {
            return Err(ApicFault::ReservedBits);
        }
        let low = value as u32;
        if let Some(lvt) = Lvt::from_offset(offset) {
            return self.write_lvt(lvt, low, x2);
        }
        if vector_reg(offset).is_some() {
            return Err(ApicFault::ReadOnly);
        }
        match offset {
            APIC_ID | APIC_VERSION | APIC_PPR | APIC_TIMER_CURRENT => {
                return Err(ApicFault::ReadOnly)
            }
            APIC_APR | APIC_RRD if !x2 => return Err(ApicFault::ReadOnly),
            APIC_LDR if x2 => return Err(ApicFault::ReadOnly),
            APIC_TPR => self.tpr = field(low, 0xff, x2)? as u8,
            APIC_EOI => {
                field(low, 0, x2)?;
                if let Some(vector) = self.eoi() {
                    self.outputs.push(ApicOutput::EoiBroadcast(vector));
                }
            }
            APIC_LDR => self.ldr = low & LDR_XAPIC_MASK,
            APIC_DFR if !x2 => self.dfr = low & DFR_MODEL_MASK,
            APIC_SVR => self.write_svr(field(low, SVR_WRITABLE, x2)?),
            APIC_ESR => {
                field(low, 0, x2)?;
                self.esr = std::mem::take(&mut self.esr_pending);
            }
            APIC_ICR_LOW if x2 => {
                if low & X2APIC_ICR_RESERVED != 0 {
                    return Err(ApicFault::ReservedBits);
                }
                self.icr_low = low & ICR_LOW_WRITABLE;
                self.icr_high = (value >> 32) as u32;
                self.send_ipi(self.icr_low, self.icr_high);
            }
            APIC_ICR_LOW => {
                self.icr_low = low & ICR_LOW_WRITABLE;
                self.send_ipi(self.icr_low, self.icr_high >> ICR_HIGH_DEST_SHIFT);
            }
            APIC_ICR_HIGH if !x2 => self.icr_high = low & ICR_HIGH_WRITABLE,
            APIC_TIMER_INITIAL => self.timer.write_initial(low, self.timer_mode(), now_ns),
            APIC_TIMER_DIVIDE => {
                let divide = field(low, TIMER_DIVIDE_WRITABLE, x2)?;
                self.timer.write_divide(divide, now_ns);
            }
            APIC_SELF_IPI if x2 => {
                let vector = field(low, SELF_IPI_WRITABLE, x2)? as u8;
                if vector < FIRST_LEGAL_VECTOR {
                    self.error(ESR_SEND_ILLEGAL_VECTOR);
                }
                self.raise_fixed(vector, false);
            }
            _ => return Err(ApicFault::ReservedRegister),
        }
        Ok(())
    }

    /// SVR: clearing the software enable masks every LVT entry.
    fn write_svr(&mut self, value: u32) {
        self.svr = value;
        if value & SVR_ENABLE == 0 {
            for entry in &mut self.lvt {
                *entry |= LVT_MASKED;
            }
        }
    }

    /// An LVT write. Read-only bits are kept; while software-disabled the mask stays set.
    fn write_lvt(&mut self, lvt: Lvt, value: u32, strict: bool) -> Result<(), ApicFault> {
        let writable = lvt.writable(self.config.tsc_deadline);
        let mut new = field(value & !lvt.read_only(), writable, strict)?;
        if self.svr & SVR_ENABLE == 0 {
            new |= LVT_MASKED;
        }
        let index = lvt.index();
        let old = self.lvt[index];
        self.lvt[index] = new | (old & LVT_REMOTE_IRR);
        match lvt {
            Lvt::Timer => self
                .timer
                .mode_changed(TimerMode::from_lvt(old), TimerMode::from_lvt(new)),
            Lvt::Lint0 | Lvt::Lint1 => {
                let pin = usize::from(lvt == Lvt::Lint1);
                if self.lint_level_fixed(pin) {
                    // Unmasking an asserted level-triggered pin requests its interrupt.
                    self.lint_level_request(pin);
                } else {
                    // Remote IRR only has a meaning for level-triggered fixed entries.
                    self.lvt[index] &= !LVT_REMOTE_IRR;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
