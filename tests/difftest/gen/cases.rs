//! Entry points for single-instruction cases: `n` cases of one form, each retried until the
//! form generates, encodes and accesses only the regions.

use super::super::rng::Rng;
use super::control::gen_control;
use super::ctx::{Ctx, GenOptions};
use super::forms::is_control;
use super::insn::gen_insn;
use super::layout::CODE_PAGE;
use iced_x86::Code;
use krr_jit::snippet::{Snippet, UserState};

/// `n` random cases for `code`: snippets of this one instruction (control transfers get a
/// small fixed sequence around them) with their initial states.
pub fn cases_for(code: Code, rng: &mut Rng, n: usize) -> Vec<(Snippet, UserState)> {
    cases_for_with(code, rng, n, &GenOptions::default())
}

pub fn cases_for_with(
    code: Code,
    rng: &mut Rng,
    n: usize,
    opts: &GenOptions,
) -> Vec<(Snippet, UserState)> {
    (0..n).map(|_| single_case(code, rng, opts)).collect()
}

/// Attempts per case or block before giving up.
pub(super) const MAX_ATTEMPTS: usize = 500;

fn single_case(code: Code, rng: &mut Rng, opts: &GenOptions) -> (Snippet, UserState) {
    for _ in 0..MAX_ATTEMPTS {
        let mut ctx = Ctx::new(rng, false);
        ctx.fault_pending = rng.below(opts.fault_one_in.max(1)) == 0;
        let code_addr = pick_code_addr(rng);
        let bytes = if is_control(code.mnemonic()) {
            gen_control(code, &mut ctx, rng, code_addr)
        } else {
            gen_insn(code, &mut ctx, rng, code_addr, opts).map(|(b, _)| b)
        };
        if let Some(bytes) = bytes {
            return ctx.into_snippet(code_addr, bytes);
        }
    }
    panic!("could not generate a valid case for {code:?}");
}

/// Where the code starts: the page start, a random offset, or close enough to the end of the
/// page that the code straddles into the next one.
pub(super) fn pick_code_addr(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => CODE_PAGE,
        // Close to the end of the page: the code often straddles into the next page.
        1 => CODE_PAGE + 0x1000 - 1 - rng.below(12),
        _ => CODE_PAGE + rng.below(0xf00),
    }
}
