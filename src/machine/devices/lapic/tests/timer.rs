//! The timer as Linux programs it: calibration, periodic, one-shot, TSC deadline; exact
//! counts and expiries.

use super::*;

#[test]
fn linux_timer_calibration_then_periodic_then_one_shot() {
    let t0 = 1_000_000;
    let mut apic = LocalApic::new(LocalApicConfig {
        tsc_deadline: false,
        ..config(0)
    });
    linux_setup(&mut apic, t0, false);
    // calibrate_APIC_clock: masked periodic, maximum count, divide by 16.
    setup_lvtt(&mut apic, 0xffff_ffff, false, false, t0);
    assert_eq!(apic.mmio_read(APIC_LVT_TIMER, t0), 0x0003_00ec);
    assert_eq!(apic.mmio_read(APIC_TIMER_DIVIDE, t0), TDR_DIV_16);
    assert_eq!(apic.mmio_read(APIC_TIMER_INITIAL, t0), 0x0fff_ffff);
    let t1 = t0 + 1000;
    let tapic1 = apic.mmio_read(APIC_TIMER_CURRENT, t1);
    assert_eq!(tapic1, 0x0fff_ffff - 62, "1000 ns = 62 ticks of 16 ns");
    // LAPIC_CAL_LOOPS ticks of HZ = 250 later: 100 ms.
    let t2 = t1 + 100_000_000;
    let tapic2 = apic.mmio_read(APIC_TIMER_CURRENT, t2);
    let delta = tapic1 - tapic2;
    assert_eq!(delta, 6_250_000);
    let lapic_timer_period = delta * 16 / 25;
    assert_eq!(lapic_timer_period, 4_000_000, "one 4 ms jiffy at 1 GHz");
    assert_eq!(apic.irr(), [0; 8], "masked: no interrupt while calibrating");

    // lapic_timer_set_periodic.
    let t3 = t2 + 500;
    setup_lvtt(&mut apic, lapic_timer_period, false, true, t3);
    assert_eq!(apic.next_event_ns(), Some(t3 + 4_000_000));
    apic.advance(t3 + 3_999_999);
    assert_eq!(apic.pending(), None);
    apic.advance(t3 + 4_000_000);
    take_fixed(&mut apic, LOCAL_TIMER_VECTOR, t3 + 4_000_100);
    assert_eq!(apic.next_event_ns(), Some(t3 + 8_000_000));

    // lapic_timer_set_oneshot (no TSC deadline), then lapic_next_event(1000).
    let t4 = t3 + 5_000_000;
    setup_lvtt(&mut apic, lapic_timer_period, true, true, t4);
    assert_eq!(apic.mmio_read(APIC_LVT_TIMER, t4), LOCAL_TIMER_VECTOR);
    apic.mmio_write(APIC_TIMER_INITIAL, 1000, t4);
    assert_eq!(apic.next_event_ns(), Some(t4 + 16_000));
    apic.advance(t4 + 16_000);
    take_fixed(&mut apic, LOCAL_TIMER_VECTOR, t4 + 16_001);
    assert_eq!(apic.next_event_ns(), None, "one-shot: stops at zero");
    assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, t4 + 20_000), 0);

    // lapic_timer_shutdown.
    apic.mmio_write(APIC_TIMER_INITIAL, 500, t4 + 30_000);
    let v = apic.mmio_read(APIC_LVT_TIMER, t4 + 30_000);
    apic.mmio_write(
        APIC_LVT_TIMER,
        v | LVT_MASKED | LOCAL_TIMER_VECTOR,
        t4 + 30_000,
    );
    apic.mmio_write(APIC_TIMER_INITIAL, 0, t4 + 30_000);
    assert_eq!(apic.next_event_ns(), None);
}

#[test]
fn linux_tsc_deadline_timer() {
    let t = 50_000;
    let mut apic = linux_apic(t);
    setup_lvtt(&mut apic, 0, true, true, t);
    assert_eq!(apic.timer_mode(), TimerMode::TscDeadline);
    assert_eq!(apic.mmio_read(APIC_LVT_TIMER, t), 0x0004_00ec);
    // lapic_next_deadline: TSC + delta * TSC_DIVISOR.
    let deadline = t + 100 * 8;
    apic.tsc_deadline_write(deadline, t);
    assert_eq!(apic.tsc_deadline_read(), deadline);
    assert_eq!(apic.next_event_ns(), Some(deadline));
    // Initial-count writes are ignored and the current count reads 0.
    apic.mmio_write(APIC_TIMER_INITIAL, 1234, t);
    assert_eq!(apic.mmio_read(APIC_TIMER_INITIAL, t), 0);
    assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, t), 0);
    apic.advance(deadline - 1);
    assert_eq!(apic.pending(), None);
    apic.advance(deadline);
    assert_eq!(apic.tsc_deadline_read(), 0, "firing clears the deadline");
    assert_eq!(apic.next_event_ns(), None);
    take_fixed(&mut apic, LOCAL_TIMER_VECTOR, deadline + 10);
    // A deadline already reached fires at once.
    apic.tsc_deadline_write(deadline, deadline + 20);
    assert_eq!(apic.tsc_deadline_read(), 0);
    take_fixed(&mut apic, LOCAL_TIMER_VECTOR, deadline + 30);
    // Writing 0 disarms.
    apic.tsc_deadline_write(deadline + 1000, deadline + 40);
    apic.tsc_deadline_write(0, deadline + 50);
    assert_eq!(apic.next_event_ns(), None);
}

#[test]
fn tsc_deadline_outside_its_mode_and_mode_switches() {
    let t = 10_000;
    let mut apic = linux_apic(t);
    setup_lvtt(&mut apic, 16_000, false, true, t);
    // Periodic mode: the deadline MSR reads 0 and ignores writes.
    apic.tsc_deadline_write(t + 50, t);
    assert_eq!(apic.tsc_deadline_read(), 0);
    assert_eq!(apic.next_event_ns(), Some(t + 16_000));
    // Periodic -> one-shot keeps counting.
    apic.mmio_write(APIC_LVT_TIMER, LOCAL_TIMER_VECTOR, t + 100);
    assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, t + 160), 1000 - 10);
    assert_eq!(apic.next_event_ns(), Some(t + 16_000));
    // One-shot -> TSC deadline disarms the count.
    apic.mmio_write(
        APIC_LVT_TIMER,
        LOCAL_TIMER_VECTOR | LVT_TIMER_TSC_DEADLINE,
        t + 200,
    );
    assert_eq!(apic.next_event_ns(), None);
    apic.tsc_deadline_write(t + 5000, t + 300);
    // TSC deadline -> periodic disarms the deadline; the initial count stays 0.
    apic.mmio_write(
        APIC_LVT_TIMER,
        LOCAL_TIMER_VECTOR | LVT_TIMER_PERIODIC,
        t + 400,
    );
    assert_eq!(apic.next_event_ns(), None);
    assert_eq!(apic.mmio_read(APIC_TIMER_INITIAL, t + 400), 0);
    apic.mmio_write(
        APIC_LVT_TIMER,
        LOCAL_TIMER_VECTOR | LVT_TIMER_TSC_DEADLINE,
        t + 500,
    );
    assert_eq!(apic.tsc_deadline_read(), 0);
}

#[test]
fn current_count_at_exact_nanoseconds() {
    let mut apic = linux_apic(0);
    apic.mmio_write(APIC_LVT_TIMER, LOCAL_TIMER_VECTOR | LVT_MASKED, 0);
    let divides = [
        (TDR_DIV_1, 1u64),
        (0b0000, 2),
        (TDR_DIV_16, 16),
        (0b1010, 128),
    ];
    for (round, (divide, divisor)) in divides.into_iter().enumerate() {
        let t = 7 + round as u64 * 1_000_000;
        apic.mmio_write(APIC_TIMER_DIVIDE, divide, t);
        apic.mmio_write(APIC_TIMER_INITIAL, 100, t);
        let at = |ticks: u64| t + ticks * divisor;
        assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, at(0)), 100);
        assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, at(1) - 1), 100);
        assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, at(1)), 99);
        assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, at(99)), 1);
        assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, at(100) - 1), 1);
        assert_eq!(apic.next_event_ns(), Some(at(100)), "divide {divide:#06b}");
        assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, at(100)), 0);
    }
}

#[test]
fn periodic_timer_does_not_drift() {
    let t = 1000;
    let mut apic = linux_apic(0);
    apic.mmio_write(APIC_TIMER_DIVIDE, TDR_DIV_1, t);
    apic.mmio_write(APIC_LVT_TIMER, 0x40 | LVT_TIMER_PERIODIC, t);
    apic.mmio_write(APIC_TIMER_INITIAL, 100, t);
    // Late by 30 ns: the next expiry is still on the original grid.
    apic.advance(t + 130);
    take_fixed(&mut apic, 0x40, t + 131);
    assert_eq!(apic.next_event_ns(), Some(t + 200));
    assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, t + 130), 70);
    assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, t + 200), 100, "reloaded");
    // Three periods missed: one interrupt (one IRR bit), phase kept.
    apic.advance(t + 450);
    take_fixed(&mut apic, 0x40, t + 451);
    assert_eq!(apic.pending(), None);
    assert_eq!(apic.next_event_ns(), Some(t + 500));
    // Reads are exact at any nanosecond.
    assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, t + 1_234), 66);
}

#[test]
fn masked_timer_counts_without_interrupting() {
    let t = 0;
    let mut apic = linux_apic(t);
    apic.mmio_write(APIC_TIMER_DIVIDE, TDR_DIV_1, t);
    apic.mmio_write(APIC_LVT_TIMER, 0x40 | LVT_TIMER_PERIODIC | LVT_MASKED, t);
    apic.mmio_write(APIC_TIMER_INITIAL, 100, t);
    for period in 1..=3 {
        assert_eq!(apic.next_event_ns(), Some(period * 100));
        apic.advance(period * 100);
    }
    assert_eq!(apic.irr(), [0; 8]);
    apic.mmio_write(APIC_LVT_TIMER, 0x40 | LVT_TIMER_PERIODIC, 350);
    apic.advance(399);
    assert_eq!(apic.pending(), None);
    apic.advance(400);
    assert_eq!(apic.pending(), Some(PendingInterrupt::Fixed(0x40)));
    // A masked one-shot expires silently and stays expired.
    apic.mmio_write(APIC_LVT_TIMER, 0x41 | LVT_MASKED, 400);
    apic.mmio_write(APIC_TIMER_INITIAL, 10, 400);
    apic.advance(410);
    apic.mmio_write(APIC_LVT_TIMER, 0x41, 420);
    apic.advance(1000);
    assert_eq!(apic.next_event_ns(), None);
    assert_eq!(apic.irr()[2], 1 << 0, "only 0x40");
}

#[test]
fn divide_change_while_counting() {
    let mut apic = linux_apic(0);
    apic.mmio_write(APIC_TIMER_DIVIDE, TDR_DIV_1, 0);
    apic.mmio_write(APIC_LVT_TIMER, 0x40, 0);
    apic.mmio_write(APIC_TIMER_INITIAL, 100, 0);
    apic.mmio_write(APIC_TIMER_DIVIDE, TDR_DIV_16, 40);
    assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, 40), 60);
    assert_eq!(apic.mmio_read(APIC_TIMER_CURRENT, 56), 59);
    assert_eq!(apic.next_event_ns(), Some(40 + 60 * 16));
}
