//! `--cpu SPEC` and `--cpuid FILE` of `krr run` and `krr record`: the CPU model the guest
//! sees. A spec is written like QEMU's `-cpu`: `NAME[,+FEATURE|,-FEATURE]...`, applied left to
//! right. A model is a CPUID table; a feature is one CPUID bit of the one feature table
//! ([`features::FEATURES`]), which says which bits krr models: no model, spec or dump ever
//! advertises another. A recording stores the resulting table (and the spec as the model's
//! name), so `krr replay` takes the CPU from the trace and has no `--cpu`.
//!
//! Features only switch CPUID bits: the engine checks CR4 (and XCR0) writes against the table
//! (`CpuidTable::cr4_supported`), so a guest cannot enable what its CPUID does not report.

pub mod dump;
pub mod features;
pub mod models;

pub use features::{has_feature, Feature, Reg, Support, FEATURES};
pub use models::Masked;

use krr_runtime::cpuid::{CpuidEntry, CpuidTable};

/// The model `krr run` and `krr record` use without `--cpu`.
pub const DEFAULT_SPEC: &str = "max";

/// The models a spec may start with (case does not matter: `Broadwell` is `broadwell`).
pub const MODEL_NAMES: &[&str] = &["max", "baseline", "broadwell", "icelake-client"];

/// A parsed `--cpu` spec or `--cpuid` dump.
#[derive(Clone, Debug)]
pub struct CpuModel {
    /// The spec as given (`cpuid:FILE` for a dump): the model name a trace stores.
    pub spec: String,
    pub cpuid: CpuidTable,
    /// Features the named model lists but does not get, and why.
    pub masked: Vec<(&'static str, Masked)>,
}

impl Default for CpuModel {
    fn default() -> Self {
        CpuModel::parse(DEFAULT_SPEC).expect("the default model parses")
    }
}

fn names<'a>(list: impl IntoIterator<Item = &'a str>) -> String {
    list.into_iter().collect::<Vec<_>>().join(", ")
}

fn modelled_names() -> String {
    names(
        FEATURES
            .iter()
            .filter(|f| f.support == Support::Modelled)
            .map(|f| f.name),
    )
}

/// The model called `name` (any case): its table and masked features.
fn model(name: &str) -> Option<(CpuidTable, Vec<(&'static str, Masked)>)> {
    let name = name.to_ascii_lowercase();
    if name == "max" {
        return Some((CpuidTable::krr_default(), Vec::new()));
    }
    models::NAMED
        .iter()
        .find(|m| m.name == name)
        .map(models::build)
}

impl CpuModel {
    /// Parse `NAME[,+FEATURE|,-FEATURE]...`; the error is one line naming the known models or
    /// features.
    pub fn parse(spec: &str) -> Result<CpuModel, String> {
        let mut parts = spec.split(',');
        let name = parts.next().unwrap_or_default();
        let (mut cpuid, masked) = model(name).ok_or_else(|| {
            format!(
                "unknown CPU model `{name}` (known models: {}; `--cpu help` lists them)",
                names(MODEL_NAMES.iter().copied())
            )
        })?;
        for part in parts {
            let (on, feature) = match part.split_at_checked(1) {
                Some(("+", f)) => (true, f),
                Some(("-", f)) => (false, f),
                _ => {
                    return Err(format!(
                        "`{part}`: write +FEATURE or -FEATURE after the model name (features krr models: {})",
                        modelled_names()
                    ))
                }
            };
            let f = features::find(feature).ok_or_else(|| {
                format!(
                    "unknown CPU feature `{feature}` (features krr models: {})",
                    modelled_names()
                )
            })?;
            if on && f.support != Support::Modelled {
                return Err(match f.support {
                    Support::NotYet => format!("`{feature}` is not modelled by krr yet"),
                    Support::Controlled => format!("`{feature}` is set by krr itself"),
                    _ => format!("`{feature}` is not modelled by krr"),
                });
            }
            set_feature(&mut cpuid, f, on).map_err(|()| {
                format!(
                    "model `{name}` has no CPUID leaf {:#x} for `{feature}`",
                    f.leaf
                )
            })?;
        }
        Ok(CpuModel {
            spec: spec.to_string(),
            cpuid,
            masked,
        })
    }

    /// The model of a `--cpuid` dump (`cpuid -r` output) read from `path`.
    pub fn from_dump_file(path: &std::path::Path) -> Result<CpuModel, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cpuid = dump::table(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(CpuModel {
            spec: format!("cpuid:{}", path.display()),
            cpuid,
            masked: Vec::new(),
        })
    }

    /// Does the model report `feature` (a name from [`FEATURES`])?
    pub fn has(&self, feature: &str) -> bool {
        features::find(feature).is_some_and(|f| has_feature(&self.cpuid, f))
    }

    /// Refuse a model whose features krr executes with host instructions the host lacks.
    pub fn check_host(&self) -> Result<(), String> {
        let lacks = host_lacks(&self.cpuid);
        if lacks.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the host CPU lacks {} which krr runs on the host for the model `{}`; drop them with -{}",
                lacks.join(" "),
                self.spec,
                lacks.join(",-")
            ))
        }
    }

    /// `krr info` / `--cpu help` lines: masked features by reason.
    pub fn masked_lines(&self) -> Vec<String> {
        [Masked::Tcg, Masked::Krr, Masked::Unmodelled, Masked::NotYet]
            .iter()
            .filter_map(|&why| {
                let v: Vec<_> = self
                    .masked
                    .iter()
                    .filter(|m| m.1 == why)
                    .map(|m| m.0)
                    .collect();
                (!v.is_empty()).then(|| format!("masked ({}): {}", why.label(), v.join(" ")))
            })
            .collect()
    }
}

/// The features `t` reports whose instructions krr executes with the host's own, where the
/// host CPU lacks them (`is_x86_feature_detected!`). The one place this is decided.
pub fn host_lacks(t: &CpuidTable) -> Vec<&'static str> {
    FEATURES
        .iter()
        .filter(|f| has_feature(t, f) && f.host.is_some_and(|h| !h()))
        .map(|f| f.name)
        .collect()
}

/// One-line descriptions of a CPUID table: vendor, signature and brand; the features.
pub fn describe(t: &CpuidTable) -> [String; 2] {
    let [_, b, c, d] = t.lookup(0, 0);
    let vendor: Vec<u8> = [b, d, c].iter().flat_map(|w| w.to_le_bytes()).collect();
    let (family, model, stepping) = models::decode_signature(t.lookup(1, 0)[0]);
    let brand: Vec<u8> = (0x8000_0002..=0x8000_0004u32)
        .flat_map(|l| t.lookup(l, 0))
        .flat_map(|w| w.to_le_bytes())
        .take_while(|&c| c != 0)
        .collect();
    let names: Vec<_> = features::reported(t).iter().map(|f| f.name).collect();
    [
        format!(
            "{} family {family} model {model} ({model:#x}) stepping {stepping}, \"{}\"",
            String::from_utf8_lossy(&vendor),
            String::from_utf8_lossy(&brand).trim()
        ),
        format!("features ({}): {}", names.len(), names.join(" ")),
    ]
}

/// `--cpu help`: the models, what they report and mask, and the features.
pub fn help() -> String {
    let mut s = String::from("CPU models (--cpu NAME[,+FEATURE|,-FEATURE]...):\n");
    for &name in MODEL_NAMES {
        let m = CpuModel::parse(name).expect("a named model");
        let source = models::NAMED
            .iter()
            .find(|n| n.name == name)
            .map_or("everything krr implements (the default)", |n| n.source);
        s += &format!("{name}: {source}\n");
        for l in describe(&m.cpuid).iter().chain(&m.masked_lines()) {
            s += &format!("  {l}\n");
        }
    }
    let by = |sup: Support| names(FEATURES.iter().filter(|f| f.support == sup).map(|f| f.name));
    s += &format!(
        "features krr models (+FEATURE/-FEATURE): {}\n",
        by(Support::Modelled)
    );
    let not_yet = by(Support::NotYet);
    if !not_yet.is_empty() {
        s += &format!("not yet modelled: {not_yet}\n");
    }
    s += &format!("set by krr itself: {}\n", by(Support::Controlled));
    s
}

fn reg(e: &mut CpuidEntry, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// Set or clear `f`'s bit in the entry that answers its leaf and subleaf; `Err` if none does
/// (clearing then has nothing to do and succeeds).
fn set_feature(t: &mut CpuidTable, f: &Feature, on: bool) -> Result<(), ()> {
    let n = t.len as usize;
    let Some(e) = t.entries[..n]
        .iter_mut()
        .find(|e| e.leaf == f.leaf && (e.subleaf == u32::MAX || e.subleaf == f.subleaf))
    else {
        return if on { Err(()) } else { Ok(()) };
    };
    let r = reg(e, f.reg);
    if on {
        *r |= 1 << f.bit;
    } else {
        *r &= !(1 << f.bit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use krr_runtime::arch::cr4;
    use krr_runtime::vector;

    fn entries(t: &CpuidTable) -> &[CpuidEntry] {
        &t.entries[..t.len as usize]
    }

    #[test]
    fn max_is_the_default_table_and_reports_pcid() {
        let m = CpuModel::parse("max").unwrap();
        assert_eq!(entries(&m.cpuid), entries(&CpuidTable::krr_default()));
        assert!(m.has("pcid"));
        assert_ne!(m.cpuid.cr4_supported() & cr4::PCIDE, 0);
        assert_eq!(CpuModel::default().spec, "max");
    }

    #[test]
    fn minus_pcid_clears_leaf_1_ecx_bit_17_only() {
        let max = CpuModel::parse("max").unwrap().cpuid;
        let m = CpuModel::parse("max,-pcid").unwrap();
        assert_eq!(m.spec, "max,-pcid");
        assert!(!m.has("pcid"));
        assert_eq!(m.cpuid.lookup(1, 0)[2], max.lookup(1, 0)[2] & !(1 << 17));
        let differ: Vec<_> = entries(&m.cpuid)
            .iter()
            .zip(entries(&max))
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a.leaf)
            .collect();
        assert_eq!(differ, [1]);
        // CR4.PCIDE is reserved without the CPUID bit; the rest of CR4 is unchanged.
        assert_eq!(m.cpuid.cr4_supported(), max.cr4_supported() & !cr4::PCIDE);
        // Left to right: the last word wins.
        let back = CpuModel::parse("max,-pcid,+pcid").unwrap().cpuid;
        assert_eq!(entries(&back), entries(&max));
    }

    #[test]
    fn bad_specs_name_what_is_known() {
        for (spec, want) in [
            (
                "",
                "unknown CPU model `` (known models: max, baseline, broadwell, icelake-client;",
            ),
            (
                "qemu64",
                "unknown CPU model `qemu64` (known models: max, baseline",
            ),
            ("max,+avx512f", "`avx512f` is not modelled by krr"),
            ("max,+xgetbv1", "`xgetbv1` is not modelled by krr"),
            ("max,+hypervisor", "`hypervisor` is set by krr itself"),
            (
                "max,+avx9",
                "unknown CPU feature `avx9` (features krr models: sse3, pclmulqdq,",
            ),
            (
                "max,-",
                "unknown CPU feature `` (features krr models: sse3,",
            ),
            ("max,pcid", "`pcid`: write +FEATURE or -FEATURE"),
            ("max,", "``: write +FEATURE or -FEATURE"),
            ("max,pcid=off", "`pcid=off`: write +FEATURE"),
        ] {
            let e = CpuModel::parse(spec).unwrap_err();
            assert!(e.starts_with(want), "{spec:?}: {e}");
            assert!(!e.contains('\n'), "{spec:?}: {e}");
        }
    }

    #[test]
    fn every_modelled_feature_is_a_bit_of_a_leaf_max_has() {
        for f in FEATURES {
            assert_eq!(FEATURES.iter().filter(|g| g.name == f.name).count(), 1);
            let same_bit = FEATURES
                .iter()
                .filter(|g| (g.leaf, g.subleaf, g.reg, g.bit) == (f.leaf, f.subleaf, f.reg, f.bit));
            assert_eq!(same_bit.count(), 1, "{}", f.name);
            assert!(
                features::FEATURE_WORDS.contains(&(f.leaf, f.subleaf, f.reg)),
                "{}",
                f.name
            );
            if f.support != Support::Modelled {
                continue;
            }
            let mut t = CpuidTable::krr_default();
            set_feature(&mut t, f, false).unwrap();
            assert!(!has_feature(&t, f), "{}", f.name);
            set_feature(&mut t, f, true).unwrap();
            assert!(has_feature(&t, f), "{}", f.name);
        }
    }

    /// MOV to CR4 (CPL0, long mode, CR3[11:0] = 0) setting `bits` under the model `spec`, run
    /// by the engine's own system-instruction code: the new CR4, or the fault's vector and
    /// error code.
    fn mov_cr4(spec: &str, bits: u64) -> Result<u64, (u8, u32)> {
        use iced_x86::{Decoder, DecoderOptions};
        use krr_jit::system::{execute, SysResult};
        use krr_runtime::{gpr, seg, Core, Segment};
        // mov cr4, rax
        let insn = Decoder::with_ip(64, &[0x0f, 0x22, 0xe0], 0, DecoderOptions::NONE).decode();
        let mut core = Core::new(1 << 20).unwrap();
        *core.cpuid_mut() = CpuModel::parse(spec).unwrap().cpuid;
        let arch = core.arch_mut();
        arch.seg[seg::CS] = Segment::flat(0x10, 0x209b);
        arch.gpr[gpr::RAX] = arch.cr4 | bits;
        // SAFETY: the state is used in place, not moved.
        let cpu = unsafe { core.state_mut() };
        let flags = cpu.rflags;
        match execute(cpu, &insn, None, flags) {
            SysResult::Done(_) => Ok(cpu.cr4),
            SysResult::Fault(e) => Err((e.vector, e.error_code)),
            _ => panic!("{spec}: MOV CR4 neither retired nor faulted"),
        }
    }

    /// MOV to CR4 setting PCIDE retires under `max`, #GP(0) under `max,-pcid`.
    #[test]
    fn cr4_pcide_write_is_refused_without_pcid() {
        assert_ne!(mov_cr4("max", cr4::PCIDE).unwrap() & cr4::PCIDE, 0);
        assert_eq!(mov_cr4("max,-pcid", cr4::PCIDE), Err((vector::GP, 0)));
    }

    /// `vme` is CPUID.01H:EDX[1]; it governs CR4.VME and CR4.PVI (SDM CPUID, "Feature
    /// Information Returned in the EDX Register": VME covers CR4.VME, CR4.PVI, EFLAGS.VIF and
    /// VIP). Under `max,-vme` both CR4 bits are reserved: MOV to CR4 setting either is #GP(0).
    #[test]
    fn minus_vme_clears_leaf_1_edx_bit_1_and_reserves_cr4_vme_pvi() {
        let max = CpuModel::parse("max").unwrap();
        assert!(max.has("vme"));
        assert_eq!(max.cpuid.lookup(1, 0)[3] & 2, 2);
        let m = CpuModel::parse("max,-vme").unwrap();
        assert!(!m.has("vme"));
        assert_eq!(m.cpuid.lookup(1, 0)[3], max.cpuid.lookup(1, 0)[3] & !2);
        assert_eq!(
            m.cpuid.cr4_supported(),
            max.cpuid.cr4_supported() & !(cr4::VME | cr4::PVI)
        );
        let both = cr4::VME | cr4::PVI;
        assert_eq!(mov_cr4("max", both).unwrap() & both, both);
        for bit in [cr4::VME, cr4::PVI] {
            assert_eq!(mov_cr4("max,-vme", bit), Err((vector::GP, 0)), "{bit:#x}");
        }
    }
}

#[cfg(test)]
mod named_tests;
