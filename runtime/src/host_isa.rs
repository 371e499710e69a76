//! The SIMD and related ISA extensions the host can execute. The engine runs these guest
//! instructions on the host itself (the jit's `helpers::host_exec`), so a CPU model may only
//! offer what this host has: the CPU-model code asks [`host_isa`] before accepting a model.

/// An ISA extension the engine executes on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IsaExtension {
    Sse,
    Sse2,
    Sse3,
    Ssse3,
    Sse41,
    Sse42,
    Popcnt,
    Aes,
    Pclmulqdq,
}

impl IsaExtension {
    pub const ALL: [IsaExtension; 9] = [
        IsaExtension::Sse,
        IsaExtension::Sse2,
        IsaExtension::Sse3,
        IsaExtension::Ssse3,
        IsaExtension::Sse41,
        IsaExtension::Sse42,
        IsaExtension::Popcnt,
        IsaExtension::Aes,
        IsaExtension::Pclmulqdq,
    ];

    /// The CPUID feature name (as `/proc/cpuinfo` and `--cpu` spell it).
    pub fn name(self) -> &'static str {
        match self {
            IsaExtension::Sse => "sse",
            IsaExtension::Sse2 => "sse2",
            IsaExtension::Sse3 => "pni",
            IsaExtension::Ssse3 => "ssse3",
            IsaExtension::Sse41 => "sse4_1",
            IsaExtension::Sse42 => "sse4_2",
            IsaExtension::Popcnt => "popcnt",
            IsaExtension::Aes => "aes",
            IsaExtension::Pclmulqdq => "pclmulqdq",
        }
    }

    /// Whether the host executes this extension's instructions.
    pub fn on_host(self) -> bool {
        match self {
            IsaExtension::Sse => std::is_x86_feature_detected!("sse"),
            IsaExtension::Sse2 => std::is_x86_feature_detected!("sse2"),
            IsaExtension::Sse3 => std::is_x86_feature_detected!("sse3"),
            IsaExtension::Ssse3 => std::is_x86_feature_detected!("ssse3"),
            IsaExtension::Sse41 => std::is_x86_feature_detected!("sse4.1"),
            IsaExtension::Sse42 => std::is_x86_feature_detected!("sse4.2"),
            IsaExtension::Popcnt => std::is_x86_feature_detected!("popcnt"),
            IsaExtension::Aes => std::is_x86_feature_detected!("aes"),
            IsaExtension::Pclmulqdq => std::is_x86_feature_detected!("pclmulqdq"),
        }
    }
}

/// The extensions of [`IsaExtension::ALL`] the host can execute.
pub fn host_isa() -> Vec<IsaExtension> {
    IsaExtension::ALL
        .into_iter()
        .filter(|e| e.on_host())
        .collect()
}

/// The extensions of `wanted` the host lacks (empty: a model offering them can run here).
pub fn missing_on_host(wanted: &[IsaExtension]) -> Vec<IsaExtension> {
    wanted.iter().copied().filter(|e| !e.on_host()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse2_is_always_there_on_x86_64() {
        let h = host_isa();
        assert!(h.contains(&IsaExtension::Sse) && h.contains(&IsaExtension::Sse2));
        assert!(missing_on_host(&[IsaExtension::Sse2]).is_empty());
    }
}
