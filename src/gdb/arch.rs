//! The x86-64 target gdb sees: gdb's own core and SSE registers (gdbstub_arch's layout), then
//! fs_base, gs_base, k_gs_base and the control registers and EFER, as QEMU's x86-64 target
//! description names them, so `p $cr3` and `info registers fs_base` work as with QEMU's stub.

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::id::X86_64CoreRegId;
use gdbstub_arch::x86::reg::{X86SegmentRegs, X86_64CoreRegs, X87FpuInternalRegs, F80};
use krr_runtime::ArchState;

pub enum KrrX86_64 {}

/// The system registers after gdb's core and SSE ones, in target-description order.
pub const SYSTEM_REGS: [&str; 9] = [
    "fs_base",
    "gs_base",
    "k_gs_base",
    "cr0",
    "cr2",
    "cr3",
    "cr4",
    "cr8",
    "efer",
];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Regs {
    pub core: X86_64CoreRegs,
    /// In [`SYSTEM_REGS`] order.
    pub system: [u64; 9],
}

impl Registers for Regs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for r in self.system {
            for b in r.to_le_bytes() {
                write_byte(Some(b));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        // Writes are refused before they get here; parse anyway so the type is complete.
        let core_len = bytes.len().checked_sub(8 * SYSTEM_REGS.len()).ok_or(())?;
        self.core.gdb_deserialize(&bytes[..core_len])?;
        for (i, c) in bytes[core_len..].chunks_exact(8).enumerate() {
            self.system[i] = u64::from_le_bytes(c.try_into().map_err(|_| ())?);
        }
        Ok(())
    }
}

impl Arch for KrrX86_64 {
    type Usize = u64;
    type Registers = Regs;
    type RegId = X86_64CoreRegId;
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        static XML: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        Some(XML.get_or_init(target_xml))
    }
}

fn target_xml() -> String {
    let reg = |name: &str, bits: u32, ty: &str| {
        format!(r#"<reg name="{name}" bitsize="{bits}" type="{ty}"/>"#)
    };
    let mut core = String::new();
    for r in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi"] {
        core += &reg(r, 64, "int64");
    }
    core += &reg("rbp", 64, "data_ptr");
    core += &reg("rsp", 64, "data_ptr");
    for i in 8..16 {
        core += &reg(&format!("r{i}"), 64, "int64");
    }
    core += &reg("rip", 64, "code_ptr");
    core += &reg("eflags", 32, "int32");
    for s in ["cs", "ss", "ds", "es", "fs", "gs"] {
        core += &reg(s, 32, "int32");
    }
    for i in 0..8 {
        core += &reg(&format!("st{i}"), 80, "i387_ext");
    }
    for r in [
        "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop",
    ] {
        core += &format!(r#"<reg name="{r}" bitsize="32" type="int" group="float"/>"#);
    }
    let mut sse = String::from(
        r#"<vector id="v4f" type="ieee_single" count="4"/><vector id="v2d" type="ieee_double" count="2"/><vector id="v16i8" type="int8" count="16"/><vector id="v8i16" type="int16" count="8"/><vector id="v4i32" type="int32" count="4"/><vector id="v2i64" type="int64" count="2"/><union id="vec128"><field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/></union>"#,
    );
    for i in 0..16 {
        sse += &reg(&format!("xmm{i}"), 128, "vec128");
    }
    sse += r#"<reg name="mxcsr" bitsize="32" type="int" group="vector"/>"#;
    let mut system = String::new();
    for r in SYSTEM_REGS {
        let ty = if r.ends_with("base") {
            "data_ptr"
        } else {
            "int64"
        };
        system += &reg(r, 64, ty);
    }
    format!(
        r#"<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target version="1.0"><architecture>i386:x86-64</architecture><feature name="org.gnu.gdb.i386.core">{core}</feature><feature name="org.gnu.gdb.i386.sse">{sse}</feature><feature name="org.krr.system">{system}</feature></target>"#
    )
}

/// The x87 tag word as FSAVE has it (two bits per physical register) from FXSAVE's abridged
/// one: empty, or the class of the value the register holds.
fn full_tag_word(cpu: &ArchState) -> u32 {
    let x = &cpu.x87;
    let top = ((x.fsw >> 11) & 7) as usize;
    let mut tags = 0u32;
    for phys in 0..8 {
        let tag = if x.ftw & (1 << phys) == 0 {
            3
        } else {
            let st = &x.st[(phys + 8 - top) % 8];
            let mantissa = u64::from_le_bytes(st[..8].try_into().expect("8 bytes"));
            let exponent = u16::from_le_bytes([st[8], st[9]]) & 0x7fff;
            match exponent {
                0 if mantissa == 0 => 1,
                0 | 0x7fff => 2,
                _ if mantissa >> 63 == 0 => 2,
                _ => 0,
            }
        };
        tags |= tag << (2 * phys);
    }
    tags
}

/// gdb's view of the CPU.
pub fn regs_of(cpu: &ArchState) -> Regs {
    let g = &cpu.gpr;
    let sel = |i: usize| cpu.seg[i].selector as u32;
    let mut st = [F80::default(); 8];
    for (d, s) in st.iter_mut().zip(&cpu.x87.st) {
        d.copy_from_slice(&s[..10]);
    }
    let x = &cpu.x87;
    Regs {
        core: X86_64CoreRegs {
            // gdb: rax rbx rcx rdx rsi rdi rbp rsp r8..r15; krr: the encoding order.
            regs: [
                g[0], g[3], g[1], g[2], g[6], g[7], g[5], g[4], g[8], g[9], g[10], g[11], g[12],
                g[13], g[14], g[15],
            ],
            eflags: cpu.rflags_value() as u32,
            rip: cpu.rip,
            // krr's segment order is the encoding's: ES CS SS DS FS GS.
            segments: X86SegmentRegs {
                cs: sel(1),
                ss: sel(2),
                ds: sel(3),
                es: sel(0),
                fs: sel(4),
                gs: sel(5),
            },
            st,
            fpu: X87FpuInternalRegs {
                fctrl: x.fcw as u32,
                fstat: x.fsw as u32,
                ftag: full_tag_word(cpu),
                fiseg: (x.fip >> 32) as u32,
                fioff: x.fip as u32,
                foseg: (x.fdp >> 32) as u32,
                fooff: x.fdp as u32,
                fop: x.fop as u32,
            },
            xmm: std::array::from_fn(|i| (cpu.xmm[i][0] as u128) | ((cpu.xmm[i][1] as u128) << 64)),
            mxcsr: cpu.mxcsr,
        },
        system: [
            cpu.seg[4].base,
            cpu.seg[5].base,
            cpu.kernel_gs_base,
            cpu.cr0,
            cpu.cr2,
            cpu.cr3,
            cpu.cr4,
            cpu.cr8,
            cpu.efer,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_in_gdbs_order_and_the_description_lists_them() {
        let mut cpu = ArchState::flat64();
        for i in 0..16 {
            cpu.gpr[i] = 0x100 + i as u64;
        }
        cpu.rip = 0xffff_ffff_8100_0000;
        cpu.seg[1].selector = 0x10;
        cpu.seg[5].base = 0xffff_8880_0000_0000;
        cpu.cr3 = 0x1234_5000;
        let r = regs_of(&cpu);
        assert_eq!(r.core.regs[1], 0x103, "rbx");
        assert_eq!(r.core.regs[7], 0x104, "rsp");
        assert_eq!(r.core.segments.cs, 0x10);
        assert_eq!(r.system[1], 0xffff_8880_0000_0000);
        assert_eq!(r.system[5], 0x1234_5000);
        // Power-on x87: every register empty.
        assert_eq!(r.core.fpu.ftag, 0xffff);
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap()));
        assert_eq!(bytes.len(), 0x218 + 8 * 9);
        assert_eq!(bytes[0x80..0x88], cpu.rip.to_le_bytes());
        let xml = KrrX86_64::target_description_xml().unwrap();
        // 16 + rip + eflags + 6 + 8 + 8 + 16 + mxcsr + 9 registers.
        assert_eq!(
            xml.matches("<reg ").count(),
            16 + 2 + 6 + 8 + 8 + 16 + 1 + 9
        );
        assert!(xml.contains(r#"<reg name="cr3" bitsize="64" type="int64"/>"#));
    }
}
