//! Behaviour profiles: whose results the engine gives where the architecture leaves them
//! undefined (and, for [`Profile::KrrCompat`], where KRR's replayer differs from hardware).
//! `docs/PROFILES.md` lists every rule with its source.
//!
//! The engine takes the profile from its configuration (`krr_jit::EngineConfig::profile`),
//! bakes it into the blocks it decodes and compiles, and keeps it in
//! [`crate::ExecContext::profile`] for the parts that run on the CPU state: the interpreter
//! (also when compiled code hands it an instruction), the system instructions and event
//! delivery ([`crate::interrupt::deliver`]).

/// A named behaviour profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Profile {
    /// This host's results (an AMD EPYC; the differential tests compare against it).
    #[default]
    Host = 0,
    /// What KRR's replayer (its QEMU 7.0 TCG fork) does, quirks included: MUL/IMUL ZF,
    /// SHL/SHR OF, BSF/BSR flags, the pushed RFLAGS of exception frames, XSAVE's MXCSR.
    KrrCompat = 1,
    /// Intel hardware's results for undefined flags, where a source says what they are.
    Intel = 2,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 3] = [Profile::Host, Profile::KrrCompat, Profile::Intel];

    /// The profile's name, as `--profile NAME` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Host => "host",
            Profile::KrrCompat => "krr-compat",
            Profile::Intel => "intel",
        }
    }

    /// The profile called `name` (see [`Profile::name`]).
    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The names of all profiles, for messages.
    pub fn names() -> Vec<&'static str> {
        Profile::ALL.iter().map(|p| p.name()).collect()
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Profile, String> {
        Profile::from_name(s).ok_or_else(|| {
            format!(
                "unknown profile `{s}` (known: {})",
                Profile::names().join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(Profile::from_name(p.name()), Some(p));
            assert_eq!(p.to_string().parse::<Profile>(), Ok(p));
        }
        assert_eq!(Profile::from_name("krr-compat"), Some(Profile::KrrCompat));
        assert_eq!(Profile::from_name("Intel"), None);
        assert!("amd".parse::<Profile>().unwrap_err().contains("host"));
        assert_eq!(Profile::default(), Profile::Host);
    }
}
