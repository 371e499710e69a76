//! The snapshot: a QEMU migration stream (krr-spec.md 2.2), as KRR's QEMU 7.0 writes it with
//! `rr_record` (two streams back to back; only the first is read, as KRR's loader does) and
//! as later QEMU releases write it (e.g. 7.2's `migrate "exec:cat > FILE"`).
//!
//! Read: the configuration, the `ram` sections (`pc.ram` kept), `cpu`, `cpu_common`, `apic`,
//! ivshmem, `i8259` and `ioapic`; every other device section is skipped by the size the stream's own
//! VM-description JSON gives (found after stream A's EOF), and a known section whose size
//! disagrees with the description is an error. Without a description only the known
//! sections can be read.

pub mod cpu;
pub mod devices;
pub mod ram;
pub mod src;
pub mod vmdesc;
pub mod vmstate;

use crate::krr_rec::error::{Ctx, KrrError};
use std::collections::HashMap;
use std::path::Path;

pub use cpu::{CpuCommon, Segment, X86Cpu};
pub use devices::{Apic, IoApic, Ivshmem, Pic};
pub use ram::{GuestRam, RamBlock};
use src::{ReadSeek, Src};
use vmdesc::VmDesc;

pub const MAGIC: u32 = 0x5145_564d;
pub const VERSION: u32 = 3;

pub mod section {
    pub const EOF: u8 = 0x00;
    pub const START: u8 = 0x01;
    pub const PART: u8 = 0x02;
    pub const END: u8 = 0x03;
    pub const FULL: u8 = 0x04;
    pub const VMDESCRIPTION: u8 = 0x06;
    pub const CONFIGURATION: u8 = 0x07;
    pub const COMMAND: u8 = 0x08;
    pub const FOOTER: u8 = 0x7e;
}

/// A device section of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    pub name: String,
    pub instance: u32,
    pub version: u32,
    /// The file offset of its body and the body's size.
    pub offset: u64,
    pub size: u64,
    /// Read by krr (else skipped by its description).
    pub read: bool,
}

/// One vCPU: `cpu`, `cpu_common` and `apic` of the same instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vcpu {
    pub index: u32,
    pub cpu: X86Cpu,
    pub common: Option<CpuCommon>,
}

/// What krr takes from a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The machine type of the configuration section, e.g. `pc-i440fx-7.0`.
    pub machine: String,
    pub ram_total: u64,
    pub ram_blocks: Vec<RamBlock>,
    pub ram: GuestRam,
    pub vcpus: Vec<Vcpu>,
    /// By instance id (= initial APIC id).
    pub apics: Vec<(u32, Apic)>,
    pub ivshmem: Option<Ivshmem>,
    /// The 8259s by instance (0 = master, 1 = slave).
    pub pics: Vec<(u32, Pic)>,
    pub ioapic: Option<IoApic>,
    pub sections: Vec<SectionInfo>,
    /// Whether the stream carried its VM description.
    pub described: bool,
    /// Where stream A ends (after its EOF byte and description); KRR's second stream, if
    /// any, follows.
    pub end: u64,
    pub file_len: u64,
}

impl Snapshot {
    pub fn open(path: &Path) -> Result<Snapshot, KrrError> {
        let ctx = Ctx::new(path);
        let mut f = std::fs::File::open(path).map_err(|e| ctx.io(e))?;
        Snapshot::read(&mut f, path)
    }

    /// Read a stream from any seekable source; `file` names it in errors.
    pub fn read(r: &mut dyn ReadSeek, file: &Path) -> Result<Snapshot, KrrError> {
        let mut src = Src::new(r, Ctx::new(file))?;
        Reader::default().run(&mut src)
    }

    pub fn apic(&self, instance: u32) -> Option<&Apic> {
        self.apics
            .iter()
            .find(|(i, _)| *i == instance)
            .map(|(_, a)| a)
    }

    /// The master (0) or slave (1) 8259.
    pub fn pic(&self, instance: u32) -> Option<&Pic> {
        self.pics
            .iter()
            .find(|(i, _)| *i == instance)
            .map(|(_, p)| p)
    }
}

#[derive(Default)]
struct Reader {
    snap: Snapshot,
    ram: ram::RamState,
    /// section id -> (idstr, instance) of START sections.
    live: HashMap<u32, String>,
    desc: Option<Option<VmDesc>>,
    cpus: Vec<(u32, X86Cpu)>,
    commons: Vec<(u32, CpuCommon)>,
    /// Whether sections end in footers: decided by the first section, then required of all.
    footers: Option<bool>,
}

/// Whether a section name is `name` or a device path ending in `/name`.
fn named(idstr: &str, name: &str) -> bool {
    idstr == name || idstr.ends_with(&format!("/{name}"))
}

impl Reader {
    fn run(mut self, src: &mut Src) -> Result<Snapshot, KrrError> {
        self.snap.file_len = src.len();
        let magic = src.be32("the stream magic")?;
        if magic != MAGIC {
            return Err(src.ctx.invalid(
                0,
                format!("not a QEMU migration stream (magic {magic:#010x})"),
            ));
        }
        let version = src.be32("the stream version")?;
        if version != VERSION {
            return Err(src.ctx.unsupported(
                4,
                format!("migration stream version {version} (krr reads 3)"),
            ));
        }
        loop {
            let at = src.offset();
            let t = src.u8("a section type")?;
            match t {
                section::EOF => break,
                section::CONFIGURATION => self.configuration(src)?,
                section::START | section::FULL => {
                    let id = src.be32("a section id")?;
                    let name = src.str8("a section name")?;
                    let instance = src.be32("an instance id")?;
                    let version = src.be32("a section version")?;
                    if t == section::START {
                        if name != "ram" {
                            return Err(src.ctx.unsupported(
                                at,
                                format!("iterative section `{name}` (only `ram` is read)"),
                            ));
                        }
                        if version != 4 {
                            return Err(src.ctx.unsupported(
                                at,
                                format!("`ram` version {version} (krr reads 4)"),
                            ));
                        }
                        self.live.insert(id, name);
                        self.ram.read_body(src)?;
                    } else {
                        self.device(src, &name, instance, version)?;
                    }
                    footer(src, id, &mut self.footers)?;
                }
                section::PART | section::END => {
                    let id = src.be32("a section id")?;
                    if !self.live.contains_key(&id) {
                        return Err(src
                            .ctx
                            .invalid(at, format!("section id {id} was never started")));
                    }
                    self.ram.read_body(src)?;
                    footer(src, id, &mut self.footers)?;
                }
                section::COMMAND => {
                    return Err(src
                        .ctx
                        .unsupported(at, "a postcopy/command section in a snapshot"))
                }
                t => {
                    return Err(src
                        .ctx
                        .invalid(at, format!("unknown section type {t:#04x}")))
                }
            }
        }
        // The optional description after EOF.
        if src.peek_u8()? == Some(section::VMDESCRIPTION) {
            src.u8("the description marker")?;
            let len = src.be32("the description length")?;
            src.skip(len as u64, "the VM description")?;
        }
        self.finish(src)
    }

    fn finish(mut self, src: &mut Src) -> Result<Snapshot, KrrError> {
        let mut s = self.snap;
        s.end = src.offset();
        s.ram_total = self.ram.total;
        s.ram_blocks = self.ram.blocks;
        s.ram = self.ram.main;
        if s.ram_blocks.is_empty() {
            return Err(src.ctx.invalid(s.end, "the stream has no RAM"));
        }
        if s.ram.size == 0 {
            return Err(src.ctx.invalid(
                s.end,
                format!("the stream has no `{}` RAM block", ram::MAIN_BLOCK),
            ));
        }
        self.cpus.sort_by_key(|c| c.0);
        for (index, cpu) in self.cpus {
            let common = self
                .commons
                .iter()
                .find(|c| c.0 == index)
                .map(|c| c.1.clone());
            s.vcpus.push(Vcpu { index, cpu, common });
        }
        if s.vcpus.is_empty() {
            return Err(src.ctx.invalid(s.end, "the stream has no `cpu` section"));
        }
        s.described = matches!(self.desc, Some(Some(_)));
        Ok(s)
    }

    fn configuration(&mut self, src: &mut Src) -> Result<(), KrrError> {
        let len = src.be32("the machine type length")?;
        let at = src.offset();
        let b = src.bytes(len as u64, "the machine type")?;
        self.snap.machine = String::from_utf8(b)
            .map_err(|_| src.ctx.invalid(at, "the machine type is not UTF-8"))?;
        while src.peek_u8()? == Some(vmstate::SUBSECTION) {
            let at = src.offset();
            src.u8("a subsection marker")?;
            let name = src.str8("a subsection name")?;
            src.be32("a subsection version")?;
            match name.as_str() {
                "configuration/target-page-bits" => {
                    src.be32("target-page-bits")?;
                }
                "configuration/uuid" => src.skip(16, "the uuid")?,
                "configuration/capabilities" => {
                    let n = src.be32("the capability count")?;
                    for _ in 0..n {
                        src.str8("a capability name")?;
                    }
                }
                _ => {
                    return Err(src
                        .ctx
                        .unsupported(at, format!("configuration subsection `{name}`")))
                }
            }
        }
        Ok(())
    }

    /// The description, searched for at the first device section.
    fn desc(&mut self, src: &mut Src) -> Result<Option<&VmDesc>, KrrError> {
        if self.desc.is_none() {
            self.desc = Some(vmdesc::find(src)?.map(|(_, d)| d));
        }
        Ok(self.desc.as_ref().and_then(|d| d.as_ref()))
    }

    fn device(
        &mut self,
        src: &mut Src,
        name: &str,
        instance: u32,
        version: u32,
    ) -> Result<(), KrrError> {
        let at = src.offset();
        let dd = self
            .desc(src)?
            .and_then(|d| d.devices.get(&(name.to_string(), instance)))
            .cloned();
        let dd = dd.as_ref();
        let want = |src: &Src, v: u32| -> Result<(), KrrError> {
            if version == v {
                Ok(())
            } else {
                Err(src.ctx.unsupported(
                    at,
                    format!("`{name}` version {version} (krr reads version {v})"),
                ))
            }
        };
        let read = if name == "cpu" {
            want(src, 12)?;
            let c = cpu::read_cpu(src, dd)?;
            self.cpus.push((instance, c));
            true
        } else if name == "cpu_common" {
            want(src, 1)?;
            let c = cpu::read_cpu_common(src, dd)?;
            self.commons.push((instance, c));
            true
        } else if named(name, "apic") {
            want(src, 3)?;
            let a = devices::read_apic(src, dd)?;
            self.snap.apics.push((instance, a));
            true
        } else if name == "i8259" {
            want(src, 1)?;
            let p = devices::read_pic(src)?;
            self.snap.pics.push((instance, p));
            skip_described_rest(src, dd, at, name)?;
            true
        } else if name == "ioapic" {
            want(src, 3)?;
            let a = devices::read_ioapic(src)?;
            self.snap.ioapic = Some(a);
            skip_described_rest(src, dd, at, name)?;
            true
        } else if named(name, "ivshmem-plain") {
            want(src, 0)?;
            let i = devices::read_ivshmem(src, name)?;
            self.snap.ivshmem = Some(i);
            skip_described_rest(src, dd, at, name)?;
            true
        } else {
            let Some(d) = dd else {
                return Err(src.ctx.unsupported(
                    at,
                    format!(
                        "device section `{name}` instance {instance}: its layout is not known and the stream has no description of it"
                    ),
                ));
            };
            src.skip(d.body_size(), &format!("section `{name}`"))?;
            false
        };
        let size = src.offset() - at;
        if let Some(d) = dd {
            if d.body_size() != size {
                return Err(src.ctx.invalid(
                    at,
                    format!(
                        "section `{name}` instance {instance}: {size} bytes read, the stream's description says {}",
                        d.body_size()
                    ),
                ));
            }
        }
        self.snap.sections.push(SectionInfo {
            name: name.to_string(),
            instance,
            version,
            offset: at,
            size,
            read,
        });
        Ok(())
    }
}

/// Anything after the fields krr reads (subsections a later release added), by the
/// stream's description.
fn skip_described_rest(
    src: &mut Src,
    dd: Option<&vmdesc::DeviceDesc>,
    at: u64,
    name: &str,
) -> Result<(), KrrError> {
    if let Some(d) = dd {
        let done = src.offset() - at;
        if d.body_size() > done {
            src.skip(d.body_size() - done, &format!("the rest of `{name}`"))?;
        }
    }
    Ok(())
}

/// The section footer (`0x7e`, be32 section id), present on 7.0 and later machine types:
/// all sections of a stream have one or none do.
fn footer(src: &mut Src, id: u32, footers: &mut Option<bool>) -> Result<(), KrrError> {
    let here = src.peek_u8()? == Some(section::FOOTER);
    let want = *footers.get_or_insert(here);
    if want != here {
        return Err(src.ctx.invalid(
            src.offset(),
            if want {
                format!("section {id} has no footer where the stream's other sections have one")
            } else {
                format!("a footer after section {id} in a stream without footers")
            },
        ));
    }
    if here {
        let at = src.offset();
        src.u8("a section footer")?;
        let got = src.be32("the footer's section id")?;
        if got != id {
            return Err(src.ctx.invalid(
                at,
                format!("footer names section {got}, the section was {id}"),
            ));
        }
    }
    Ok(())
}
