//! Differential testing of the engine against the host CPU: random cases per instruction form
//! ([`gen`]), run natively under ptrace ([`native`]) and in the engine ([`engine`]), compared
//! modulo architecturally undefined results ([`compare`]).

// Not every test binary including this module uses every helper.
#![allow(dead_code)]

pub mod compare;
pub mod engine;
pub mod gen;
pub mod native;
pub mod rng;
pub mod x87;
