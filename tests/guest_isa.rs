//! User programs in the Debian guest that use every extension krr's CPU models print the same
//! lines as on this host. `tests/guest/isa/isa.c` (SSE, SSE2, SSE3, SSSE3, SSE4.1, SSE4.2,
//! POPCNT, AES-NI, PCLMULQDQ, MOVBE, BMI1, BMI2, ADX, LZCNT, CMPXCHG16B, FSGSBASE, XLAT, REP
//! MOVS/STOS, glibc's string routines, unmasked SIMD exceptions, unaligned, page-crossing and
//! faulting memory operands, RIP-relative operands after an immediate, xmm8..xmm15, prefix
//! edge cases) runs fixed-seed pseudo-random inputs, with floating-point edge values and random
//! MXCSR rounding/DAZ/FTZ, and prints one `NAME: <hash> n=<cases>` line per instruction.
//! `tests/guest/isa/build.sh` compiles it statically with the host's gcc and appends an archive
//! with it to the test initramfs; the guest's init runs two copies of it at once (context
//! switches between two SIMD users) between
//! `KRR-ISA-START` and `KRR-ISA-END` after the usual workload, printing the first's lines and
//! `concurrent: same` when the second's are equal. The host's output is the expectation,
//! compared exactly. After them `/isa/run` runs `tests/guest/isa/compat32.S`, a static 32-bit
//! program (compatibility mode under Debian's 64-bit kernel), whose lines are compared with
//! the same binary run on this host; it also runs alone under an Intel and an AMD vendor
//! string, so that Linux's vDSO enters the kernel with SYSENTER and with SYSCALL.
//!
//! Each form runs 600 times (the unaligned ones 150): under the default hot threshold (1000)
//! their code stays in the interpreter, so `krr run` uses `--hot-threshold 2` (all of it
//! compiled) and the recording the default.

mod guest_boot;

use guest_boot::*;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workload and the two copies of the ISA programs run about 4e9 instructions.
const LIMIT: &str = "12000000000";

/// Lines that must be there (one or more per extension), so a program that lost a section
/// cannot pass by printing less on both sides.
const GROUPS: &[&str] = &[
    // SSE
    "addps",
    "mulss",
    "divps",
    "sqrtss",
    "rcpps",
    "rsqrtss",
    "minps",
    "maxss",
    "cmpps",
    "cmpss",
    "comiss",
    "ucomiss",
    "cvtsi2ss",
    "cvtss2si",
    "cvttss2si",
    "shufps",
    "unpckhps",
    "movmskps",
    "movss",
    "movhlps",
    "movlps",
    "movhps",
    // SSE2 floating point
    "addpd",
    "divsd",
    "sqrtpd",
    "minsd",
    "maxpd",
    "cmppd",
    "cmpsd",
    "comisd",
    "ucomisd",
    "cvtsi2sd",
    "cvtsd2si",
    "cvttsd2si",
    "cvtps2pd",
    "cvtpd2ps",
    "cvtss2sd",
    "cvtsd2ss",
    "cvtdq2ps",
    "cvtps2dq",
    "cvttps2dq",
    "cvtdq2pd",
    "cvtpd2dq",
    "cvttpd2dq",
    "shufpd",
    "movmskpd",
    // SSE2 integer
    "paddsb",
    "paddusw",
    "psubq",
    "pmulhuw",
    "pmuludq",
    "pmaddwd",
    "psadbw",
    "pavgb",
    "pavgw",
    "pminub",
    "pmaxsw",
    "pcmpgtd",
    "packsswb",
    "packuswb",
    "punpckhqdq",
    "psraw",
    "psrlq",
    "pslldq",
    "psrldq",
    "pshufd",
    "pshuflw",
    "pshufhw",
    "pmovmskb",
    "pinsrw",
    "movd",
    "movq",
    "maskmovdqu",
    // SSE3
    "addsubps",
    "addsubpd",
    "haddps",
    "hsubpd",
    "movsldup",
    "movshdup",
    "movddup",
    "lddqu",
    // SSSE3
    "pshufb",
    "palignr",
    "phaddw",
    "phaddd",
    "phaddsw",
    "phsubw",
    "pmaddubsw",
    "pmulhrsw",
    "psignb",
    "psignd",
    "pabsb",
    "pabsd",
    // SSE4.1
    "pblendvb",
    "blendvps",
    "blendvpd",
    "blendps",
    "pblendw",
    "pminsb",
    "pminsd",
    "pminuw",
    "pmaxud",
    "pmulld",
    "pmuldq",
    "ptest",
    "roundps",
    "roundss",
    "roundpd",
    "roundsd",
    "dpps",
    "dppd",
    "insertps",
    "extractps",
    "pmovzxbw",
    "pmovzxdq",
    "pmovsxbq",
    "pmovsxwd",
    "mpsadbw",
    "packusdw",
    "phminposuw",
    "pcmpeqq",
    "pextrb",
    "pextrw",
    "pextrd",
    "pextrq",
    "pinsrb",
    "pinsrd",
    "pinsrq",
    "movntdqa",
    // SSE4.2, POPCNT, MOVBE, AES-NI, PCLMULQDQ
    "pcmpestri",
    "pcmpestrm",
    "pcmpistri",
    "pcmpistrm",
    "pcmpgtq",
    "crc32",
    "popcnt",
    "movbe",
    "aesenc",
    "aesenclast",
    "aesdec",
    "aesdeclast",
    "aesimc",
    "aeskeygenassist",
    "pclmulqdq",
    // XLAT, string instructions, glibc, exceptions, memory operands
    "xlat",
    "rep_movsb",
    "rep_movsq",
    "rep_stosb",
    "rep_stosq",
    "memcpy",
    "memmove",
    "memset",
    "strlen",
    "memcmp",
    "memchr",
    "unmasked-divps",
    "unmasked-cvtsd2ss",
    "unmasked-roundps",
    "unmasked-comiss",
    "unaligned-movups",
    "unaligned-pcmpestri",
    "page-fault-movdqu",
    "unaligned-addps",
    "unaligned-movdqa",
    "unaligned-ldmxcsr",
    "rip-pcmpestri",
    "rip-pextrd",
    "rip-movbe",
    "high-blendvps",
    "high-pcmpestrm",
    "high-maskmovdqu",
    "prefix-addsd_f3f2",
    "prefix-lock_addps",
    "page-fault-rep_movsb",
    "page-fault-rep_stosb",
    "unaligned-movnti",
    // BMI1, BMI2, ADX, LZCNT, CMPXCHG16B, FSGSBASE
    "andn",
    "bextr",
    "blsr",
    "tzcnt",
    "lzcnt",
    "bzhi",
    "mulx",
    "pdep",
    "pext",
    "rorx",
    "shrx",
    "adcx",
    "adox",
    "cmpxchg16b",
    "gsbase",
    "fxsave",
    "x87",
    "x87-unmasked",
    // AVX, AVX2, FMA, F16C (intrinsics; `max` reports them when the host has them)
    "avx2",
    "fma",
    "f16c",
    "fs_addps",
    "gs_pcmpestri",
];

/// The lines the 32-bit program (`tests/guest/isa/compat32.S`, run after the ISA programs)
/// must print, so that it cannot pass by printing less on both sides.
const COMPAT32: &[&str] = &[
    "pushad",
    "push-sizes",
    "inc-dec",
    "daa",
    "das",
    "aaa",
    "aas",
    "aam",
    "aad",
    "aam7",
    "sweep-daa",
    "sweep-das",
    "sweep-aaa",
    "sweep-aas",
    "sweep-aam",
    "sweep-aad",
    "addr16",
    "xlat",
    "bound",
    "loop",
    "enter-leave",
    "strings",
    "vsyscall-getpid",
    "signal",
    "far-call-64",
];

/// What tests/guest/isa/build.sh built, once per test binary.
struct Built {
    /// The ISA program, native.
    isa: PathBuf,
    /// The test initramfs with the ISA programs and the 32-bit program.
    initrd: String,
    /// The 32-bit program, native.
    compat32: PathBuf,
    /// The test initramfs with only the 32-bit program.
    compat32_initrd: String,
}

fn build() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let (_, base) = guest();
        let out = Command::new("bash")
            .arg(root().join("tests/guest/isa/build.sh"))
            .arg(root().join("target/guest-isa"))
            .arg(&base)
            .output()
            .expect("running tests/guest/isa/build.sh");
        assert!(
            out.status.success(),
            "tests/guest/isa/build.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("paths are UTF-8");
        let mut lines = text.lines();
        let bin = PathBuf::from(lines.next().expect("binary path"));
        let initrd = lines.next().expect("initrd path").to_string();
        let compat32 = PathBuf::from(lines.next().expect("32-bit program path"));
        let compat32_initrd = lines.next().expect("32-bit initrd path").to_string();
        Built {
            isa: bin,
            initrd,
            compat32,
            compat32_initrd,
        }
    })
}

/// The programs' lines on this host, checked to hold every group of [`GROUPS`], the line
/// the guest's run script adds, and the 32-bit program's lines (this host's kernel must run
/// 32-bit programs, as Debian's does).
fn native_lines() -> Vec<String> {
    let out = Command::new(&build().isa)
        .output()
        .expect("running the ISA program");
    assert!(out.status.success(), "the ISA program failed natively");
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect();
    for group in GROUPS {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("{group}: "))),
            "no `{group}` line natively:\n{}",
            lines.join("\n")
        );
    }
    [
        lines,
        vec!["concurrent: same".to_string()],
        native_compat32_lines(),
    ]
    .concat()
}

/// The 32-bit program's lines on this host (whose kernel must run 32-bit programs, as
/// Debian's does), checked to hold every line of [`COMPAT32`].
fn native_compat32_lines() -> Vec<String> {
    let out = Command::new(&build().compat32)
        .output()
        .expect("running the 32-bit program natively (does this kernel have IA32 emulation?)");
    assert!(out.status.success(), "the 32-bit program failed natively");
    let compat: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect();
    for name in COMPAT32 {
        assert!(
            compat
                .iter()
                .any(|l| l.starts_with(&format!("compat32 {name} "))),
            "no `compat32 {name}` line natively:\n{}",
            compat.join("\n")
        );
    }
    compat
}

/// The guest's ISA lines equal the host's, line by line (the first difference named), and the
/// usual workload's results are unchanged.
fn check(console: &str, log: &str, native: &[String]) {
    assert_powered_off(log);
    assert_eq!(workload_lines(console), expected_results(), "{log}");
    let guest = marked_lines(console, "KRR-ISA-START", "KRR-ISA-END");
    let differing: Vec<String> = native
        .iter()
        .zip(&guest)
        .filter(|(n, g)| n != g)
        .map(|(n, g)| format!("host  {n}\nguest {g}"))
        .collect();
    assert!(
        differing.is_empty() && guest.len() == native.len(),
        "{} of {} lines differ ({} guest lines):\n{}",
        differing.len(),
        native.len(),
        guest.len(),
        differing.join("\n")
    );
}

#[test]
fn isa_programs_print_the_hosts_lines_under_krr_run_compiled() {
    let native = native_lines();
    let (kernel, _) = guest();
    let initrd = &build().initrd;
    let (console, log) = krr_ok_limited(
        &[
            "run",
            "--kernel",
            &kernel,
            "--initrd",
            initrd,
            "--hot-threshold",
            "2",
        ],
        &[],
        LIMIT,
    );
    check(&console, &log, &native);
}

#[test]
fn isa_programs_record_and_replay() {
    let native = native_lines();
    let (kernel, _) = guest();
    let initrd = &build().initrd;
    let dir = std::env::temp_dir().join(format!("krr-guest-isa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("isa.trace");
    let t = trace.to_str().unwrap();
    let (console, log) = krr_ok_limited(
        &["record", "--kernel", &kernel, "--initrd", initrd, "-o", t],
        &[],
        LIMIT,
    );
    check(&console, &log, &native);
    let (replayed, summary) = krr_ok(&["replay", t]);
    assert!(summary.contains("Verdict: matched"), "{summary}");
    assert_eq!(replayed, console, "the replayed console differs");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The 32-bit program alone under an Intel model (`--cpu broadwell`): Linux's vDSO then
/// enters the kernel with SYSENTER and returns with SYSRETL (under krr's own vendor string,
/// as in the tests above, it uses `int 0x80`).
#[test]
fn compat32_program_runs_under_an_intel_model() {
    let native = native_compat32_lines();
    let (kernel, _) = guest();
    let (console, log) = krr_ok(&[
        "run",
        "--kernel",
        &kernel,
        "--initrd",
        &build().compat32_initrd,
        "--cpu",
        "broadwell",
    ]);
    assert_powered_off(&log);
    assert_eq!(workload_lines(&console), expected_results(), "{log}");
    let guest = marked_lines(&console, "KRR-ISA-START", "KRR-ISA-END");
    assert_eq!(guest, native, "{console}");
}

/// QEMU's Broadwell CPUID dump (`src/cpu_model/testdata`) as an AMD CPU would report it: AMD's
/// vendor string in leaves 0 and 0x80000000, and without FMA, AVX, F16C and AVX2, which krr
/// does not model yet.
fn amd_variant(dump: &str) -> String {
    let intel = "ebx=0x756e6547 ecx=0x6c65746e edx=0x49656e69";
    let amd = "ebx=0x68747541 ecx=0x444d4163 edx=0x69746e65";
    let clear = |line: &str, reg: &str, mask: u32| -> String {
        let at = line.find(&format!("{reg}=0x")).expect("register field") + reg.len() + 3;
        let v = u32::from_str_radix(&line[at..at + 8], 16).expect("hex register");
        format!("{}{:08x}{}", &line[..at], v & !mask, &line[at + 8..])
    };
    dump.lines()
        .map(|l| {
            let l = l.replace(intel, amd);
            if l.trim_start().starts_with("0x00000001 0x00:") {
                clear(&l, "ecx", (1 << 12) | (1 << 28) | (1 << 29))
            } else if l.trim_start().starts_with("0x00000007 0x00:") {
                clear(&l, "ebx", 1 << 5)
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The 32-bit program alone under an AMD vendor string: Linux's vDSO then enters the kernel
/// with SYSCALL from compatibility mode (CSTAR) and returns with SYSRETL.
#[test]
fn compat32_program_runs_under_an_amd_vendor() {
    let native = native_compat32_lines();
    let (kernel, _) = guest();
    let fixture = root().join("src/cpu_model/testdata/qemu-7.2-tcg-broadwell.cpuid");
    let dump = amd_variant(&std::fs::read_to_string(fixture).expect("the CPUID fixture"));
    assert_eq!(dump.matches("ebx=0x68747541").count(), 2, "{dump}");
    let file = std::env::temp_dir().join(format!("krr-amd-{}.cpuid", std::process::id()));
    std::fs::write(&file, dump).unwrap();
    let (console, log) = krr_ok(&[
        "run",
        "--kernel",
        &kernel,
        "--initrd",
        &build().compat32_initrd,
        "--cpuid",
        file.to_str().unwrap(),
    ]);
    std::fs::remove_file(&file).unwrap();
    assert_powered_off(&log);
    assert!(console.contains("CPU0: AMD "), "{console}");
    assert_eq!(workload_lines(&console), expected_results(), "{log}");
    let guest = marked_lines(&console, "KRR-ISA-START", "KRR-ISA-END");
    assert_eq!(guest, native, "{console}");
}
