//! The one table of the CPUID feature bits krr knows by name: what `--cpu +FEAT/-FEAT` may
//! name, what a named model lists, what a `--cpuid` dump is checked against and what `krr info`
//! prints. Each bit says whether krr models it.

use krr_runtime::cpuid::CpuidTable;

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    pub fn name(self) -> &'static str {
        match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whether krr models a feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// The engine and the machine implement it: a model may advertise it.
    Modelled,
    /// Being implemented: advertised by no model yet; a model that lists it gets it masked.
    NotYet,
    /// Not implemented: never advertised.
    No,
    /// krr sets this bit itself, whatever a model or dump says (OSXSAVE mirrors CR4.OSXSAVE;
    /// HTT and the hypervisor bit are always 0: one CPU, no hypervisor interface).
    Controlled,
}

/// One CPUID feature bit.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    /// QEMU's name (Linux's where QEMU has none).
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u32,
    pub support: Support,
    /// For a feature whose instructions krr executes with the host's own: does the host have
    /// them? (See [`super::host_lacks`].)
    pub host: Option<fn() -> bool>,
}

use Reg::{Eax, Ebx, Ecx, Edx};
use Support::{Controlled, Modelled, No};

const fn f(
    name: &'static str,
    leaf: u32,
    subleaf: u32,
    reg: Reg,
    bit: u32,
    support: Support,
) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
        support,
        host: None,
    }
}

/// A feature executed with the host's instructions.
const fn h(
    name: &'static str,
    leaf: u32,
    reg: Reg,
    bit: u32,
    support: Support,
    host: fn() -> bool,
) -> Feature {
    Feature {
        name,
        leaf,
        subleaf: 0,
        reg,
        bit,
        support,
        host: Some(host),
    }
}

const E1: u32 = 0x8000_0001;

/// The feature bits, by leaf and register. Bits not listed have no name: a dump that sets one
/// is refused as `CPUID.<leaf>H:<reg>[<bit>]`.
pub const FEATURES: &[Feature] = &[
    // ---- SSE3..SSE4.2, AES-NI and PCLMULQDQ: executed by the host (jit/src/helpers/
    // host_exec.rs), so the host must have them (the check beside each). ----
    h("sse3", 1, Ecx, 0, Modelled, || {
        is_x86_feature_detected!("sse3")
    }),
    h("pclmulqdq", 1, Ecx, 1, Modelled, || {
        is_x86_feature_detected!("pclmulqdq")
    }),
    h("ssse3", 1, Ecx, 9, Modelled, || {
        is_x86_feature_detected!("ssse3")
    }),
    h("sse4.1", 1, Ecx, 19, Modelled, || {
        is_x86_feature_detected!("sse4.1")
    }),
    h("sse4.2", 1, Ecx, 20, Modelled, || {
        is_x86_feature_detected!("sse4.2")
    }),
    h("aes", 1, Ecx, 25, Modelled, || {
        is_x86_feature_detected!("aes")
    }),
    // ---- CPUID.01H:EDX ----
    f("fpu", 1, 0, Edx, 0, Modelled),
    f("vme", 1, 0, Edx, 1, Modelled),
    f("de", 1, 0, Edx, 2, Modelled),
    f("pse", 1, 0, Edx, 3, Modelled),
    f("tsc", 1, 0, Edx, 4, Modelled),
    f("msr", 1, 0, Edx, 5, Modelled),
    f("pae", 1, 0, Edx, 6, Modelled),
    f("mce", 1, 0, Edx, 7, Modelled),
    f("cx8", 1, 0, Edx, 8, Modelled),
    f("apic", 1, 0, Edx, 9, Modelled),
    f("sep", 1, 0, Edx, 11, Modelled),
    f("mtrr", 1, 0, Edx, 12, Modelled),
    f("pge", 1, 0, Edx, 13, Modelled),
    f("mca", 1, 0, Edx, 14, Modelled),
    f("cmov", 1, 0, Edx, 15, Modelled),
    f("pat", 1, 0, Edx, 16, Modelled),
    f("pse36", 1, 0, Edx, 17, Modelled),
    f("pn", 1, 0, Edx, 18, No),
    f("clflush", 1, 0, Edx, 19, Modelled),
    f("ds", 1, 0, Edx, 21, No),
    f("acpi", 1, 0, Edx, 22, No),
    f("mmx", 1, 0, Edx, 23, Modelled),
    f("fxsr", 1, 0, Edx, 24, Modelled),
    f("sse", 1, 0, Edx, 25, Modelled),
    f("sse2", 1, 0, Edx, 26, Modelled),
    f("ss", 1, 0, Edx, 27, No),
    f("ht", 1, 0, Edx, 28, Controlled),
    f("tm", 1, 0, Edx, 29, No),
    f("ia64", 1, 0, Edx, 30, No),
    f("pbe", 1, 0, Edx, 31, No),
    // ---- CPUID.01H:ECX (SSE3.., above) ----
    f("dtes64", 1, 0, Ecx, 2, No),
    f("monitor", 1, 0, Ecx, 3, No),
    f("ds-cpl", 1, 0, Ecx, 4, No),
    f("vmx", 1, 0, Ecx, 5, No),
    f("smx", 1, 0, Ecx, 6, No),
    f("est", 1, 0, Ecx, 7, No),
    f("tm2", 1, 0, Ecx, 8, No),
    f("cid", 1, 0, Ecx, 10, No),
    f("sdbg", 1, 0, Ecx, 11, No),
    h("fma", 1, Ecx, 12, Modelled, || {
        is_x86_feature_detected!("fma")
    }),
    f("cx16", 1, 0, Ecx, 13, Modelled),
    f("xtpr", 1, 0, Ecx, 14, No),
    f("pdcm", 1, 0, Ecx, 15, No),
    f("pcid", 1, 0, Ecx, 17, Modelled),
    f("dca", 1, 0, Ecx, 18, No),
    // The machine's local APIC has the x2APIC (MSR) interface and the TSC-deadline timer.
    f("x2apic", 1, 0, Ecx, 21, Modelled),
    f("movbe", 1, 0, Ecx, 22, Modelled),
    f("popcnt", 1, 0, Ecx, 23, Modelled),
    f("tsc-deadline", 1, 0, Ecx, 24, Modelled),
    f("xsave", 1, 0, Ecx, 26, Modelled),
    f("osxsave", 1, 0, Ecx, 27, Controlled),
    // AVX, FMA, F16C and AVX2 run on the host (jit/src/system/avx.rs).
    h("avx", 1, Ecx, 28, Modelled, || {
        is_x86_feature_detected!("avx")
    }),
    h("f16c", 1, Ecx, 29, Modelled, || {
        is_x86_feature_detected!("f16c")
    }),
    // RDRAND/RDSEED take their values from the machine's bus (recorded, replayed).
    f("rdrand", 1, 0, Ecx, 30, Modelled),
    f("hypervisor", 1, 0, Ecx, 31, Controlled),
    // ---- CPUID.06H:EAX ----
    f("dts", 6, 0, Eax, 0, No),
    f("turbo", 6, 0, Eax, 1, No),
    // Always-running APIC timer: krr has no C-states.
    f("arat", 6, 0, Eax, 2, Modelled),
    f("pln", 6, 0, Eax, 4, No),
    f("ecmd", 6, 0, Eax, 5, No),
    f("pts", 6, 0, Eax, 6, No),
    f("hwp", 6, 0, Eax, 7, No),
    // ---- CPUID.(07H,0):EBX ----
    f("fsgsbase", 7, 0, Ebx, 0, Modelled),
    f("tsc-adjust", 7, 0, Ebx, 1, No),
    f("sgx", 7, 0, Ebx, 2, No),
    f("bmi1", 7, 0, Ebx, 3, Modelled),
    f("hle", 7, 0, Ebx, 4, No),
    h("avx2", 7, Ebx, 5, Modelled, || {
        is_x86_feature_detected!("avx2")
    }),
    f("fdp-excptn-only", 7, 0, Ebx, 6, No),
    f("smep", 7, 0, Ebx, 7, Modelled),
    f("bmi2", 7, 0, Ebx, 8, Modelled),
    // Enhanced REP MOVSB/STOSB: a performance hint; REP MOVSB/STOSB are modelled.
    f("erms", 7, 0, Ebx, 9, Modelled),
    f("invpcid", 7, 0, Ebx, 10, No),
    f("rtm", 7, 0, Ebx, 11, No),
    f("pqm", 7, 0, Ebx, 12, No),
    f("zero-fcs-fds", 7, 0, Ebx, 13, No),
    f("mpx", 7, 0, Ebx, 14, No),
    f("pqe", 7, 0, Ebx, 15, No),
    f("avx512f", 7, 0, Ebx, 16, No),
    f("avx512dq", 7, 0, Ebx, 17, No),
    f("rdseed", 7, 0, Ebx, 18, Modelled),
    f("adx", 7, 0, Ebx, 19, Modelled),
    f("smap", 7, 0, Ebx, 20, Modelled),
    f("avx512ifma", 7, 0, Ebx, 21, No),
    f("pcommit", 7, 0, Ebx, 22, No),
    f("clflushopt", 7, 0, Ebx, 23, Modelled),
    f("clwb", 7, 0, Ebx, 24, Modelled),
    f("intel-pt", 7, 0, Ebx, 25, No),
    f("avx512pf", 7, 0, Ebx, 26, No),
    f("avx512er", 7, 0, Ebx, 27, No),
    f("avx512cd", 7, 0, Ebx, 28, No),
    f("sha-ni", 7, 0, Ebx, 29, No),
    f("avx512bw", 7, 0, Ebx, 30, No),
    f("avx512vl", 7, 0, Ebx, 31, No),
    // ---- CPUID.(07H,0):ECX ----
    f("avx512vbmi", 7, 0, Ecx, 1, No),
    // SGDT/SIDT/SLDT/SMSW/STR at CPL > 0 are #GP(0) under CR4.UMIP.
    f("umip", 7, 0, Ecx, 2, Modelled),
    f("pku", 7, 0, Ecx, 3, No),
    f("ospke", 7, 0, Ecx, 4, No),
    f("waitpkg", 7, 0, Ecx, 5, No),
    f("avx512vbmi2", 7, 0, Ecx, 6, No),
    f("cet-ss", 7, 0, Ecx, 7, No),
    f("gfni", 7, 0, Ecx, 8, No),
    f("vaes", 7, 0, Ecx, 9, No),
    f("vpclmulqdq", 7, 0, Ecx, 10, No),
    f("avx512vnni", 7, 0, Ecx, 11, No),
    f("avx512bitalg", 7, 0, Ecx, 12, No),
    f("tme", 7, 0, Ecx, 13, No),
    f("avx512-vpopcntdq", 7, 0, Ecx, 14, No),
    f("la57", 7, 0, Ecx, 16, No),
    f("rdpid", 7, 0, Ecx, 22, Modelled),
    f("bus-lock-detect", 7, 0, Ecx, 24, No),
    f("cldemote", 7, 0, Ecx, 25, No),
    f("movdiri", 7, 0, Ecx, 27, No),
    f("movdir64b", 7, 0, Ecx, 28, No),
    f("enqcmd", 7, 0, Ecx, 29, No),
    f("sgxlc", 7, 0, Ecx, 30, No),
    f("pks", 7, 0, Ecx, 31, No),
    // ---- CPUID.(07H,0):EDX ----
    f("avx512-4vnniw", 7, 0, Edx, 2, No),
    f("avx512-4fmaps", 7, 0, Edx, 3, No),
    f("fsrm", 7, 0, Edx, 4, Modelled),
    f("avx512-vp2intersect", 7, 0, Edx, 8, No),
    f("md-clear", 7, 0, Edx, 10, No),
    f("serialize", 7, 0, Edx, 14, No),
    f("hybrid", 7, 0, Edx, 15, No),
    f("tsx-ldtrk", 7, 0, Edx, 16, No),
    f("pconfig", 7, 0, Edx, 18, No),
    f("arch-lbr", 7, 0, Edx, 19, No),
    f("ibt", 7, 0, Edx, 20, No),
    f("amx-bf16", 7, 0, Edx, 22, No),
    f("avx512-fp16", 7, 0, Edx, 23, No),
    f("amx-tile", 7, 0, Edx, 24, No),
    f("amx-int8", 7, 0, Edx, 25, No),
    f("spec-ctrl", 7, 0, Edx, 26, No),
    f("stibp", 7, 0, Edx, 27, No),
    f("flush-l1d", 7, 0, Edx, 28, No),
    f("arch-capabilities", 7, 0, Edx, 29, No),
    f("core-capability", 7, 0, Edx, 30, No),
    f("ssbd", 7, 0, Edx, 31, No),
    // ---- CPUID.(07H,1):EAX ----
    f("avx-vnni", 7, 1, Eax, 4, No),
    f("avx512-bf16", 7, 1, Eax, 5, No),
    f("fzrm", 7, 1, Eax, 10, No),
    f("fsrs", 7, 1, Eax, 11, No),
    f("fsrc", 7, 1, Eax, 12, No),
    // ---- CPUID.(0DH,1):EAX ----
    // XSAVEOPT saves like XSAVE (the architecture allows it).
    f("xsaveopt", 0xd, 1, Eax, 0, Modelled),
    f("xsavec", 0xd, 1, Eax, 1, Modelled),
    f("xgetbv1", 0xd, 1, Eax, 2, No),
    // XSAVES/XRSTORS with IA32_XSS: no supervisor component is offered (IA32_XSS stays 0).
    f("xsaves", 0xd, 1, Eax, 3, Modelled),
    f("xfd", 0xd, 1, Eax, 4, No),
    // ---- CPUID.80000001H:ECX ----
    f("lahf-lm", E1, 0, Ecx, 0, Modelled),
    f("cmp-legacy", E1, 0, Ecx, 1, No),
    f("svm", E1, 0, Ecx, 2, No),
    f("extapic", E1, 0, Ecx, 3, No),
    f("cr8legacy", E1, 0, Ecx, 4, No),
    f("abm", E1, 0, Ecx, 5, Modelled),
    f("sse4a", E1, 0, Ecx, 6, No),
    f("misalignsse", E1, 0, Ecx, 7, No),
    f("3dnowprefetch", E1, 0, Ecx, 8, No),
    f("osvw", E1, 0, Ecx, 9, No),
    f("ibs", E1, 0, Ecx, 10, No),
    f("xop", E1, 0, Ecx, 11, No),
    f("skinit", E1, 0, Ecx, 12, No),
    f("wdt", E1, 0, Ecx, 13, No),
    f("lwp", E1, 0, Ecx, 15, No),
    f("fma4", E1, 0, Ecx, 16, No),
    f("tce", E1, 0, Ecx, 17, No),
    f("nodeid-msr", E1, 0, Ecx, 19, No),
    f("tbm", E1, 0, Ecx, 21, No),
    f("topoext", E1, 0, Ecx, 22, No),
    f("perfctr-core", E1, 0, Ecx, 23, No),
    f("perfctr-nb", E1, 0, Ecx, 24, No),
    // ---- CPUID.80000001H:EDX ----
    f("syscall", E1, 0, Edx, 11, Modelled),
    f("nx", E1, 0, Edx, 20, Modelled),
    f("mmxext", E1, 0, Edx, 22, No),
    f("fxsr-opt", E1, 0, Edx, 25, No),
    f("pdpe1gb", E1, 0, Edx, 26, No),
    f("rdtscp", E1, 0, Edx, 27, Modelled),
    f("lm", E1, 0, Edx, 29, Modelled),
    f("3dnowext", E1, 0, Edx, 30, No),
    f("3dnow", E1, 0, Edx, 31, No),
    // ---- CPUID.80000007H:EDX, CPUID.80000008H:EBX ----
    f("invtsc", 0x8000_0007, 0, Edx, 8, No),
    f("clzero", 0x8000_0008, 0, Ebx, 0, No),
    f("xsaveerptr", 0x8000_0008, 0, Ebx, 2, No),
    f("wbnoinvd", 0x8000_0008, 0, Ebx, 9, No),
];

/// The registers holding feature bits, (leaf, subleaf, register): a `--cpuid` dump's bits in
/// them are checked bit by bit against [`FEATURES`]; every other leaf carries no features.
pub const FEATURE_WORDS: &[(u32, u32, Reg)] = &[
    (1, 0, Edx),
    (1, 0, Ecx),
    (6, 0, Eax),
    (7, 0, Ebx),
    (7, 0, Ecx),
    (7, 0, Edx),
    (7, 1, Eax),
    (0xd, 1, Eax),
    (E1, 0, Ecx),
    (E1, 0, Edx),
    (0x8000_0007, 0, Edx),
    (0x8000_0008, 0, Ebx),
];

pub fn find(name: &str) -> Option<&'static Feature> {
    FEATURES.iter().find(|f| f.name == name)
}

/// The feature at a bit, if it has a name.
pub fn at(leaf: u32, subleaf: u32, reg: Reg, bit: u32) -> Option<&'static Feature> {
    FEATURES
        .iter()
        .find(|f| f.leaf == leaf && f.subleaf == subleaf && f.reg == reg && f.bit == bit)
}

/// `CPUID.07H.1:EAX[4]`-style name of a bit.
pub fn bit_name(leaf: u32, subleaf: u32, reg: Reg, bit: u32) -> String {
    if subleaf == 0 {
        format!("CPUID.{leaf:02X}H:{}[{bit}]", reg.name())
    } else {
        format!("CPUID.{leaf:02X}H.{subleaf}:{}[{bit}]", reg.name())
    }
}

/// Does table `t` report feature `f`?
pub fn has_feature(t: &CpuidTable, f: &Feature) -> bool {
    t.lookup(f.leaf, f.subleaf)[f.reg.index()] & (1 << f.bit) != 0
}

/// The named features `t` reports, by feature word ([`FEATURE_WORDS`]) and bit (OSXSAVE left out: it follows CR4).
pub fn reported(t: &CpuidTable) -> Vec<&'static Feature> {
    let mut v: Vec<_> = FEATURES
        .iter()
        .filter(|f| f.support != Controlled && has_feature(t, f))
        .collect();
    v.sort_by_key(|f| {
        let word = FEATURE_WORDS
            .iter()
            .position(|&w| w == (f.leaf, f.subleaf, f.reg));
        (word, f.bit)
    });
    v
}
