//! `--cpuid FILE`: a CPUID table dumped on a recording host, in the raw format of the `cpuid`
//! tool (`cpuid -r`, Debian package `cpuid`):
//!
//! ```text
//! CPU 0:
//!    0x00000000 0x00: eax=0x0000000d ebx=0x756e6547 ecx=0x6c65746e edx=0x49656e69
//! ```
//!
//! One line per (leaf, subleaf); an optional `CPU:` or `CPU n:` header; only the first CPU is
//! read (a second header ends it); blank lines and lines starting with `#` are skipped.
//!
//! krr keeps from the dump: the vendor (leaf 0), the signature and brand-index/CLFLUSH fields
//! of leaf 1, the feature bits of [`FEATURE_WORDS`] (each must name a feature krr models, else
//! the dump is refused), the brand string (0x80000002..4) and the address sizes (0x80000008
//! EAX). krr sets itself: the maximum leaves (at most 0xD and 0x80000008), the APIC ID and
//! logical-processor count of leaf 1 EBX (0: one CPU), HTT (0), the hypervisor bit (0),
//! OSXSAVE (mirrors CR4.OSXSAVE), leaf 0xB as one CPU, leaf 0xD as krr's XSAVE (x87 and SSE,
//! 576 bytes; subleaf 1 EAX from the dump). Every other leaf (caches 2/4/0x80000005/6,
//! MONITOR 5, power 6 ECX, PMU 0xA, TSC/crystal 0x15/0x16, ...) reads as zeros: it describes
//! host hardware krr does not have.

use super::features::{self, Reg, Support, FEATURE_WORDS};
use super::models;
use krr_runtime::cpuid::{CpuidEntry, CpuidTable};

/// One parsed line: (leaf, subleaf, [eax, ebx, ecx, edx]) and its line number.
type Line = (u32, u32, [u32; 4], usize);

fn hex(s: &str) -> Option<u32> {
    u32::from_str_radix(s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?, 16).ok()
}

fn parse_line(line: &str) -> Option<(u32, u32, [u32; 4])> {
    let mut it = line.split_whitespace();
    let leaf = hex(it.next()?)?;
    let subleaf = hex(it.next()?.strip_suffix(':')?)?;
    let mut regs = [0; 4];
    for (r, name) in regs.iter_mut().zip(["eax=", "ebx=", "ecx=", "edx="]) {
        *r = hex(it.next()?.strip_prefix(name)?)?;
    }
    it.next().is_none().then_some((leaf, subleaf, regs))
}

/// Parse `cpuid -r` output (the first CPU). Errors name the line.
pub fn parse(text: &str) -> Result<Vec<Line>, String> {
    let mut lines = Vec::new();
    let mut headers = 0;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with("CPU") && l.ends_with(':') {
            headers += 1;
            if headers > 1 {
                break;
            }
            continue;
        }
        let (leaf, subleaf, regs) = parse_line(l).ok_or_else(|| {
            format!("line {n}: expected `0xLEAF 0xSUB: eax=0x... ebx=0x... ecx=0x... edx=0x...` (cpuid -r), got `{l}`")
        })?;
        if lines
            .iter()
            .any(|&(a, b, _, _): &Line| a == leaf && b == subleaf)
        {
            return Err(format!(
                "line {n}: leaf {leaf:#x} subleaf {subleaf:#x} given twice"
            ));
        }
        lines.push((leaf, subleaf, regs, n));
    }
    Ok(lines)
}

/// The dump's table, or the reason it is refused (one line).
pub fn table(text: &str) -> Result<CpuidTable, String> {
    let lines = parse(text)?;
    let get = |leaf: u32, subleaf: u32| {
        lines
            .iter()
            .find(|l| l.0 == leaf && l.1 == subleaf)
            .map(|l| l.2)
    };
    for leaf in [0, 1, 0x8000_0000, 0x8000_0001] {
        if get(leaf, 0).is_none() {
            return Err(format!("no line for leaf {leaf:#010x} subleaf 0x00 (every dump needs leaves 0, 1, 0x80000000, 0x80000001)"));
        }
    }
    let l0 = get(0, 0).unwrap_or_default();
    let max_basic = l0[0];
    let max_ext = get(0x8000_0000, 0).unwrap_or_default()[0];
    // A feature word counts only if its leaf is within the dump's maximum.
    let word = |leaf: u32, subleaf: u32| -> [u32; 4] {
        let max = if leaf >= 0x8000_0000 {
            max_ext
        } else {
            max_basic
        };
        if leaf > max {
            return [0; 4];
        }
        get(leaf, subleaf).unwrap_or_default()
    };
    let mut missing = Vec::new();
    for &(leaf, subleaf, reg) in FEATURE_WORDS {
        let v = word(leaf, subleaf)[reg.index()];
        for bit in (0..32).filter(|b| v & 1 << b != 0) {
            match features::at(leaf, subleaf, reg, bit) {
                Some(f) if matches!(f.support, Support::Modelled | Support::Controlled) => {}
                Some(f) if f.support == Support::NotYet => {
                    missing.push(format!("{} (not yet)", f.name))
                }
                Some(f) => missing.push(f.name.to_string()),
                None => missing.push(features::bit_name(leaf, subleaf, reg, bit)),
            }
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "the dump advertises {} feature(s) krr does not model: {}",
            missing.len(),
            missing.join(" ")
        ));
    }
    let controlled = |leaf: u32, reg: Reg, v: u32| {
        (0..32)
            .filter(|&b| {
                v & 1 << b != 0
                    && features::at(leaf, 0, reg, b)
                        .is_some_and(|f| f.support != Support::Controlled)
            })
            .fold(0, |m, b| m | 1 << b)
    };
    let any = u32::MAX;
    let e = |leaf: u32, subleaf: u32, [eax, ebx, ecx, edx]: [u32; 4]| CpuidEntry {
        leaf,
        subleaf,
        eax,
        ebx,
        ecx,
        edx,
    };
    let l1 = word(1, 0);
    let e1 = word(0x8000_0001, 0);
    let basic = max_basic.min(0xd);
    let mut list = vec![
        e(0, any, [basic, l0[1], l0[2], l0[3]]),
        // EBX: keep the brand index and CLFLUSH line size; APIC ID and count 0.
        e(
            1,
            any,
            [
                l1[0],
                l1[1] & 0xffff,
                controlled(1, Reg::Ecx, l1[2]),
                controlled(1, Reg::Edx, l1[3]),
            ],
        ),
    ];
    if basic >= 6 {
        list.push(e(6, any, [word(6, 0)[0], 0, 0, 0]));
    }
    if basic >= 7 {
        let l7 = word(7, 0);
        list.push(e(7, 0, [0, l7[1], l7[2], l7[3]]));
    }
    if basic >= 0xb {
        list.extend(models::topology_entries());
    }
    if basic >= 0xd {
        list.extend(krr_runtime::cpuid::xsave_leaves(
            controlled(1, Reg::Ecx, l1[2]) & krr_runtime::cpuid::L1_ECX_AVX != 0,
            word(0xd, 1)[0],
        ));
    }
    if max_ext >= 0x8000_0000 {
        let ext = max_ext.min(0x8000_0008);
        let x0 = get(0x8000_0000, 0).unwrap_or_default();
        list.push(e(0x8000_0000, any, [ext, x0[1], x0[2], x0[3]]));
        list.push(e(0x8000_0001, any, [e1[0], 0, e1[2], e1[3]]));
        for leaf in 0x8000_0002..=0x8000_0004u32.min(ext) {
            list.push(e(leaf, any, word(leaf, 0)));
        }
        if ext >= 0x8000_0007 {
            list.push(e(0x8000_0007, any, [0, 0, 0, word(0x8000_0007, 0)[3]]));
        }
        if ext >= 0x8000_0008 {
            let x8 = word(0x8000_0008, 0);
            list.push(e(0x8000_0008, any, [x8[0] & 0xffff, x8[1], 0, 0]));
        }
    }
    Ok(CpuidTable::from_entries(&list).expect("a dump's table fits"))
}
