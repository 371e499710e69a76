//! IA32_APIC_BASE (modes, relocation, reserved bits, disable) and the x2APIC MSR rules.

use super::*;

#[test]
fn x2apic_gp_rules() {
    let mut apic = apic_with_id(0x23);
    assert_eq!(apic.msr_read(0x802, 0), Err(ApicFault::NotX2apic));
    assert_eq!(apic.msr_write(0x808, 0, 0), Err(ApicFault::NotX2apic));
    apic.set_apic_base(apic.apic_base() | BASE_EXTD).unwrap();
    assert_eq!(x2apic_msr(APIC_ICR_LOW), 0x830);
    assert_eq!(x2apic_msr(APIC_SELF_IPI), 0x83f);
    assert_eq!(apic.msr_read(0x802, 0), Ok(0x23));
    assert_eq!(apic.msr_read(0x803, 0), Ok(0x50014));
    assert_eq!(apic.msr_read(0x80d, 0), Ok(0x0002_0008), "LDR from the ID");
    let gp = |apic: &mut LocalApic, index: u32, value: Option<u64>| match value {
        Some(v) => apic.msr_write(index, v, 0).unwrap_err(),
        None => apic.msr_read(index, 0).unwrap_err(),
    };
    let reserved = [
        0x800, 0x801, 0x804, 0x809, 0x80c, 0x80e, 0x82f, 0x831, 0x840, 0x8ff,
    ];
    for index in reserved {
        assert_eq!(
            gp(&mut apic, index, None),
            ApicFault::ReservedRegister,
            "{index:#x}"
        );
        assert_eq!(gp(&mut apic, index, Some(0)), ApicFault::ReservedRegister);
    }
    assert_eq!(apic.msr_read(0x900, 0), Err(ApicFault::ReservedRegister));
    for index in [
        0x802, 0x803, 0x80a, 0x80d, 0x810, 0x817, 0x818, 0x827, 0x839,
    ] {
        assert_eq!(
            gp(&mut apic, index, Some(0)),
            ApicFault::ReadOnly,
            "{index:#x}"
        );
    }
    assert_eq!(gp(&mut apic, 0x80b, None), ApicFault::WriteOnly);
    assert_eq!(gp(&mut apic, 0x83f, None), ApicFault::WriteOnly);
    let before = apic.clone();
    let bad_bits = [
        (0x808, 0x100),   // TPR
        (0x808, 1 << 32), // only the ICR is 64 bits wide
        (0x80b, 1),       // EOI
        (0x80f, 1 << 12), // SVR: no EOI-broadcast suppression
        (0x828, 1),       // ESR
        (0x830, 1 << 13), // ICR
        (0x830, 1 << 16),
        (0x830, 1 << 20),
        (0x832, 1 << 19), // LVT timer
        (0x835, 1 << 17), // LVT LINT0
        (0x837, 0x700),   // LVT error has no delivery mode
        (0x83e, 1 << 2),  // divide configuration
        (0x83f, 0x100),   // SELF IPI
    ];
    for (index, value) in bad_bits {
        assert_eq!(
            gp(&mut apic, index, Some(value)),
            ApicFault::ReservedBits,
            "{index:#x}"
        );
    }
    assert_eq!(apic, before, "a faulting WRMSR changes nothing");
    // Read-only bits of an LVT may be written back as read.
    apic.msr_write(
        0x835,
        u64::from(LVT_MASKED | LVT_DELIVERY_STATUS | LVT_REMOTE_IRR),
        0,
    )
    .unwrap();
    apic.msr_write(0x80b, 0, 0).unwrap();
    apic.msr_write(0x828, 0, 0).unwrap();
    apic.msr_write(0x808, 0x20, 0).unwrap();
    assert_eq!(apic.msr_read(0x808, 0), Ok(0x20));
    assert_eq!(apic.msr_read(0x80a, 0), Ok(0x20));
    // TSC-deadline mode is a reserved bit without CPUID support.
    let mut plain = LocalApic::new(LocalApicConfig {
        tsc_deadline: false,
        ..config(1)
    });
    plain.set_apic_base(plain.apic_base() | BASE_EXTD).unwrap();
    let deadline = u64::from(LVT_TIMER_TSC_DEADLINE);
    assert_eq!(
        plain.msr_write(0x832, deadline, 0),
        Err(ApicFault::ReservedBits)
    );
}

#[test]
fn x2apic_icr_is_one_msr_and_self_ipi() {
    let mut apic = x2apic(0x23);
    apic.msr_write(0x80f, 0x1ff, 0).unwrap();
    // Another APIC: nothing here, one IPI out.
    apic.msr_write(0x830, 3 << 32 | 0x40, 0).unwrap();
    assert_eq!(apic.irr(), [0; 8]);
    let expected = InterruptMessage {
        destination: 3,
        ..msg(0x40, false)
    };
    assert_eq!(
        apic.take_outputs(),
        vec![ApicOutput::Ipi(Ipi {
            message: expected,
            shorthand: Shorthand::None,
            sender_accepted: false,
        })]
    );
    // Physical destination = own ID.
    apic.msr_write(0x830, 0x23 << 32 | 0x41, 0).unwrap();
    assert_eq!(apic.msr_read(0x830, 0), Ok(0x23 << 32 | 0x41));
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0x41)));
    // Logical (cluster 2, member 3).
    let logical = u64::from(ICR_LOGICAL) | 0x42;
    apic.msr_write(0x830, 0x0002_0008 << 32 | logical, 0)
        .unwrap();
    assert_eq!(apic.irr()[2], 1 << 1 | 1 << 2);
    // The delivery-status bit is ignored, not a fault.
    apic.msr_write(0x830, 0x23 << 32 | u64::from(LVT_DELIVERY_STATUS) | 0x43, 0)
        .unwrap();
    assert_eq!(apic.msr_read(0x830, 0), Ok(0x23 << 32 | 0x43));
    apic.take_outputs();
    // SELF IPI: a fixed edge interrupt to this APIC only.
    apic.msr_write(0x83f, 0x50, 0).unwrap();
    assert!(apic.take_outputs().is_empty());
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0x50)));
    assert_eq!(apic.tmr(), [0; 8]);
    // An illegal vector: send and receive errors, no IRR bit.
    apic.msr_write(0x83f, 0x0f, 0).unwrap();
    apic.msr_write(0x828, 0, 0).unwrap();
    let both = ESR_SEND_ILLEGAL_VECTOR | ESR_RECV_ILLEGAL_VECTOR;
    assert_eq!(apic.msr_read(0x828, 0), Ok(u64::from(both)));
}

#[test]
fn apic_base_mode_transitions() {
    let mut apic = apic_with_id(0x23);
    let base = apic.apic_base();
    let xapic = base & !BASE_BSP;
    let x2 = xapic | BASE_EXTD;
    let disabled = xapic & !BASE_EN;
    let invalid = disabled | BASE_EXTD;
    assert_eq!(
        apic.set_apic_base(invalid),
        Err(ApicFault::IllegalTransition)
    );
    apic.set_apic_base(x2).unwrap();
    assert_eq!(apic.mode(), ApicMode::X2Apic);
    assert_eq!(apic.apic_base(), base | BASE_EXTD, "BSP is kept");
    assert_eq!(apic.set_apic_base(xapic), Err(ApicFault::IllegalTransition));
    assert_eq!(
        apic.set_apic_base(invalid),
        Err(ApicFault::IllegalTransition)
    );
    apic.set_apic_base(disabled).unwrap();
    assert_eq!(apic.mode(), ApicMode::Disabled);
    assert!(apic.passes_pic_through());
    assert_eq!(apic.set_apic_base(x2), Err(ApicFault::IllegalTransition));
    apic.set_apic_base(xapic).unwrap();
    assert_eq!(apic.mode(), ApicMode::XApic);
    assert_eq!(apic.mmio_read(APIC_ID, 0), 0x23 << 24, "the ID survives");
    // Writing the same mode again is fine (relocation aside, nothing changes).
    apic.set_apic_base(xapic).unwrap();
    assert_eq!(apic.apic_base(), base);
}

#[test]
fn apic_base_reserved_bits() {
    let mut apic = apic_with_id(0);
    let base = apic.apic_base();
    for bit in [0, 7, 9, 40, 63] {
        assert_eq!(
            apic.set_apic_base(base | 1 << bit),
            Err(ApicFault::ReservedBits),
            "bit {bit}"
        );
    }
    apic.set_apic_base(base | 1 << 39).unwrap();
    assert_eq!(apic.mmio_base(), Some(0x80_fee0_0000));
    let mut no_x2 = LocalApic::new(LocalApicConfig {
        x2apic: false,
        ..config(0)
    });
    let base = no_x2.apic_base();
    assert_eq!(
        no_x2.set_apic_base(base | BASE_EXTD),
        Err(ApicFault::ReservedBits)
    );
}

#[test]
fn relocation_of_the_mmio_page() {
    let mut apic = linux_apic(0);
    apic.set_apic_base(0xfed0_0000 | BASE_EN).unwrap();
    assert_eq!(apic.mmio_base(), Some(0xfed0_0000));
    assert_eq!(apic.apic_base(), 0xfed0_0000 | BASE_EN | BASE_BSP);
    assert_eq!(
        apic.mmio_read(APIC_TPR, 0),
        0x10,
        "relocation keeps the state"
    );
    apic.set_apic_base(0xfed0_0000).unwrap();
    assert_eq!(apic.mmio_base(), None);
    apic.set_apic_base(0xfee0_0000 | BASE_EN | BASE_EXTD)
        .unwrap_err();
    apic.set_apic_base(0xfee0_0000 | BASE_EN).unwrap();
    apic.set_apic_base(0xfee0_0000 | BASE_EN | BASE_EXTD)
        .unwrap();
    assert_eq!(apic.mmio_base(), None, "x2APIC mode decodes no page");
}

#[test]
fn hardware_disable_resets_the_registers() {
    let t = 0;
    let mut apic = linux_apic(t);
    apic.mmio_write(APIC_LVT_TIMER, 0x40 | LVT_TIMER_PERIODIC, t);
    apic.mmio_write(APIC_TIMER_INITIAL, 100, t);
    apic.accept(&msg(0x50, false));
    let base = apic.apic_base();
    apic.set_apic_base(base & !BASE_EN).unwrap();
    assert_eq!(apic.next_event_ns(), None, "the timer stops");
    assert_eq!(apic.pending(), None);
    apic.accept(&msg(0x60, false));
    apic.advance(1000);
    apic.set_apic_base(base).unwrap();
    assert_eq!(apic, apic_with_id(0), "back to the power-on state");
}
