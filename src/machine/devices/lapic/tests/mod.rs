//! The local APIC driven the way Linux 6.x drives it (arch/x86/kernel/apic/apic.c,
//! x2apic_phys.c), plus the SDM's rules at their edges.

use super::*;

mod modes;
mod timer;

/// Linux's vectors.
const LOCAL_TIMER_VECTOR: u32 = 0xec;
const ERROR_APIC_VECTOR: u32 = 0xfe;
const SPURIOUS_APIC_VECTOR: u32 = 0xff;
/// Linux's APIC_TDR_DIV_TMBASE (82489DX only) and APIC_TDR_DIV_1 / APIC_TDR_DIV_16.
const TDR_DIV_TMBASE: u32 = 1 << 2;
const TDR_DIV_1: u32 = 0b1011;
const TDR_DIV_16: u32 = 0b0011;

fn config(apic_id: u32) -> LocalApicConfig {
    LocalApicConfig {
        apic_id,
        bsp: true,
        max_phys_addr: 40,
        x2apic: true,
        tsc_deadline: true,
    }
}

fn apic_with_id(apic_id: u32) -> LocalApic {
    LocalApic::new(config(apic_id))
}

fn msg(vector: u8, level: bool) -> InterruptMessage {
    InterruptMessage {
        vector,
        delivery: DeliveryMode::Fixed,
        destination_mode: DestinationMode::Physical,
        destination: 0,
        level_triggered: level,
    }
}

fn delivery(vector: u8, delivery: DeliveryMode) -> InterruptMessage {
    InterruptMessage {
        delivery,
        ..msg(vector, false)
    }
}

/// setup_local_APIC + end_local_APIC_setup (lapic_setup_esr) on CPU 0 with the flat
/// logical driver. `pic_through`: no IO-APIC, so LINT0 ExtINT is left unmasked.
fn linux_setup(apic: &mut LocalApic, t: u64, pic_through: bool) {
    let v = apic.mmio_read(APIC_SVR, t);
    apic.mmio_write(APIC_SVR, v & !SVR_ENABLE, t);
    // init_apic_ldr: flat model, logical ID 1 << cpu.
    apic.mmio_write(APIC_DFR, 0xffff_ffff, t);
    let v = apic.mmio_read(APIC_LDR, t) & !LDR_XAPIC_MASK;
    apic.mmio_write(APIC_LDR, v | 1 << 24, t);
    let v = apic.mmio_read(APIC_TPR, t) & !0xff;
    apic.mmio_write(APIC_TPR, v | 0x10, t);
    // apic_pending_intr_clear: nothing pending after reset.
    for i in 0..VECTOR_REGS {
        assert_eq!(apic.mmio_read(APIC_IRR + i * REG_STRIDE, t), 0);
        assert_eq!(apic.mmio_read(APIC_ISR + i * REG_STRIDE, t), 0);
    }
    let v = apic.mmio_read(APIC_SVR, t) & !SVR_VECTOR;
    apic.mmio_write(APIC_SVR, v | SVR_ENABLE | SPURIOUS_APIC_VECTOR, t);
    let masked = apic.mmio_read(APIC_LVT_LINT0, t) & LVT_MASKED;
    assert_eq!(masked, LVT_MASKED, "LVT0 is masked after reset");
    let lvt0 = DM_EXTINT << LVT_DELIVERY_SHIFT;
    apic.mmio_write(
        APIC_LVT_LINT0,
        if pic_through { lvt0 } else { lvt0 | LVT_MASKED },
        t,
    );
    apic.mmio_write(APIC_LVT_LINT1, DM_NMI << LVT_DELIVERY_SHIFT, t);
    // lapic_setup_esr (maxlvt > 3).
    apic.mmio_write(APIC_ESR, 0, t);
    let old = apic.mmio_read(APIC_ESR, t);
    apic.mmio_write(APIC_LVT_ERROR, ERROR_APIC_VECTOR, t);
    apic.mmio_write(APIC_ESR, 0, t);
    assert_eq!(apic.mmio_read(APIC_ESR, t), old);
}

fn linux_apic(t: u64) -> LocalApic {
    let mut apic = apic_with_id(0);
    linux_setup(&mut apic, t, false);
    apic
}

/// __setup_APIC_LVTT(clocks, oneshot, irqen) as Linux writes it.
fn setup_lvtt(apic: &mut LocalApic, clocks: u32, oneshot: bool, irqen: bool, t: u64) {
    let mut lvtt = LOCAL_TIMER_VECTOR;
    if !oneshot {
        lvtt |= LVT_TIMER_PERIODIC;
    } else if apic.config().tsc_deadline {
        lvtt |= LVT_TIMER_TSC_DEADLINE;
    }
    if !irqen {
        lvtt |= LVT_MASKED;
    }
    apic.mmio_write(APIC_LVT_TIMER, lvtt, t);
    if lvtt & LVT_TIMER_TSC_DEADLINE != 0 {
        return;
    }
    let v = apic.mmio_read(APIC_TIMER_DIVIDE, t);
    apic.mmio_write(
        APIC_TIMER_DIVIDE,
        (v & !(TDR_DIV_1 | TDR_DIV_TMBASE)) | TDR_DIV_16,
        t,
    );
    if !oneshot {
        apic.mmio_write(APIC_TIMER_INITIAL, clocks / 16, t);
    }
}

/// The interrupt entry and handler end: acknowledge, check the vector, EOI by MMIO.
fn take_fixed(apic: &mut LocalApic, vector: u32, t: u64) {
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(vector as u8)));
    assert_eq!(apic.acknowledge(), Some(vector as u8));
    apic.mmio_write(APIC_EOI, 0, t);
}

fn x2apic(apic_id: u32) -> LocalApic {
    let mut apic = apic_with_id(apic_id);
    apic.set_apic_base(apic.apic_base() | BASE_EXTD).unwrap();
    apic
}

#[test]
fn power_on_state() {
    let mut apic = apic_with_id(3);
    assert_eq!(apic.apic_base(), 0xfee0_0000 | BASE_EN | BASE_BSP);
    assert_eq!(apic.mode(), ApicMode::XApic);
    assert_eq!(apic.mmio_base(), Some(0xfee0_0000));
    assert!(!apic.passes_pic_through());
    assert!(!apic.software_enabled());
    assert_eq!(apic.mmio_read(APIC_ID, 0), 3 << 24);
    assert_eq!(apic.mmio_read(APIC_VERSION, 0), 0x0005_0014);
    assert_eq!(apic.mmio_read(APIC_SVR, 0), 0xff);
    assert_eq!(apic.mmio_read(APIC_DFR, 0), 0xffff_ffff);
    for lvt in Lvt::ALL {
        assert_eq!(apic.mmio_read(lvt.offset(), 0), LVT_MASKED, "{lvt:?}");
    }
    for offset in [
        APIC_TPR,
        APIC_PPR,
        APIC_LDR,
        APIC_ESR,
        APIC_ICR_LOW,
        APIC_ICR_HIGH,
    ] {
        assert_eq!(apic.mmio_read(offset, 0), 0, "{offset:#x}");
    }
    assert_eq!(apic.mmio_read(APIC_TIMER_DIVIDE, 0), 0);
    assert_eq!(apic.next_event_ns(), None);
    assert_eq!(apic.pending(), None);
    let ap = LocalApic::new(LocalApicConfig {
        bsp: false,
        ..config(1)
    });
    assert_eq!(ap.apic_base(), 0xfee0_0000 | BASE_EN);
}

#[test]
fn linux_setup_local_apic_register_protocol() {
    let mut apic = linux_apic(100);
    assert!(apic.software_enabled());
    assert_eq!(apic.mmio_read(APIC_SVR, 200), 0x1ff);
    assert_eq!(apic.mmio_read(APIC_LDR, 200), 0x0100_0000);
    assert_eq!(apic.mmio_read(APIC_DFR, 200), 0xffff_ffff);
    assert_eq!(apic.mmio_read(APIC_TPR, 200), 0x10);
    assert_eq!(apic.mmio_read(APIC_PPR, 200), 0x10);
    assert_eq!(apic.mmio_read(APIC_LVT_LINT0, 200), 0x0001_0700);
    assert_eq!(apic.mmio_read(APIC_LVT_LINT1, 200), 0x0000_0400);
    assert_eq!(apic.mmio_read(APIC_LVT_ERROR, 200), 0xfe);
    assert_eq!(apic.mmio_read(APIC_ESR, 200), 0);
    // Vectors 16-31 are blocked by TPR 0x10; 0x20 and up get through.
    apic.accept(&msg(0x1f, false));
    assert_eq!(apic.pending(), None);
    apic.accept(&msg(0x20, false));
    take_fixed(&mut apic, 0x20, 300);
    assert!(
        apic.take_outputs().is_empty(),
        "edge EOI broadcasts nothing"
    );
}

#[test]
fn eoi_of_level_and_edge_interrupts() {
    let mut apic = linux_apic(0);
    apic.accept(&msg(0x41, true));
    apic.accept(&msg(0x42, false));
    assert_eq!(apic.tmr()[2], 1 << 1);
    assert_eq!(apic.acknowledge(), Some(0x42));
    assert_eq!(apic.eoi(), None, "edge: no broadcast");
    assert_eq!(apic.acknowledge(), Some(0x41));
    assert_eq!(apic.mmio_read(APIC_TMR + 2 * REG_STRIDE, 0), 1 << 1);
    apic.mmio_write(APIC_EOI, 0, 0);
    assert_eq!(apic.take_outputs(), vec![ApicOutput::EoiBroadcast(0x41)]);
    assert_eq!(apic.isr(), [0; 8]);
    // An edge interrupt on the same vector clears its TMR bit.
    apic.accept(&msg(0x41, false));
    assert_eq!(apic.tmr(), [0; 8]);
    // EOI with nothing in service does nothing.
    apic.mmio_write(APIC_EOI, 0, 0);
    assert!(apic.take_outputs().is_empty());
}

#[test]
fn priority_classes_against_tpr_and_ppr() {
    let mut apic = linux_apic(0);
    apic.set_tpr(0x50);
    apic.accept(&msg(0x5f, false));
    assert_eq!(apic.pending(), None, "class 5 is not above TPR class 5");
    assert_eq!(apic.mmio_read(APIC_PPR, 0), 0x50);
    apic.accept(&msg(0x60, false));
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0x60)));
    assert_eq!(apic.acknowledge(), Some(0x60));
    assert_eq!(apic.ppr(), 0x60, "ISR class above TPR");
    apic.mmio_write(APIC_TPR, 0x7a, 0);
    assert_eq!(
        apic.mmio_read(APIC_PPR, 0),
        0x7a,
        "TPR above ISR: all of TPR"
    );
    apic.mmio_write(APIC_TPR, 0x00, 0);
    apic.eoi();
    assert_eq!(apic.ppr(), 0);
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0x5f)));
}

#[test]
fn isr_nesting() {
    let mut apic = linux_apic(0);
    apic.set_tpr(0);
    apic.accept(&msg(0x40, false));
    assert_eq!(apic.acknowledge(), Some(0x40));
    apic.accept(&msg(0x45, false));
    assert_eq!(apic.pending(), None, "same class as in service");
    apic.accept(&msg(0x80, false));
    assert_eq!(apic.acknowledge(), Some(0x80), "a higher class nests");
    assert_eq!(apic.mmio_read(APIC_ISR + 2 * REG_STRIDE, 0), 1);
    assert_eq!(apic.mmio_read(APIC_ISR + 4 * REG_STRIDE, 0), 1);
    apic.mmio_write(APIC_EOI, 0, 0);
    assert_eq!(
        apic.isr()[4],
        0,
        "EOI retires the highest in-service vector"
    );
    assert_eq!(apic.pending(), None, "0x40 still in service");
    apic.mmio_write(APIC_EOI, 0, 0);
    assert_eq!(apic.acknowledge(), Some(0x45));
}

#[test]
fn spurious_vector_when_nothing_qualifies_at_acknowledge() {
    let mut apic = linux_apic(0);
    apic.accept(&msg(0x55, false));
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0x55)));
    apic.set_tpr(0x60);
    assert_eq!(apic.acknowledge(), Some(0xff));
    assert_eq!(apic.isr(), [0; 8], "the spurious vector is not in service");
    assert_eq!(apic.irr()[2], 1 << 21, "0x55 stays requested");
}

#[test]
fn esr_is_latched_by_writes_and_raises_the_error_lvt() {
    let mut apic = linux_apic(0);
    assert_eq!(apic.mmio_read(0x040, 0), 0, "reserved register reads 0");
    assert_eq!(
        apic.mmio_read(APIC_ESR, 0),
        0,
        "not visible before an ESR write"
    );
    assert_eq!(
        apic.pending(),
        Some(PendingInterrupt::Fixed(0xfe)),
        "error interrupt"
    );
    take_fixed(&mut apic, ERROR_APIC_VECTOR, 0);
    // The bit is already set: another error of the same kind raises no new interrupt.
    apic.mmio_write(APIC_LVT_CMCI, 1, 0);
    assert_eq!(apic.pending(), None);
    apic.mmio_write(APIC_ESR, 0, 0);
    assert_eq!(apic.mmio_read(APIC_ESR, 0), ESR_ILLEGAL_REGISTER);
    apic.mmio_write(APIC_ESR, 0, 0);
    assert_eq!(apic.mmio_read(APIC_ESR, 0), 0, "back-to-back writes clear");
    // Errors are recorded even with the error LVT masked.
    apic.mmio_write(APIC_LVT_ERROR, ERROR_APIC_VECTOR | LVT_MASKED, 0);
    apic.accept(&msg(0x05, false));
    assert_eq!(apic.pending(), None);
    assert_eq!(apic.irr(), [0; 8], "vectors 0-15 never reach IRR");
    apic.mmio_write(APIC_ESR, 0xdead, 0);
    assert_eq!(apic.mmio_read(APIC_ESR, 0), ESR_RECV_ILLEGAL_VECTOR);
}

#[test]
fn reserved_and_read_only_xapic_registers() {
    let mut apic = linux_apic(0);
    for offset in [
        0x000,
        0x010,
        0x040,
        0x070,
        APIC_LVT_CMCI,
        APIC_SELF_IPI,
        0x3c0,
    ] {
        apic.mmio_write(APIC_ESR, 0, 0);
        apic.mmio_write(APIC_ESR, 0, 0);
        assert_eq!(apic.mmio_read(offset, 0), 0);
        apic.mmio_write(APIC_ESR, 0, 0);
        assert_eq!(
            apic.mmio_read(APIC_ESR, 0),
            ESR_ILLEGAL_REGISTER,
            "{offset:#x}"
        );
    }
    // APR and RRD read 0 without an error; EOI reads 0.
    apic.mmio_write(APIC_ESR, 0, 0);
    for offset in [APIC_APR, APIC_RRD, APIC_EOI] {
        assert_eq!(apic.mmio_read(offset, 0), 0);
    }
    // Read-only registers ignore writes, without an error.
    let before = apic.clone();
    for offset in [APIC_ID, APIC_VERSION, APIC_PPR, APIC_ISR, APIC_IRR + 0x70] {
        apic.mmio_write(offset, 0xffff_ffff, 0);
    }
    apic.mmio_write(APIC_TIMER_CURRENT, 5, 0);
    assert_eq!(apic, before);
    apic.mmio_write(APIC_ESR, 0, 0);
    assert_eq!(apic.mmio_read(APIC_ESR, 0), 0);
    // Above 0x3ff: reads 0, no error.
    assert_eq!(apic.mmio_read(0x800, 0), 0);
    // Reserved bits of writable registers are dropped.
    apic.mmio_write(APIC_TPR, 0xffff_ff20, 0);
    assert_eq!(apic.mmio_read(APIC_TPR, 0), 0x20);
    apic.mmio_write(APIC_LDR, 0xffff_ffff, 0);
    assert_eq!(apic.mmio_read(APIC_LDR, 0), 0xff00_0000);
    apic.mmio_write(APIC_DFR, 0x0000_0000, 0);
    assert_eq!(apic.mmio_read(APIC_DFR, 0), 0x0fff_ffff);
    apic.mmio_write(APIC_SVR, 0xffff_ffff, 0);
    assert_eq!(apic.mmio_read(APIC_SVR, 0), 0x3ff);
    apic.mmio_write(APIC_LVT_LINT0, 0xffff_ffff, 0);
    assert_eq!(apic.mmio_read(APIC_LVT_LINT0, 0), 0x0001_a7ff);
    apic.mmio_write(APIC_ICR_HIGH, 0xffff_ffff, 0);
    assert_eq!(apic.mmio_read(APIC_ICR_HIGH, 0), 0xff00_0000);
}

#[test]
fn misaligned_access_and_pages_outside_xapic_mode() {
    let mut apic = linux_apic(0);
    apic.mmio_write(APIC_TPR + 4, 0x80, 0);
    assert_eq!(apic.tpr(), 0x10);
    assert_eq!(apic.mmio_read(APIC_TPR + 1, 0), 0);
    apic.mmio_write(APIC_ESR, 0, 0);
    assert_eq!(
        apic.mmio_read(APIC_ESR, 0),
        0,
        "no error for misaligned accesses"
    );
    assert_eq!(
        apic.mmio_read(0x1000 + APIC_TPR, 0),
        0x10,
        "offset bits 11:0"
    );
    apic.set_apic_base(apic.apic_base() | BASE_EXTD).unwrap();
    assert_eq!(apic.mmio_base(), None);
    assert_eq!(apic.mmio_read(APIC_TPR, 0), u32::MAX);
    apic.mmio_write(APIC_TPR, 0x90, 0);
    assert_eq!(apic.tpr(), 0x10);
}

#[test]
fn xapic_ipi_shorthands_and_destinations() {
    let mut apic = apic_with_id(2);
    linux_setup(&mut apic, 0, false);
    let icr = |apic: &mut LocalApic, low: u32| apic.mmio_write(APIC_ICR_LOW, low, 0);
    let ipi_shorthand = |apic: &mut LocalApic| match apic.take_outputs().as_slice() {
        [] => None,
        [ApicOutput::Ipi(ipi)] => Some((ipi.shorthand, ipi.sender_accepted)),
        other => panic!("{other:?}"),
    };
    icr(&mut apic, ICR_SHORTHAND_SELF << ICR_SHORTHAND_SHIFT | 0x50);
    assert_eq!(ipi_shorthand(&mut apic), None);
    take_fixed(&mut apic, 0x50, 0);
    icr(&mut apic, ICR_SHORTHAND_ALL << ICR_SHORTHAND_SHIFT | 0x51);
    assert_eq!(
        ipi_shorthand(&mut apic),
        Some((Shorthand::AllIncludingSelf, true))
    );
    take_fixed(&mut apic, 0x51, 0);
    icr(
        &mut apic,
        ICR_SHORTHAND_OTHERS << ICR_SHORTHAND_SHIFT | 0x52,
    );
    assert_eq!(
        ipi_shorthand(&mut apic),
        Some((Shorthand::AllExcludingSelf, false))
    );
    assert_eq!(apic.pending(), None);
    // native_apic_icr_write: destination first, then the low half sends.
    apic.mmio_write(APIC_ICR_HIGH, 2 << 24, 0);
    icr(&mut apic, 0x53);
    assert_eq!(ipi_shorthand(&mut apic), Some((Shorthand::None, true)));
    take_fixed(&mut apic, 0x53, 0);
    assert_eq!(
        apic.mmio_read(APIC_ICR_LOW, 0),
        0x53,
        "delivery status idle"
    );
    apic.mmio_write(APIC_ICR_HIGH, 5 << 24, 0);
    icr(&mut apic, 0x54);
    assert_eq!(ipi_shorthand(&mut apic), Some((Shorthand::None, false)));
    // Logical flat: LDR is 0x01.
    apic.mmio_write(APIC_ICR_HIGH, 0x03 << 24, 0);
    icr(&mut apic, ICR_LOGICAL | 0x55);
    take_fixed(&mut apic, 0x55, 0);
    apic.take_outputs();
    // NMI to self; INIT assert; INIT level de-assert is not sent at all.
    icr(
        &mut apic,
        ICR_SHORTHAND_SELF << ICR_SHORTHAND_SHIFT | DM_NMI << 8,
    );
    assert_eq!(apic.pending(), Some(PendingInterrupt::Nmi));
    assert!(apic.take_nmi());
    let init_deassert = ICR_SHORTHAND_ALL << ICR_SHORTHAND_SHIFT | ICR_LEVEL | DM_INIT << 8;
    icr(&mut apic, init_deassert);
    assert!(!apic.take_init());
    assert_eq!(ipi_shorthand(&mut apic), None);
    icr(&mut apic, init_deassert | ICR_ASSERT);
    assert!(apic.take_init());
    assert_eq!(
        ipi_shorthand(&mut apic),
        Some((Shorthand::AllIncludingSelf, true))
    );
    // A reserved delivery mode sends nothing.
    icr(
        &mut apic,
        ICR_SHORTHAND_ALL << ICR_SHORTHAND_SHIFT | 3 << 8 | 0x60,
    );
    assert_eq!(ipi_shorthand(&mut apic), None);
    assert_eq!(apic.pending(), None);
}

#[test]
fn destination_matching() {
    use DestinationMode::{Logical, Physical};
    let mut apic = apic_with_id(3);
    assert!(apic.matches_destination(Physical, 3));
    assert!(!apic.matches_destination(Physical, 4));
    assert!(apic.matches_destination(Physical, 0xff));
    assert!(apic.matches_destination(Physical, 0x103), "xAPIC: bits 7:0");
    // Flat: LDR 0x04.
    apic.mmio_write(APIC_LDR, 0x04 << 24, 0);
    assert!(apic.matches_destination(Logical, 0x0c));
    assert!(!apic.matches_destination(Logical, 0x03));
    assert!(!apic.matches_destination(Logical, 0x00));
    // Cluster: cluster 2, member bit 0.
    apic.mmio_write(APIC_DFR, DFR_MODEL_CLUSTER, 0);
    apic.mmio_write(APIC_LDR, 0x21 << 24, 0);
    assert!(apic.matches_destination(Logical, 0x23));
    assert!(!apic.matches_destination(Logical, 0x31));
    assert!(!apic.matches_destination(Logical, 0x22));
    assert!(apic.matches_destination(Logical, 0xff));
    // x2APIC: 32-bit physical, cluster-only logical.
    let apic = x2apic(0x23);
    assert!(apic.matches_destination(Physical, 0x23));
    assert!(!apic.matches_destination(Physical, 0x03));
    assert!(!apic.matches_destination(Physical, 0xff));
    assert!(apic.matches_destination(Physical, 0xffff_ffff));
    assert!(apic.matches_destination(Logical, 0x0002_0008));
    assert!(apic.matches_destination(Logical, 0x0002_ffff));
    assert!(!apic.matches_destination(Logical, 0x0002_0004));
    assert!(!apic.matches_destination(Logical, 0x0001_0008));
    // A disabled APIC matches nothing.
    let mut apic = apic_with_id(0);
    apic.set_apic_base(DEFAULT_BASE).unwrap();
    assert!(!apic.matches_destination(Physical, 0xff));
}

#[test]
fn lint0_extint_pass_through() {
    // Hardware-disabled: INTR goes straight to the CPU.
    let mut apic = apic_with_id(0);
    apic.set_apic_base(DEFAULT_BASE | BASE_BSP).unwrap();
    assert!(apic.passes_pic_through());
    apic.set_lint0(true);
    assert_eq!(apic.pending(), Some(PendingInterrupt::ExtInt));
    assert_eq!(apic.acknowledge(), None, "the 8259 supplies the vector");
    apic.set_lint0(false);
    assert_eq!(apic.pending(), None);
    // Enabled at power-on: LVT0 is masked, INTR does not get through.
    let mut apic = apic_with_id(0);
    apic.set_lint0(true);
    assert_eq!(apic.pending(), None);
    // Virtual wire (no IO-APIC: Linux leaves LVT0 ExtINT unmasked).
    linux_setup(&mut apic, 0, true);
    assert_eq!(apic.pending(), Some(PendingInterrupt::ExtInt));
    apic.accept(&msg(0x80, false));
    assert_eq!(
        apic.pending(),
        Some(PendingInterrupt::ExtInt),
        "ExtINT first"
    );
    assert_eq!(apic.acknowledge(), None);
    apic.set_lint0(false);
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0x80)));
    apic.mmio_write(APIC_LVT_LINT0, DM_EXTINT << 8 | LVT_MASKED, 0);
    apic.set_lint0(true);
    assert_eq!(apic.pending_maskable(), Some(PendingInterrupt::Fixed(0x80)));
    // An ExtINT message waits for one INTA cycle.
    apic.accept(&delivery(0, DeliveryMode::ExtInt));
    assert_eq!(apic.pending(), Some(PendingInterrupt::ExtInt));
    assert_eq!(apic.acknowledge(), None);
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0x80)));
}

#[test]
fn lint1_nmi_is_edge_triggered() {
    let mut apic = linux_apic(0);
    apic.accept(&msg(0x80, false));
    apic.set_lint1(true);
    assert_eq!(apic.pending(), Some(PendingInterrupt::Nmi));
    assert_eq!(apic.pending_maskable(), Some(PendingInterrupt::Fixed(0x80)));
    assert!(apic.take_nmi());
    assert!(!apic.take_nmi());
    apic.set_lint1(true);
    assert_eq!(
        apic.pending(),
        Some(PendingInterrupt::Fixed(0x80)),
        "no new edge"
    );
    apic.set_lint1(false);
    apic.set_lint1(true);
    assert!(apic.take_nmi());
    // Masked: the edge is lost.
    apic.mmio_write(APIC_LVT_LINT1, DM_NMI << 8 | LVT_MASKED, 0);
    apic.set_lint1(false);
    apic.set_lint1(true);
    assert!(!apic.take_nmi());
    // Active low: the falling edge asserts.
    apic.mmio_write(APIC_LVT_LINT1, DM_NMI << 8 | LVT_ACTIVE_LOW, 0);
    apic.set_lint1(false);
    assert!(apic.take_nmi());
    // Hardware-disabled: LINT1 is the NMI pin.
    let mut apic = apic_with_id(0);
    apic.set_apic_base(DEFAULT_BASE).unwrap();
    apic.set_lint1(true);
    assert_eq!(apic.pending(), Some(PendingInterrupt::Nmi));
}

#[test]
fn lint0_level_triggered_fixed_uses_remote_irr() {
    let mut apic = linux_apic(0);
    apic.mmio_write(APIC_LVT_LINT0, 0x30 | LVT_LEVEL | LVT_MASKED, 0);
    apic.set_lint0(true);
    assert_eq!(apic.pending(), None, "masked");
    apic.mmio_write(APIC_LVT_LINT0, 0x30 | LVT_LEVEL, 0);
    assert_eq!(
        apic.pending(),
        Some(PendingInterrupt::Fixed(0x30)),
        "unmasked"
    );
    assert_eq!(
        apic.mmio_read(APIC_LVT_LINT0, 0),
        0x30 | LVT_LEVEL | LVT_REMOTE_IRR
    );
    assert_eq!(apic.tmr()[1], 1 << 16);
    assert_eq!(apic.acknowledge(), Some(0x30));
    apic.set_lint0(true);
    assert_eq!(apic.pending(), None, "remote IRR holds it");
    // EOI while still asserted: requested again.
    assert_eq!(apic.eoi(), Some(0x30));
    assert_eq!(apic.acknowledge(), Some(0x30));
    apic.set_lint0(false);
    assert_eq!(apic.eoi(), Some(0x30));
    assert_eq!(apic.pending(), None);
    assert_eq!(apic.mmio_read(APIC_LVT_LINT0, 0) & LVT_REMOTE_IRR, 0);
    // Edge-triggered fixed: one interrupt per rising edge.
    apic.mmio_write(APIC_LVT_LINT0, 0x31, 0);
    apic.set_lint0(true);
    assert_eq!(apic.acknowledge(), Some(0x31));
    assert_eq!(apic.eoi(), None);
    apic.set_lint0(true);
    assert_eq!(apic.pending(), None);
}

#[test]
fn software_disable_masks_the_lvt() {
    let mut apic = linux_apic(0);
    apic.mmio_write(APIC_LVT_TIMER, 0x40, 0);
    apic.accept(&msg(0x70, false));
    let svr = apic.mmio_read(APIC_SVR, 0);
    apic.mmio_write(APIC_SVR, svr & !SVR_ENABLE, 0);
    for lvt in Lvt::ALL {
        assert_ne!(apic.mmio_read(lvt.offset(), 0) & LVT_MASKED, 0, "{lvt:?}");
    }
    apic.mmio_write(APIC_LVT_TIMER, 0x40, 0);
    assert_eq!(
        apic.mmio_read(APIC_LVT_TIMER, 0),
        0x40 | LVT_MASKED,
        "mask sticks"
    );
    // IRR is held and still dispensed; messages are still accepted.
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0x70)));
    apic.accept(&msg(0x71, false));
    assert_eq!(apic.irr()[3], 0b11 << 16);
    apic.mmio_write(APIC_SVR, svr, 0);
    assert_ne!(
        apic.mmio_read(APIC_LVT_TIMER, 0) & LVT_MASKED,
        0,
        "stays masked"
    );
    apic.mmio_write(APIC_LVT_TIMER, 0x40, 0);
    assert_eq!(apic.mmio_read(APIC_LVT_TIMER, 0), 0x40);
}

#[test]
fn cr8_is_the_tpr_priority_class() {
    let mut apic = linux_apic(0);
    apic.set_cr8(5).unwrap();
    assert_eq!(apic.tpr(), 0x50);
    assert_eq!(apic.mmio_read(APIC_TPR, 0), 0x50);
    apic.set_tpr(0x6f);
    assert_eq!(apic.cr8(), 6);
    assert_eq!(apic.set_cr8(16), Err(ApicFault::ReservedBits));
    assert_eq!(apic.tpr(), 0x6f);
}

#[test]
fn init_sipi_and_other_local_sources() {
    let mut apic = x2apic(7);
    apic.msr_write(0x80f, 0x1ff, 0).unwrap();
    apic.msr_write(0x808, 0x30, 0).unwrap();
    apic.accept(&delivery(0, DeliveryMode::Init));
    apic.accept(&delivery(0x9a, DeliveryMode::StartUp));
    apic.accept(&delivery(0, DeliveryMode::Smi));
    assert!(apic.take_init());
    assert_eq!(apic.take_sipi(), Some(0x9a));
    assert_eq!(apic.take_sipi(), None);
    apic.init_reset();
    assert_eq!(apic.mode(), ApicMode::X2Apic, "INIT keeps the mode");
    assert_eq!(apic.msr_read(0x802, 0), Ok(7));
    assert_eq!(apic.msr_read(0x808, 0), Ok(0));
    assert_eq!(apic.msr_read(0x80f, 0), Ok(0xff));
    // Performance-counter overflow through an NMI LVT (Linux's perf), thermal through a
    // fixed one; ExtINT is not allowed on either.
    apic.msr_write(0x80f, 0x1ff, 0).unwrap();
    apic.msr_write(0x834, u64::from(DM_NMI << 8), 0).unwrap();
    apic.signal_lvt(Lvt::PerfCounter);
    assert!(apic.take_nmi());
    apic.msr_write(0x833, 0xfa, 0).unwrap();
    apic.signal_lvt(Lvt::Thermal);
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0xfa)));
    apic.msr_write(0x833, u64::from(DM_EXTINT << 8), 0).unwrap();
    apic.signal_lvt(Lvt::Thermal);
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0xfa)));
}
