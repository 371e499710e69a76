//! The CPUID table the guest sees: a fixed list of (leaf, subleaf) entries, documented in
//! ARCHITECTURE.md. Leaves not listed return zeros, as for a leaf above the maximum.

use crate::arch::{cr4, xcr0};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidEntry {
    pub leaf: u32,
    /// `u32::MAX` when the leaf ignores ECX.
    pub subleaf: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

pub const CPUID_CAPACITY: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuidTable {
    pub len: u32,
    pub entries: [CpuidEntry; CPUID_CAPACITY],
}

const L1_ECX_XSAVE: u32 = 1 << 26;
const L1_ECX_OSXSAVE: u32 = 1 << 27;
/// MXCSR bits the model supports (DAZ included; the guest CPUID does not offer AMD's
/// misaligned-SSE mode bit): the MXCSR_MASK FXSAVE stores. LDMXCSR, FXRSTOR and XRSTOR raise
/// #GP for any other bit.
pub const MXCSR_MASK: u32 = 0xffff;
/// XCR0 components the engine implements (XSAVE/XRSTOR/XSETBV): x87, SSE and AVX.
pub const XCR0_SUPPORTED: u64 = xcr0::X87 | xcr0::SSE | xcr0::AVX;
/// CR4 bits the engine implements whatever the table says: VME, PVI, TSD, DE, PSE, PAE, MCE,
/// PGE, PCE, OSFXSR, OSXMMEXCPT, UMIP, FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP. VME, PSE and MCE
/// have no effect in 64-bit mode (no virtual-8086 mode, no non-PAE paging, no machine-check
/// banks); PVI makes CLI/STI at CPL3 change VIF (jit `system/control.rs`).
const CR4_IMPLEMENTED: u64 = cr4::VME
    | cr4::PVI
    | cr4::TSD
    | cr4::DE
    | cr4::PSE
    | cr4::PAE
    | cr4::MCE
    | cr4::PGE
    | cr4::PCE
    | cr4::OSFXSR
    | cr4::OSXMMEXCPT
    | cr4::UMIP
    | cr4::FSGSBASE
    | cr4::PCIDE
    | cr4::OSXSAVE
    | cr4::SMEP
    | cr4::SMAP;

fn regs_from_str(s: &[u8; 12]) -> (u32, u32, u32) {
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    (w(0), w(4), w(8))
}

/// CPUID.0DH.1:EAX bit 0: XSAVEOPT.
pub const XSAVEOPT: u32 = 1;
/// CPUID.0DH.1:EAX bit 1: XSAVEC (and XRSTOR's compacted form).
pub const XSAVEC: u32 = 1 << 1;
/// CPUID.0DH.1:EAX bit 3: XSAVES/XRSTORS and IA32_XSS.
pub const XSAVES: u32 = 1 << 3;
/// CPUID.01H:ECX bit 28: AVX.
pub const L1_ECX_AVX: u32 = 1 << 28;

/// The legacy region and the XSAVE header: where component 2 starts in both formats.
pub const XSAVE_LEGACY_AND_HEADER: u32 = 576;
/// Component 2 (the YMM upper halves): 16 x 16 bytes.
pub const XSAVE_YMM_SIZE: u32 = 256;

/// The XSAVE area's size for the components in `xcr0` (standard and compacted formats are the
/// same size for x87, SSE and AVX: component 2 follows the header in both).
pub fn xsave_size(xcr0: u64) -> u32 {
    if xcr0 & xcr0::AVX != 0 {
        XSAVE_LEGACY_AND_HEADER + XSAVE_YMM_SIZE
    } else {
        XSAVE_LEGACY_AND_HEADER
    }
}

/// Leaf 0xD for krr's XSAVE, the same in every CPU model: XCR0 may enable x87, SSE and (when
/// the model reports AVX) AVX (EDX:EAX of subleaf 0); the area's size for the current XCR0
/// (EBX, filled in by [`CpuidTable::query`]) and at most (ECX); subleaf 1's EAX as given (the
/// XSAVE variants the model reports), EBX the compacted size for XCR0 | IA32_XSS (also
/// filled in by `query`), ECX/EDX 0 (no supervisor component: IA32_XSS is 0); subleaf 2 the
/// YMM component's size and standard-format offset.
pub fn xsave_leaves(avx: bool, subleaf1_eax: u32) -> Vec<CpuidEntry> {
    let components = if avx {
        XCR0_SUPPORTED
    } else {
        XCR0_SUPPORTED & !xcr0::AVX
    };
    let mut v = vec![
        CpuidEntry {
            leaf: 0xd,
            subleaf: 0,
            eax: components as u32,
            ebx: XSAVE_LEGACY_AND_HEADER,
            ecx: xsave_size(components),
            edx: 0,
        },
        CpuidEntry {
            leaf: 0xd,
            subleaf: 1,
            eax: subleaf1_eax,
            ebx: 0,
            ecx: 0,
            edx: 0,
        },
    ];
    if avx {
        v.push(CpuidEntry {
            leaf: 0xd,
            subleaf: 2,
            eax: XSAVE_YMM_SIZE,
            ebx: XSAVE_LEGACY_AND_HEADER,
            ecx: 0,
            edx: 0,
        });
    }
    v
}

/// What the host offers of the features krr executes with the host's own instructions and
/// `max` reports only when the host has them: leaf 1 ECX (FMA, AVX, F16C) and leaf 7 EBX
/// (AVX2) bits.
fn host_avx_bits() -> (u32, u32) {
    let avx = std::is_x86_feature_detected!("avx");
    let mut ecx = 0;
    let mut ebx7 = 0;
    if avx {
        ecx |= L1_ECX_AVX;
        if std::is_x86_feature_detected!("fma") {
            ecx |= 1 << 12;
        }
        if std::is_x86_feature_detected!("f16c") {
            ecx |= 1 << 29;
        }
        if std::is_x86_feature_detected!("avx2") {
            ebx7 |= 1 << 5;
        }
    }
    (ecx, ebx7)
}

impl CpuidTable {
    pub fn from_entries(list: &[CpuidEntry]) -> Option<CpuidTable> {
        if list.len() > CPUID_CAPACITY {
            return None;
        }
        let mut t = CpuidTable {
            len: list.len() as u32,
            entries: [CpuidEntry::default(); CPUID_CAPACITY],
        };
        t.entries[..list.len()].copy_from_slice(list);
        Some(t)
    }

    /// krr's default CPU model: an x86-64 core with exactly the features the engine implements.
    pub fn krr_default() -> CpuidTable {
        let (b, d, c) = regs_from_str(b"KrrKrrKrrKrr");
        let any = u32::MAX;
        // Leaf 1 EDX: FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV PAT PSE36
        // CLFSH MMX FXSR SSE SSE2. PSE and PSE36 change only non-PAE paging, which a 64-bit
        // CPU never uses (CR4.PSE is accepted and has no effect, as on hardware); MCE and MCA
        // with no banks (MCG_CAP 0): no machine check ever happens. VME allows CR4.VME and
        // CR4.PVI: virtual-8086 mode cannot be entered in IA-32e mode (SDM Vol. 3A 2.3.1,
        // "System Flags and Fields in IA-32e Mode": the VM flag cannot be set), so CR4.VME has
        // no effect there; CR4.PVI gives CPL3 code CLI/STI on RFLAGS.VIF (SDM CLI, STI).
        let l1_edx = (1 << 0)
            | (1 << 1)
            | (1 << 2)
            | (1 << 3)
            | (1 << 4)
            | (1 << 5)
            | (1 << 6)
            | (1 << 7)
            | (1 << 8)
            | (1 << 9)
            | (1 << 11)
            | (1 << 12)
            | (1 << 13)
            | (1 << 14)
            | (1 << 15)
            | (1 << 16)
            | (1 << 17)
            | (1 << 19)
            | (1 << 23)
            | (1 << 24)
            | (1 << 25)
            | (1 << 26);
        // Leaf 1 ECX: SSE3 PCLMULQDQ SSSE3 CX16 SSE4.1 SSE4.2 PCID x2APIC MOVBE POPCNT
        // TSC-deadline AES XSAVE (bit 27, OSXSAVE, mirrors CR4.OSXSAVE, see `query`; bit 31
        // stays 0: no hypervisor). x2APIC and the TSC-deadline timer are the machine's local
        // APIC's; the SSE3..SSE4.2, PCLMULQDQ and AES instructions run on the host.
        let l1_ecx = (1 << 0)
            | (1 << 1)
            | (1 << 9)
            | (1 << 13)
            | (1 << 17)
            | (1 << 19)
            | (1 << 20)
            | (1 << 21)
            | (1 << 22)
            | (1 << 23)
            | (1 << 24)
            | (1 << 25)
            | L1_ECX_XSAVE;
        // FMA, AVX, F16C and AVX2 run on the host: reported when the host has them.
        let (avx_ecx, avx_ebx7) = host_avx_bits();
        let l1_ecx = l1_ecx | avx_ecx;
        // Leaf 7.0 EBX: FSGSBASE BMI1 SMEP BMI2 ERMS ADX SMAP (and AVX2, above); EDX: FSRM (REP
        // MOVSB/STOSB are exact whatever their length; these only tell the kernel to prefer
        // them).
        let l7_ebx =
            (1 << 0) | (1 << 3) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 19) | (1 << 20) | avx_ebx7;
        let l7_edx = 1 << 4;
        // Leaf 0x80000001 ECX: LAHF-SAHF, ABM (LZCNT). EDX: SYSCALL NX RDTSCP LM.
        let e1_ecx = (1 << 0) | (1 << 5);
        let e1_edx = (1 << 11) | (1 << 20) | (1 << 27) | (1 << 29);
        let brand = b"krr virtual x86-64 CPU\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        let bw =
            |i: usize| u32::from_le_bytes([brand[i], brand[i + 1], brand[i + 2], brand[i + 3]]);
        let brand_leaf = |leaf: u32, o: usize| CpuidEntry {
            leaf,
            subleaf: any,
            eax: bw(o),
            ebx: bw(o + 4),
            ecx: bw(o + 8),
            edx: bw(o + 12),
        };
        let list = [
            CpuidEntry {
                leaf: 0,
                subleaf: any,
                eax: 0xd,
                ebx: b,
                ecx: c,
                edx: d,
            },
            // Family 6 model 0x55 stepping 4: a generic modern core signature.
            CpuidEntry {
                leaf: 1,
                subleaf: any,
                eax: 0x0005_0654,
                ebx: 0x0001_0800,
                ecx: l1_ecx,
                edx: l1_edx,
            },
            // Leaf 6 EAX: ARAT (the local APIC timer runs in every C-state; krr has none).
            CpuidEntry {
                leaf: 6,
                subleaf: any,
                eax: 1 << 2,
                ebx: 0,
                ecx: 0,
                edx: 0,
            },
            CpuidEntry {
                leaf: 7,
                subleaf: 0,
                eax: 0,
                ebx: l7_ebx,
                ecx: 0,
                edx: l7_edx,
            },
            CpuidEntry {
                leaf: 0x8000_0000,
                subleaf: any,
                eax: 0x8000_0008,
                ebx: 0,
                ecx: 0,
                edx: 0,
            },
            CpuidEntry {
                leaf: 0x8000_0001,
                subleaf: any,
                eax: 0,
                ebx: 0,
                ecx: e1_ecx,
                edx: e1_edx,
            },
            brand_leaf(0x8000_0002, 0),
            brand_leaf(0x8000_0003, 16),
            brand_leaf(0x8000_0004, 32),
            // 48-bit linear, 40-bit physical addresses.
            CpuidEntry {
                leaf: 0x8000_0008,
                subleaf: any,
                eax: 0x3028,
                ebx: 0,
                ecx: 0,
                edx: 0,
            },
        ];
        // XSAVE: x87, SSE and AVX (with AVX); XSAVEOPT (it saves like XSAVE, which the
        // architecture allows), XSAVEC and XSAVES (IA32_XSS holds no component); no XGETBV
        // with ECX=1.
        let mut list = list.to_vec();
        list.extend(xsave_leaves(
            avx_ecx & L1_ECX_AVX != 0,
            XSAVEOPT | XSAVEC | XSAVES,
        ));
        CpuidTable::from_entries(&list).expect("default table fits")
    }

    /// What CPUID returns for `leaf`/`subleaf` with control register 4 `cr4` and XCR0 `xcr0`:
    /// the table entry, with leaf 1 ECX.OSXSAVE (bit 27) mirroring CR4.OSXSAVE when the table
    /// advertises XSAVE, and leaf 0xD's sizes for the enabled components (subleaf 0 EBX: the
    /// standard format; subleaf 1 EBX: the compacted format, when XSAVEC or XSAVES is
    /// reported).
    pub fn query(&self, leaf: u32, subleaf: u32, cr4: u64, xcr0: u64) -> [u32; 4] {
        let mut r = self.lookup(leaf, subleaf);
        if leaf == 1 {
            r[2] &= !L1_ECX_OSXSAVE;
            if r[2] & L1_ECX_XSAVE != 0 && cr4 & cr4::OSXSAVE != 0 {
                r[2] |= L1_ECX_OSXSAVE;
            }
        }
        if leaf == 0xd && r != [0; 4] {
            match subleaf {
                0 => {
                    // A model whose AVX was taken away (`-avx`) offers no YMM component.
                    if !self.has_avx() {
                        r[0] &= !(xcr0::AVX as u32);
                        r[2] = xsave_size(r[0] as u64);
                    }
                    r[1] = xsave_size(xcr0);
                }
                2 if !self.has_avx() => r = [0; 4],
                1 if r[0] & (XSAVEC | XSAVES) != 0 => r[1] = xsave_size(xcr0),
                _ => {}
            }
        }
        r
    }

    /// Whether the table reports AVX (leaf 1 ECX bit 28).
    pub fn has_avx(&self) -> bool {
        self.lookup(1, 0)[2] & L1_ECX_AVX != 0
    }

    /// The CR4 bits this CPU model lets software set: each bit whose feature the table
    /// advertises (SDM Vol. 3A 2.5 and the CPUID feature flags), limited to what the engine
    /// implements. Setting any other bit is #GP(0).
    pub fn cr4_supported(&self) -> u64 {
        let [_, _, ecx1, edx1] = self.lookup(1, 0);
        let [_, ebx7, ecx7, _] = self.lookup(7, 0);
        let has = |reg: u32, bit: u32| reg & (1 << bit) != 0;
        // (CR4 bit, advertised?) for the bits that depend on a feature flag.
        let table = [
            (0, has(edx1, 1)),   // VME (virtual-8086 mode extensions)
            (1, has(edx1, 1)),   // PVI (protected-mode virtual interrupts, also CPUID VME)
            (3, has(edx1, 2)),   // DE
            (4, has(edx1, 3)),   // PSE
            (5, has(edx1, 6)),   // PAE
            (6, has(edx1, 7)),   // MCE
            (7, has(edx1, 13)),  // PGE
            (9, has(edx1, 24)),  // OSFXSR
            (10, has(edx1, 25)), // OSXMMEXCPT
            (11, has(ecx7, 2)),  // UMIP
            (16, has(ebx7, 0)),  // FSGSBASE
            (17, has(ecx1, 17)), // PCIDE
            (18, has(ecx1, 26)), // OSXSAVE
            (20, has(ebx7, 7)),  // SMEP
            (21, has(ebx7, 20)), // SMAP
        ];
        // TSD and PCE need no feature flag.
        let always = cr4::TSD | cr4::PCE;
        table
            .iter()
            .filter(|(_, on)| *on)
            .fold(always, |m, (bit, _)| m | 1u64 << bit)
            & CR4_IMPLEMENTED
    }

    pub fn lookup(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        self.entries[..self.len as usize]
            .iter()
            .find(|e| e.leaf == leaf && (e.subleaf == u32::MAX || e.subleaf == subleaf))
            .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
            .unwrap_or([0; 4])
    }
}

impl Default for CpuidTable {
    fn default() -> Self {
        CpuidTable::krr_default()
    }
}
