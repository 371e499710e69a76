//! `--cpu SPEC` of `krr run` and `krr record`: the CPU model the guest sees, written like
//! QEMU's `-cpu`: `NAME[,+FEATURE|,-FEATURE]...`, applied left to right. A model is a CPUID
//! table; a feature is one CPUID bit. A recording stores the resulting table (and the spec as
//! the model's name), so `krr replay` takes the CPU from the trace and has no `--cpu`.
//!
//! Features only switch CPUID bits: the engine checks CR4 (and XCR0) writes against the table
//! (`CpuidTable::cr4_supported`), so a guest cannot enable what its CPUID does not report.

use krr_runtime::cpuid::{CpuidEntry, CpuidTable};

/// The model `krr run` and `krr record` use without `--cpu`.
pub const DEFAULT_SPEC: &str = "max";

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A feature `+NAME` / `-NAME` sets or clears: one bit of one CPUID leaf.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u32,
}

/// The features a spec may name (QEMU's names). Turning one on is only sound if the engine
/// implements it; `max` already reports everything the engine implements.
pub const FEATURES: &[Feature] = &[
    // Process-context identifiers (CR4.PCIDE); QEMU 7.2's TCG does not implement them.
    Feature {
        name: "pcid",
        leaf: 1,
        subleaf: 0,
        reg: Reg::Ecx,
        bit: 17,
    },
    // The local APIC's x2APIC (MSR) interface.
    Feature {
        name: "x2apic",
        leaf: 1,
        subleaf: 0,
        reg: Reg::Ecx,
        bit: 21,
    },
    // The local APIC timer's TSC-deadline mode (IA32_TSC_DEADLINE).
    Feature {
        name: "tsc-deadline",
        leaf: 1,
        subleaf: 0,
        reg: Reg::Ecx,
        bit: 24,
    },
    // Always-running APIC timer.
    Feature {
        name: "arat",
        leaf: 6,
        subleaf: 0,
        reg: Reg::Eax,
        bit: 2,
    },
    // Virtual-8086 mode extensions: CR4.VME (no effect in IA-32e mode) and CR4.PVI (CLI/STI
    // at CPL3 on RFLAGS.VIF); QEMU 7.2's TCG does not implement them.
    Feature {
        name: "vme",
        leaf: 1,
        subleaf: 0,
        reg: Reg::Edx,
        bit: 1,
    },
];

/// A model a spec may start with: a name and its CPUID table.
struct Model {
    name: &'static str,
    table: fn() -> CpuidTable,
}

const MODELS: &[Model] = &[
    // Everything the engine implements (runtime/src/cpuid.rs).
    Model {
        name: "max",
        table: CpuidTable::krr_default,
    },
];

/// A parsed `--cpu` spec.
#[derive(Clone, Debug)]
pub struct CpuModel {
    /// The spec as given: the model name a trace stores.
    pub spec: String,
    pub cpuid: CpuidTable,
}

impl Default for CpuModel {
    fn default() -> Self {
        CpuModel::parse(DEFAULT_SPEC).expect("the default model parses")
    }
}

fn names<T>(list: &[T], name: impl Fn(&T) -> &str) -> String {
    list.iter().map(name).collect::<Vec<_>>().join(", ")
}

impl CpuModel {
    /// Parse `NAME[,+FEATURE|,-FEATURE]...`; the error is one line naming the known models or
    /// features.
    pub fn parse(spec: &str) -> Result<CpuModel, String> {
        let mut parts = spec.split(',');
        let name = parts.next().unwrap_or_default();
        let model = MODELS.iter().find(|m| m.name == name).ok_or_else(|| {
            format!(
                "unknown CPU model `{name}` (known models: {})",
                names(MODELS, |m| m.name)
            )
        })?;
        let mut cpuid = (model.table)();
        for part in parts {
            let (on, feature) = match part.split_at_checked(1) {
                Some(("+", f)) => (true, f),
                Some(("-", f)) => (false, f),
                _ => {
                    return Err(format!(
                        "`{part}`: write +FEATURE or -FEATURE after the model name (known features: {})",
                        names(FEATURES, |f| f.name)
                    ))
                }
            };
            let f = FEATURES.iter().find(|f| f.name == feature).ok_or_else(|| {
                format!(
                    "unknown CPU feature `{feature}` (known features: {})",
                    names(FEATURES, |f| f.name)
                )
            })?;
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
        })
    }

    /// Does the model report `feature` (a name from [`FEATURES`])?
    pub fn has(&self, feature: &str) -> bool {
        FEATURES
            .iter()
            .find(|f| f.name == feature)
            .is_some_and(|f| has_feature(&self.cpuid, f))
    }
}

fn reg(e: &mut CpuidEntry, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// Set or clear `f`'s bit in the entry that answers its leaf and subleaf; `Err` if none does.
fn set_feature(t: &mut CpuidTable, f: &Feature, on: bool) -> Result<(), ()> {
    let n = t.len as usize;
    let e = t.entries[..n]
        .iter_mut()
        .find(|e| e.leaf == f.leaf && (e.subleaf == u32::MAX || e.subleaf == f.subleaf))
        .ok_or(())?;
    let r = reg(e, f.reg);
    if on {
        *r |= 1 << f.bit;
    } else {
        *r &= !(1 << f.bit);
    }
    Ok(())
}

/// Does table `t` report feature `f`?
pub fn has_feature(t: &CpuidTable, f: &Feature) -> bool {
    let [a, b, c, d] = t.lookup(f.leaf, f.subleaf);
    let v = match f.reg {
        Reg::Eax => a,
        Reg::Ebx => b,
        Reg::Ecx => c,
        Reg::Edx => d,
    };
    v & (1 << f.bit) != 0
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
            ("", "unknown CPU model `` (known models: max)"),
            ("qemu64", "unknown CPU model `qemu64` (known models: max)"),
            (
                "max,+avx512f",
                "unknown CPU feature `avx512f` (known features: pcid, x2apic, tsc-deadline, arat, vme)",
            ),
            (
                "max,-",
                "unknown CPU feature `` (known features: pcid, x2apic, tsc-deadline, arat, vme)",
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
    fn every_feature_is_a_bit_of_a_leaf_max_has() {
        for f in FEATURES {
            let mut t = CpuidTable::krr_default();
            set_feature(&mut t, f, false).unwrap();
            assert!(!has_feature(&t, f), "{}", f.name);
            set_feature(&mut t, f, true).unwrap();
            assert!(has_feature(&t, f), "{}", f.name);
            assert_eq!(FEATURES.iter().filter(|g| g.name == f.name).count(), 1);
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
