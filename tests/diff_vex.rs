//! The VEX vector forms in the differential harness (tests/diff_cpu.rs runs them with every
//! other covered form, in all four tiers, comparing YMM registers): this checks that every
//! 64-bit-mode VEX form of AVX, AVX2, FMA3, F16C and the VEX forms of SSE..SSE4.2, AES-NI
//! and PCLMULQDQ that this host executes is covered, but the gathers (VSIB operands,
//! checked against the host in jit/tests/avx.rs).
//! `KRR_DIFF_VERBOSE` lists the forms not covered, with the reason.

mod difftest;

use difftest::gen;

#[test]
fn vex_forms_are_covered() {
    let (mut gathers, mut host, mut unexpected) = (0, 0, Vec::new());
    for (code, why) in gen::uncovered_vex() {
        if why.starts_with("VSIB gather") {
            gathers += 1;
        } else if why == "not supported by this CPU" {
            host += 1;
        } else {
            unexpected.push(format!("{code:?}: {why}"));
        }
        if std::env::var_os("KRR_DIFF_VERBOSE").is_some() {
            println!("not covered: {code:?}: {why}");
        }
    }
    let covered = gen::covered_vex().len();
    println!(
        "VEX vector forms covered: {covered}; not covered: {gathers} gathers (jit/tests/avx.rs), \
         {host} missing on this host (AVX-VNNI, VAES, ...), {} others",
        unexpected.len()
    );
    assert!(unexpected.is_empty(), "not covered: {unexpected:#?}");
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        assert_eq!(gathers, 16, "the VEX gathers");
        assert!(covered >= 600, "only {covered} VEX forms covered");
    }
}
