//! Subsections of a vmstate body: `u8 0x05, u8 len, name, be32 version, fields`, read
//! while the next byte is 0x05. Their size comes from the stream's description or, without
//! one, from the table of known subsections of the reader.

use crate::krr_rec::error::KrrError;

use super::src::Src;
use super::vmdesc::DeviceDesc;

pub const SUBSECTION: u8 = 0x05;

/// A subsection as stored: its fields (and any nested subsections) as raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subsection {
    pub name: String,
    pub version: u32,
    pub data: Vec<u8>,
}

impl Subsection {
    pub fn be64(&self, off: usize) -> Option<u64> {
        Some(u64::from_be_bytes(
            self.data.get(off..off + 8)?.try_into().ok()?,
        ))
    }
    pub fn be32(&self, off: usize) -> Option<u32> {
        Some(u32::from_be_bytes(
            self.data.get(off..off + 4)?.try_into().ok()?,
        ))
    }
    pub fn be16(&self, off: usize) -> Option<u16> {
        Some(u16::from_be_bytes(
            self.data.get(off..off + 2)?.try_into().ok()?,
        ))
    }
}

/// The subsections of a section named `parent` (vmsd name; empty: names not checked, as
/// for `apic`, whose `apic_sipi` has no prefix), in stream order.
pub fn read_subsections(
    src: &mut Src,
    parent: &str,
    desc: Option<&DeviceDesc>,
    known_size: &dyn Fn(&str) -> Option<u64>,
) -> Result<Vec<Subsection>, KrrError> {
    let mut out = Vec::new();
    while src.peek_u8()? == Some(SUBSECTION) {
        let at = src.offset();
        src.u8("a subsection marker")?;
        let name = src.str8("a subsection name")?;
        let version = src.be32("a subsection version")?;
        if !parent.is_empty() && !name.starts_with(&format!("{parent}/")) {
            return Err(src.ctx.invalid(
                at,
                format!("subsection `{name}` does not belong to `{parent}`"),
            ));
        }
        let size = match desc {
            Some(d) => d.subsection(&name).map(|s| s.size).ok_or_else(|| {
                src.ctx.invalid(
                    at,
                    format!("subsection `{name}` is not in the stream's description"),
                )
            })?,
            None => known_size(&name).ok_or_else(|| {
                src.ctx.unsupported(
                    at,
                    format!(
                        "subsection `{name}` of unknown size and the stream has no description"
                    ),
                )
            })?,
        };
        let data = src.bytes(size, &format!("subsection `{name}`"))?;
        out.push(Subsection {
            name,
            version,
            data,
        });
    }
    Ok(out)
}
