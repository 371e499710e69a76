//! The hand-over of a system instruction: these semantics compute its memory operand's
//! address and RFLAGS, and `Helper::System` (both tiers' one path to `crate::system`) does
//! the rest on the CPU state.

use super::flagops::read_rflags;
use super::*;
use iced_x86::OpKind;

/// A system instruction: its memory operand's address and RFLAGS are computed here, the rest
/// is [`Helper::System`]'s, which returns where execution continues.
#[inline(never)]
pub(super) fn system<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let has_memory = (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory);
    let addr = if has_memory && super::classify::is_vex_vector(insn) {
        // The VEX path checks each access itself: a masked move touches only the selected
        // elements, so an unselected non-canonical stack address is no #SS.
        effective_address(b)
    } else if has_memory {
        access_address(b)?
    } else {
        b.c(0)
    };
    let flags = read_rflags(b);
    let has_memory = b.c(has_memory as u64);
    let next = b.call(Helper::System, [addr, flags, has_memory])?;
    // A system instruction may change the mode, paging, interrupt or debug state: compiled
    // code leaves through the dispatcher, which looks the next block up afresh.
    b.flow(Flow::Jump(next), None);
    Ok(())
}
