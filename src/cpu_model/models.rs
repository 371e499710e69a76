//! The named CPU models besides `max`: `baseline`, `broadwell` and `icelake-client`. Each is a
//! signature, a brand string and a feature list; [`build`] turns one into a CPUID table with
//! krr's own leaves (XSAVE sizes, one-CPU topology, address sizes), keeping only the features
//! krr models and saying which it masked and why.

use super::features::{self, Support};
use krr_runtime::cpuid::{CpuidEntry, CpuidTable};

/// A named model as its source defines it.
pub struct NamedModel {
    pub name: &'static str,
    /// Where the definition comes from (one line, for `--cpu help`).
    pub source: &'static str,
    pub vendor: &'static [u8; 12],
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub brand: &'static str,
    /// The features the definition lists.
    pub features: &'static [&'static str],
    /// Those QEMU's TCG does not offer (so the model under `qemu -accel tcg` lacks them).
    pub tcg_lacks: &'static [&'static str],
}

/// What KRR's KVM hides from the recorded guest whatever the model (the KRR paper's
/// artifact, `arch/x86/kvm/cpuid.c` and `vmx.c`): x2APIC, PCID, MCE/MCA, XSAVES/XSAVEC, and
/// with `rr_disable_avx` AVX, AVX2, AVX-512 and SHA-NI (QEMU 7.0's TCG has no AVX).
pub const KRR_HIDES: &[&str] = &[
    "x2apic",
    "pcid",
    "mce",
    "mca",
    "xsaves",
    "xsavec",
    "avx",
    "avx2",
    "avx512f",
    "avx512dq",
    "avx512cd",
    "avx512bw",
    "avx512vl",
    "avx512ifma",
    "avx512vbmi",
    "avx512vbmi2",
    "avx512vnni",
    "avx512bitalg",
    "avx512-vpopcntdq",
    "sha-ni",
];

pub const NAMED: &[NamedModel] = &[
    NamedModel {
        name: "baseline",
        source: "x86-64 v1 (what every Debian x86-64 kernel boots on) plus ARAT (krr's APIC timer never stops)",
        vendor: b"KrrKrrKrrKrr",
        family: 6,
        model: 0x55,
        stepping: 4,
        brand: "krr baseline x86-64 CPU",
        features: &[
            "fpu", "tsc", "msr", "pae", "cx8", "apic", "sep", "mtrr", "pge", "mca", "cmov", "pat",
            "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "syscall", "nx", "lm", "arat",
        ],
        tcg_lacks: &[],
    },
    NamedModel {
        name: "broadwell",
        source: "QEMU 7.2 Broadwell(-v1), target/i386/cpu.c; TCG's filtering measured in a guest under QEMU 7.2",
        vendor: b"GenuineIntel",
        family: 6,
        model: 61,
        stepping: 2,
        brand: "Intel Core Processor (Broadwell)",
        features: &[
            // FEAT_1_EDX
            "vme", "sse2", "sse", "fxsr", "mmx", "clflush", "pse36", "pat", "cmov", "mca", "pge",
            "mtrr", "sep", "apic", "cx8", "mce", "pae", "msr", "tsc", "pse", "de", "fpu",
            // FEAT_1_ECX
            "avx", "xsave", "aes", "popcnt", "x2apic", "sse4.2", "sse4.1", "cx16", "ssse3",
            "pclmulqdq", "sse3", "tsc-deadline", "fma", "movbe", "pcid", "f16c", "rdrand",
            // FEAT_8000_0001_EDX / ECX
            "lm", "rdtscp", "nx", "syscall", "abm", "lahf-lm", "3dnowprefetch",
            // FEAT_7_0_EBX
            "fsgsbase", "bmi1", "hle", "avx2", "smep", "bmi2", "erms", "invpcid", "rtm",
            "rdseed", "adx", "smap",
            // FEAT_XSAVE, FEAT_6_EAX
            "xsaveopt", "arat",
        ],
        // QEMU 7.2 -accel tcg -cpu Broadwell: "TCG doesn't support requested feature" for
        // pcid x2apic tsc-deadline hle invpcid rtm rdseed 3dnowprefetch; the guest's CPUID
        // also lacks vme (TCG_FEATURES has no VME).
        tcg_lacks: &[
            "vme", "pcid", "x2apic", "tsc-deadline", "hle", "invpcid", "rtm", "rdseed",
            "3dnowprefetch",
        ],
    },
    NamedModel {
        name: "icelake-client",
        source: "QEMU 7.0 Icelake-Client(-v1) (removed in 7.1), target/i386/cpu.c, filtered by QEMU 7.0's TCG_*_FEATURES",
        vendor: b"GenuineIntel",
        family: 6,
        model: 126,
        stepping: 0,
        brand: "Intel Core Processor (Icelake)",
        features: &[
            // FEAT_1_EDX
            "vme", "sse2", "sse", "fxsr", "mmx", "clflush", "pse36", "pat", "cmov", "mca", "pge",
            "mtrr", "sep", "apic", "cx8", "mce", "pae", "msr", "tsc", "pse", "de", "fpu",
            // FEAT_1_ECX
            "avx", "xsave", "aes", "popcnt", "x2apic", "sse4.2", "sse4.1", "cx16", "ssse3",
            "pclmulqdq", "sse3", "tsc-deadline", "fma", "movbe", "pcid", "f16c", "rdrand",
            // FEAT_8000_0001_EDX / ECX, FEAT_8000_0008_EBX
            "lm", "rdtscp", "nx", "syscall", "abm", "lahf-lm", "3dnowprefetch", "wbnoinvd",
            // FEAT_7_0_EBX
            "fsgsbase", "bmi1", "hle", "avx2", "smep", "bmi2", "erms", "invpcid", "rtm",
            "rdseed", "adx", "smap",
            // FEAT_7_0_ECX
            "avx512vbmi", "umip", "pku", "avx512vbmi2", "gfni", "vaes", "vpclmulqdq",
            "avx512vnni", "avx512bitalg", "avx512-vpopcntdq",
            // FEAT_7_0_EDX
            "spec-ctrl", "ssbd",
            // FEAT_XSAVE, FEAT_6_EAX
            "xsaveopt", "xsavec", "xgetbv1", "arat",
        ],
        // QEMU 7.0's TCG_FEATURES (no VME), TCG_EXT_FEATURES (no AVX, FMA, F16C, x2APIC,
        // PCID, TSC-deadline), TCG_EXT3_FEATURES (no 3DNowPrefetch), TCG_7_0_EBX_FEATURES
        // (no HLE, AVX2, INVPCID, RTM, RDSEED), TCG_7_0_ECX_FEATURES (UMIP PKU LA57 PKS only),
        // TCG_7_0_EDX_FEATURES (0), TCG_XSAVE_FEATURES (XSAVEOPT XGETBV1), and no WBNOINVD.
        tcg_lacks: &[
            "vme", "avx", "fma", "f16c", "x2apic", "pcid", "tsc-deadline", "3dnowprefetch",
            "hle", "avx2", "invpcid", "rtm", "rdseed", "avx512vbmi", "avx512vbmi2", "gfni",
            "vaes", "vpclmulqdq", "avx512vnni", "avx512bitalg", "avx512-vpopcntdq", "spec-ctrl",
            "ssbd", "xsavec", "wbnoinvd",
        ],
    },
];

/// Why a listed feature is not in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Masked {
    /// QEMU's TCG does not offer it.
    Tcg,
    /// KRR's KVM hides it from recorded guests.
    Krr,
    /// krr does not model it.
    Unmodelled,
    /// krr does not model it yet (see the `NotYet` features).
    NotYet,
}

impl Masked {
    pub fn label(self) -> &'static str {
        match self {
            Masked::Tcg => "QEMU TCG lacks",
            Masked::Krr => "KRR hides",
            Masked::Unmodelled => "krr does not model",
            Masked::NotYet => "not yet modelled",
        }
    }
}

/// Leaf 1 EAX of a family/model/stepping (SDM CPUID, "Version Information").
pub fn signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (fam, ext_fam) = if family >= 0xf {
        (0xf, family - 0xf)
    } else {
        (family, 0)
    };
    ext_fam << 20 | (model >> 4) << 16 | fam << 8 | (model & 0xf) << 4 | stepping
}

/// (family, model, stepping) of a leaf 1 EAX.
pub fn decode_signature(eax: u32) -> (u32, u32, u32) {
    let fam = eax >> 8 & 0xf;
    let mut model = eax >> 4 & 0xf;
    let family = if fam == 0xf {
        fam + (eax >> 20 & 0xff)
    } else {
        fam
    };
    if fam == 6 || fam == 0xf {
        model |= (eax >> 16 & 0xf) << 4;
    }
    (family, model, eax & 0xf)
}

fn words(s: &[u8]) -> [u32; 4] {
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The one-CPU topology of leaf 0xB (and 0x1F): SMT level, then core level, each with one
/// logical processor and x2APIC ID 0; subleaves from 2 on read as invalid levels (zeros).
pub fn topology_entries() -> [CpuidEntry; 2] {
    let e = |subleaf: u32, level_type: u32| CpuidEntry {
        leaf: 0xb,
        subleaf,
        eax: 0,
        ebx: 1,
        ecx: level_type << 8 | subleaf,
        edx: 0,
    };
    [e(0, 1), e(1, 2)]
}

/// The brand string leaves 0x80000002..4.
pub fn brand_entries(brand: &str) -> [CpuidEntry; 3] {
    let mut b = [0u8; 48];
    let n = brand.len().min(47);
    b[..n].copy_from_slice(&brand.as_bytes()[..n]);
    std::array::from_fn(|i| {
        let [eax, ebx, ecx, edx] = words(&b[16 * i..]);
        CpuidEntry {
            leaf: 0x8000_0002 + i as u32,
            subleaf: u32::MAX,
            eax,
            ebx,
            ecx,
            edx,
        }
    })
}

/// The model's CPUID table and the features it lists but does not get, with the reason.
pub fn build(m: &NamedModel) -> (CpuidTable, Vec<(&'static str, Masked)>) {
    let any = u32::MAX;
    // Feature words: (leaf, subleaf, [eax, ebx, ecx, edx]).
    let mut regs: Vec<(u32, u32, [u32; 4])> = features::FEATURE_WORDS
        .iter()
        .map(|&(l, s, _)| (l, s, [0; 4]))
        .collect();
    let mut masked = Vec::new();
    // FMA and F16C are VEX instructions: without AVX (XCR0 cannot enable AVX state) they go
    // too, for the same reason (as Linux's cpuid-deps does for FMA).
    let avx_masked = |masked: &Vec<(&str, Masked)>| {
        masked
            .iter()
            .find(|(n, _)| *n == "avx")
            .map(|&(_, why)| why)
    };
    for &name in m.features {
        let f = features::find(name).unwrap_or_else(|| panic!("model {}: feature {name}", m.name));
        let why = if m.tcg_lacks.contains(&name) {
            Some(Masked::Tcg)
        } else if let Some(why) = matches!(name, "fma" | "f16c")
            .then(|| avx_masked(&masked))
            .flatten()
        {
            Some(why)
        } else if KRR_HIDES.contains(&name) && m.name != "baseline" {
            Some(Masked::Krr)
        } else {
            match f.support {
                Support::Modelled => None,
                Support::NotYet => Some(Masked::NotYet),
                Support::No | Support::Controlled => Some(Masked::Unmodelled),
            }
        };
        match why {
            Some(w) => masked.push((name, w)),
            None => {
                let r = regs
                    .iter_mut()
                    .find(|(l, s, _)| *l == f.leaf && *s == f.subleaf)
                    .expect("a feature word");
                r.2[f.reg.index()] |= 1 << f.bit;
            }
        }
    }
    let reg = |leaf: u32, subleaf: u32| {
        regs.iter()
            .find(|(l, s, _)| *l == leaf && *s == subleaf)
            .map(|r| r.2)
            .unwrap_or_default()
    };
    let [vb, vd, vc, _] = words(&[&m.vendor[..], &[0; 4]].concat());
    let l1 = reg(1, 0);
    let e1 = reg(0x8000_0001, 0);
    let entry = |leaf: u32, subleaf: u32, [eax, ebx, ecx, edx]: [u32; 4]| CpuidEntry {
        leaf,
        subleaf,
        eax,
        ebx,
        ecx,
        edx,
    };
    let mut list = vec![
        entry(0, any, [0xd, vb, vc, vd]),
        // EBX: CLFLUSH line 8 x 8 bytes, APIC ID 0, no logical-processor count (no HTT).
        entry(
            1,
            any,
            [
                signature(m.family, m.model, m.stepping),
                0x800,
                l1[2],
                l1[3],
            ],
        ),
        entry(6, any, reg(6, 0)),
        entry(7, 0, reg(7, 0)),
    ];
    list.extend(topology_entries());
    list.extend(krr_runtime::cpuid::xsave_leaves(
        l1[2] & krr_runtime::cpuid::L1_ECX_AVX != 0,
        reg(0xd, 1)[0],
    ));
    list.push(entry(0x8000_0000, any, [0x8000_0008, 0, 0, 0]));
    list.push(entry(0x8000_0001, any, [0, 0, e1[2], e1[3]]));
    list.extend(brand_entries(m.brand));
    // 48-bit linear, 40-bit physical addresses (as `max`; QEMU's default phys-bits too).
    list.push(entry(
        0x8000_0008,
        any,
        [0x3028, reg(0x8000_0008, 0)[1], 0, 0],
    ));
    let t = CpuidTable::from_entries(&list).expect("a named model fits the table");
    (t, masked)
}
