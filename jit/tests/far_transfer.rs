//! Far RET in every engine tier: execution continues at the popped RIP (not after the RETF),
//! with the popped CS loaded and RSP past the frame.

mod common;

use common::*;
use iced_x86::code_asm::*;

#[test]
fn far_return_continues_at_the_popped_target() {
    let r = run_all(
        |k| {
            let mut target = k.create_label();
            k.mov(rax, KERNEL_CS as u64)?;
            k.push(rax)?;
            k.lea(rax, ptr(target))?;
            k.push(rax)?;
            k.mov(rcx, rsp)?;
            k.mov(ebx, 1)?;
            // RETFQ (REX.W CB).
            k.db(&[0x48, 0xcb])?;
            k.mov(ebx, 2)?;
            k.set_label(&mut target)?;
            report(k, rbx)?;
            k.sub(rcx, rsp)?;
            report(k, rcx)?;
            stop(k)
        },
        |_| Ok(()),
        |_| {},
    );
    // 1: the instruction after RETF did not run; -16: RETF popped RIP and CS.
    assert_eq!(r.reports, vec![1, (-16i64) as u64]);
    assert!(r.events.is_empty(), "{:#x?}", r.events);
}
