//! The named models, `--cpuid` dumps, and the feature table's guarantees.

use super::*;
use krr_runtime::arch::cr4;

/// The CPUID of a QEMU 7.2 TCG guest with `-cpu Broadwell` (tests/cpu_models.rs says how it
/// was taken).
const QEMU_BROADWELL: &str = include_str!("testdata/qemu-7.2-tcg-broadwell.cpuid");

fn names(t: &CpuidTable) -> Vec<&'static str> {
    features::reported(t).iter().map(|f| f.name).collect()
}

fn masked(m: &CpuModel, why: Masked) -> Vec<&'static str> {
    m.masked
        .iter()
        .filter(|x| x.1 == why)
        .map(|x| x.0)
        .collect()
}

#[test]
fn no_model_reports_a_feature_krr_does_not_model() {
    for name in MODEL_NAMES {
        let m = CpuModel::parse(name).unwrap();
        for f in features::reported(&m.cpuid) {
            assert_eq!(f.support, Support::Modelled, "{name}: {}", f.name);
        }
        assert!(host_lacks(&m.cpuid).is_empty(), "{name}");
        m.check_host().unwrap();
        // Leaf 1 EBX: APIC ID 0; no HTT, no hypervisor bit.
        let [_, ebx, ecx, edx] = m.cpuid.lookup(1, 0);
        assert_eq!(ebx >> 24, 0, "{name}");
        assert_eq!(edx & 1 << 28, 0, "{name}");
        assert_eq!(ecx & 1 << 31, 0, "{name}");
    }
}

#[test]
fn broadwell_is_qemu_72_tcg_broadwell_with_krrs_masking() {
    let m = CpuModel::parse("Broadwell").unwrap();
    assert_eq!(
        describe(&m.cpuid)[0],
        "GenuineIntel family 6 model 61 (0x3d) stepping 2, \"Intel Core Processor (Broadwell)\""
    );
    assert_eq!(m.cpuid.lookup(1, 0)[0], 0x0003_06d2);
    assert_eq!(
        names(&m.cpuid),
        [
            "fpu",
            "de",
            "pse",
            "tsc",
            "msr",
            "pae",
            "cx8",
            "apic",
            "sep",
            "mtrr",
            "pge",
            "cmov",
            "pat",
            "pse36",
            "clflush",
            "mmx",
            "fxsr",
            "sse",
            "sse2",
            "sse3",
            "pclmulqdq",
            "ssse3",
            "cx16",
            "sse4.1",
            "sse4.2",
            "movbe",
            "popcnt",
            "aes",
            "xsave",
            "rdrand",
            "arat",
            "fsgsbase",
            "bmi1",
            "smep",
            "bmi2",
            "erms",
            "adx",
            "smap",
            "xsaveopt",
            "lahf-lm",
            "abm",
            "syscall",
            "nx",
            "rdtscp",
            "lm"
        ]
    );
    // FMA and F16C go with AVX, which KRR hides.
    assert!(masked(&m, Masked::NotYet).is_empty());
    assert_eq!(
        masked(&m, Masked::Krr),
        ["mca", "mce", "avx", "fma", "f16c", "avx2"]
    );
    assert!(masked(&m, Masked::Unmodelled).is_empty());
    assert!(masked(&m, Masked::Tcg).contains(&"x2apic"));
    // Everything QEMU's TCG offered, less the masked, is what the model reports: the dump of
    // a QEMU 7.2 guest under -cpu Broadwell with those bits cleared loads to the same features.
    let dump = dump::table(&clear(
        QEMU_BROADWELL,
        &["mca", "mce", "avx", "avx2", "fma", "f16c"],
    ))
    .unwrap();
    assert_eq!(names(&dump), names(&m.cpuid));
    assert_eq!(describe(&dump), describe(&m.cpuid));
    // CR4: no PCIDE (no PCID), no MCE; OSXSAVE, SMEP, SMAP, FSGSBASE allowed.
    let c = m.cpuid.cr4_supported();
    assert_eq!(c & (cr4::PCIDE | cr4::MCE | cr4::VME | cr4::UMIP), 0);
    assert_eq!(c & cr4::OSXSAVE, cr4::OSXSAVE);
}

#[test]
fn icelake_client_is_qemu_70_tcg_icelake_client_with_krrs_masking() {
    let m = CpuModel::parse("icelake-client").unwrap();
    assert_eq!(
        describe(&m.cpuid)[0],
        "GenuineIntel family 6 model 126 (0x7e) stepping 0, \"Intel Core Processor (Icelake)\""
    );
    let bw = CpuModel::parse("broadwell").unwrap();
    let mut want = names(&bw.cpuid);
    want.insert(want.iter().position(|&n| n == "smap").unwrap() + 1, "umip");
    assert_eq!(names(&m.cpuid), want);
    assert_eq!(masked(&m, Masked::Unmodelled), ["pku", "xgetbv1"]);
    assert_eq!(masked(&m, Masked::Krr), ["mca", "mce"]);
    assert!(masked(&m, Masked::Tcg).contains(&"avx512vbmi"));
    assert_eq!(m.cpuid.cr4_supported() & cr4::UMIP, cr4::UMIP);
}

#[test]
fn baseline_is_x86_64_v1() {
    let m = CpuModel::parse("baseline").unwrap();
    assert_eq!(
        names(&m.cpuid),
        [
            "fpu", "tsc", "msr", "pae", "cx8", "apic", "sep", "mtrr", "pge", "mca", "cmov", "pat",
            "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "arat", "syscall", "nx", "lm"
        ]
    );
    assert!(m.masked.is_empty());
    let c = m.cpuid.cr4_supported();
    assert_eq!(
        c & (cr4::PCIDE | cr4::OSXSAVE | cr4::SMEP | cr4::FSGSBASE),
        0
    );
    // Modifiers add what krr models.
    let m = CpuModel::parse("baseline,+cx16,+popcnt,-mca").unwrap();
    assert!(m.has("cx16") && m.has("popcnt") && !m.has("mca"));
}

/// `text` with the named features' bits cleared in its `cpuid -r` lines.
fn clear(text: &str, names: &[&str]) -> String {
    text.lines()
        .map(|l| match dump::parse(l).ok().and_then(|v| v.first().copied()) {
            Some((leaf, subleaf, mut r, _)) => {
                for n in names {
                    let f = features::find(n).unwrap();
                    if (f.leaf, f.subleaf) == (leaf, subleaf) {
                        r[f.reg.index()] &= !(1 << f.bit);
                    }
                }
                format!(
                    "   {leaf:#010x} {subleaf:#04x}: eax={:#010x} ebx={:#010x} ecx={:#010x} edx={:#010x}",
                    r[0], r[1], r[2], r[3]
                )
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_dump_with_features_krr_lacks_is_refused_with_their_names() {
    // QEMU 7.2's TCG Broadwell, AVX2 and FMA included: all modelled.
    let t = dump::table(QEMU_BROADWELL).unwrap();
    assert!(["avx", "avx2", "fma", "f16c"]
        .iter()
        .all(|n| features::reported(&t).iter().any(|f| f.name == *n)));
    // AVX-512F (leaf 7 EBX bit 16) is not.
    let with_avx512 = QEMU_BROADWELL.replace("ebx=0x001803a9", "ebx=0x001903a9");
    let e = dump::table(&with_avx512).unwrap_err();
    assert_eq!(
        e,
        "the dump advertises 1 feature(s) krr does not model: avx512f"
    );
    // An unnamed bit is named by position.
    let text = "CPU 0:\n 0x00000000 0x00: eax=0x00000001 ebx=0 ecx=0 edx=0\n";
    assert!(dump::table(text)
        .unwrap_err()
        .starts_with("line 2: expected"));
    let text = "0x00000000 0x00: eax=0x00000001 ebx=0x0 ecx=0x0 edx=0x0\n\
                0x00000001 0x00: eax=0x00000000 ebx=0x0 ecx=0x0 edx=0x00000401\n\
                0x80000000 0x00: eax=0x80000001 ebx=0x0 ecx=0x0 edx=0x0\n\
                0x80000001 0x00: eax=0x00000000 ebx=0x0 ecx=0x0 edx=0x0\n";
    assert_eq!(
        dump::table(text).unwrap_err(),
        "the dump advertises 1 feature(s) krr does not model: CPUID.01H:EDX[10]"
    );
}

#[test]
fn a_dump_keeps_its_identity_and_krr_sets_topology_xsave_and_control_bits() {
    let text = clear(
        QEMU_BROADWELL,
        &[
            "aes",
            "sse4.2",
            "sse4.1",
            "ssse3",
            "pclmulqdq",
            "sse3",
            "avx",
            "avx2",
            "fma",
            "f16c",
        ],
    );
    // A second CPU is ignored.
    let text = format!("{text}\nCPU 1:\n   garbage\n");
    let t = dump::table(&text).unwrap();
    // The dump's leaf 1 has HTT 0 and the hypervisor bit 1 (QEMU sets it): krr clears it.
    assert_eq!(t.lookup(1, 0)[2] & 1 << 31, 0);
    assert_eq!(t.lookup(0, 0)[0], 0xd);
    assert!(has_feature(&t, features::find("mce").unwrap()));
    // Leaf 0xD is krr's XSAVE (x87|SSE, 576 bytes), not the dump's (x87|SSE|AVX, 832).
    assert_eq!(t.lookup(0xd, 0), [3, 576, 576, 0]);
    assert_eq!(t.lookup(0xd, 1), [1, 0, 0, 0]);
    // One CPU: leaf 0xB SMT and core levels of one logical processor each.
    assert_eq!(t.lookup(0xb, 0), [0, 1, 0x100, 0]);
    assert_eq!(t.lookup(0xb, 1), [0, 1, 0x201, 0]);
    assert_eq!(t.lookup(0xb, 2), [0; 4]);
    // Cache leaves are dropped.
    assert_eq!(t.lookup(4, 0), [0; 4]);
    assert_eq!(t.lookup(2, 0), [0; 4]);
    let m = CpuModel::from_dump_file(std::path::Path::new("/nonexistent.cpuid")).unwrap_err();
    assert!(m.starts_with("/nonexistent.cpuid: "), "{m}");
}

#[test]
fn bad_dumps_name_the_line() {
    for (text, want) in [
        ("CPU 0:\n\n  0x1 0x00 eax=0x0 ebx=0x0 ecx=0x0 edx=0x0\n", "line 3: expected"),
        ("0x0 0x00: eax=0x0 ebx=0x0 ecx=0x0\n", "line 1: expected"),
        ("0x0 0x00: eax=0xzz ebx=0x0 ecx=0x0 edx=0x0\n", "line 1: expected"),
        ("0x0 0x00: eax=0x0 ebx=0x0 ecx=0x0 edx=0x0 extra\n", "line 1: expected"),
        (
            "0x0 0x00: eax=0x0 ebx=0x0 ecx=0x0 edx=0x0\n0x0 0x00: eax=0x0 ebx=0x0 ecx=0x0 edx=0x0\n",
            "line 2: leaf 0x0 subleaf 0x0 given twice",
        ),
        ("0x0 0x00: eax=0x1 ebx=0x0 ecx=0x0 edx=0x0\n", "no line for leaf 0x00000001"),
        ("", "no line for leaf 0x00000000"),
    ] {
        let e = dump::table(text).unwrap_err();
        assert!(e.starts_with(want), "{text:?}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn help_lists_every_model_and_what_it_masks() {
    let h = help();
    for name in MODEL_NAMES {
        assert!(
            h.contains(&format!("\n{name}: ")) || h.contains(&format!(":\n{name}: ")),
            "{name}"
        );
    }
    assert!(
        h.contains("masked (KRR hides): mca mce avx fma f16c avx2"),
        "{h}"
    );
    assert!(!h.contains("not yet modelled"), "{h}");
}
