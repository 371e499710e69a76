//! The stream's own description of its device sections: the VM-description JSON that QEMU
//! writes after stream A's EOF (`{"page_size":..,"devices":[{"name","instance_id",
//! "vmsd_name","version","fields":[{"name","type","size"[,"array_len"]}],
//! "subsections":[..]}]}`), turned into byte sizes, and how to find it.

use crate::krr_rec::error::KrrError;
use crate::krr_rec::json::Json;
use std::collections::HashMap;

use super::src::Src;

/// A subsection as the description gives it: its name and its byte size without its own
/// framing (`u8 0x05, u8 len, name, be32 version`) but with its nested subsections' framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubDesc {
    pub name: String,
    pub size: u64,
}

/// One device section's body, as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDesc {
    pub vmsd_name: String,
    pub version: u64,
    /// Bytes of the fields (not of the subsections).
    pub fields_size: u64,
    pub subsections: Vec<SubDesc>,
}

impl DeviceDesc {
    /// The whole body: fields and subsections with their framing.
    pub fn body_size(&self) -> u64 {
        self.subsections
            .iter()
            .fold(self.fields_size, |a, s| a.saturating_add(framed(s)))
    }
    pub fn subsection(&self, name: &str) -> Option<&SubDesc> {
        self.subsections.iter().find(|s| s.name == name)
    }
}

fn framed(s: &SubDesc) -> u64 {
    s.size.saturating_add(6 + s.name.len() as u64)
}

/// The described devices by (section name, instance id).
#[derive(Debug, Clone, Default)]
pub struct VmDesc {
    pub page_size: u64,
    pub devices: HashMap<(String, u32), DeviceDesc>,
}

fn fields_size(v: &Json) -> Option<u64> {
    let mut total = 0u64;
    for f in v.get("fields").map(Json::as_arr).unwrap_or(&[]) {
        let size = f.get("size")?.as_u64()?;
        let n = f.get("array_len").map_or(Some(1), Json::as_u64)?;
        total = total.checked_add(size.checked_mul(n)?)?;
    }
    Some(total)
}

/// A vmsd description (device or subsection): (fields size, subsections).
fn describe(v: &Json) -> Option<(u64, Vec<SubDesc>)> {
    let fields = fields_size(v)?;
    let mut subs = Vec::new();
    for s in v.get("subsections").map(Json::as_arr).unwrap_or(&[]) {
        let name = s.get("vmsd_name")?.as_str()?.to_string();
        let (f, nested) = describe(s)?;
        let size = nested.iter().try_fold(f, |a, n| a.checked_add(framed(n)))?;
        subs.push(SubDesc { name, size });
    }
    Some((fields, subs))
}

impl VmDesc {
    pub fn from_json(j: &Json) -> Option<VmDesc> {
        let page_size = j.get("page_size")?.as_u64()?;
        let mut devices = HashMap::new();
        for d in j.get("devices")?.as_arr() {
            let name = d.get("name")?.as_str()?.to_string();
            let instance = u32::try_from(d.get("instance_id")?.as_u64()?).ok()?;
            let (fields_size, subsections) = describe(d)?;
            devices.insert(
                (name, instance),
                DeviceDesc {
                    vmsd_name: d
                        .get("vmsd_name")
                        .and_then(Json::as_str)
                        .unwrap_or("")
                        .to_string(),
                    version: d.get("version").and_then(Json::as_u64).unwrap_or(0),
                    fields_size,
                    subsections,
                },
            );
        }
        Some(VmDesc { page_size, devices })
    }
}

/// The largest description krr reads (QEMU's are tens of KiB).
const MAX_JSON: u64 = 64 << 20;
/// Candidates tried before giving up.
const MAX_CANDIDATES: usize = 64;

/// Find the description after stream A's EOF: the bytes `00 06 <be32 len> {` followed by
/// `len` bytes of JSON with a `devices` list, searched forward from the current offset.
/// Returns its offset (of the 0x06 byte) and contents, and leaves the stream where it was.
pub fn find(src: &mut Src) -> Result<Option<(u64, VmDesc)>, KrrError> {
    let start = src.offset();
    let mut found = None;
    let mut at = start;
    let mut tried = 0;
    let mut window: Vec<u8> = Vec::new();
    let mut window_base = start;
    'scan: while at < src.len() && tried < MAX_CANDIDATES {
        // Slide a 1 MiB window (keeping 7 bytes of overlap).
        let keep = window.len().min(6);
        window.drain(..window.len() - keep);
        window_base = at - keep as u64;
        let n = (src.len() - at).min(1 << 20);
        src.seek(at)?;
        window.extend_from_slice(&src.bytes(n, "the VM description search")?);
        at += n;
        let mut i = 0;
        while i + 7 <= window.len() {
            if window[i] == 0 && window[i + 1] == 6 && window[i + 6] == b'{' {
                let len = u32::from_be_bytes(window[i + 2..i + 6].try_into().expect("4")) as u64;
                let json_at = window_base + i as u64 + 6;
                if len <= MAX_JSON && json_at + len <= src.len() {
                    tried += 1;
                    src.seek(json_at)?;
                    let text = src.bytes(len, "the VM description")?;
                    if let Some(d) = Json::parse(&text).ok().and_then(|j| VmDesc::from_json(&j)) {
                        found = Some((json_at - 5, d));
                        break 'scan;
                    }
                    if tried >= MAX_CANDIDATES {
                        break 'scan;
                    }
                }
            }
            i += 1;
        }
    }
    let _ = window_base;
    src.seek(start)?;
    Ok(found)
}
