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
//! compared exactly.
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

/// (native binary, initrd): built once per test binary by tests/guest/isa/build.sh.
fn build() -> &'static (PathBuf, String) {
    static BUILT: OnceLock<(PathBuf, String)> = OnceLock::new();
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
        (bin, initrd)
    })
}

/// The programs' lines on this host, checked to hold every group of [`GROUPS`], and the line
/// the guest's run script adds.
fn native_lines() -> Vec<String> {
    let (bin, _) = build();
    let out = Command::new(bin).output().expect("running the ISA program");
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
    [lines, vec!["concurrent: same".to_string()]].concat()
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
    let (_, initrd) = build();
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
    let (_, initrd) = build();
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
