//! The DWARF line table: which addresses a source line compiled to (what gdb's
//! `break FILE:LINE` resolves, and KRR's LOCK_RELEASE trap point is defined by).

use super::{Vmlinux, VmlinuxError};
use object::{Object, ObjectSection};
use std::borrow::Cow;

impl Vmlinux {
    /// Link-time addresses of the statement rows of line `line` in a source file whose path
    /// (directory and name as the line table gives them) ends with `file`, lowest first.
    pub fn line_addresses(&self, file: &str, line: u64) -> Result<Vec<u64>, VmlinuxError> {
        let dwarf_error = |e: gimli::Error| self.lookup_error(format!("DWARF line table: {e}"));
        let elf =
            object::File::parse(&*self.file).map_err(|e| self.lookup_error(format!("ELF: {e}")))?;
        if elf.section_by_name(".debug_line").is_none() {
            return Err(self.lookup_error(format!(
                "no DWARF line table (.debug_line), needed to find {file}:{line}: use the vmlinux with debug information"
            )));
        }
        let sections = gimli::DwarfSections::load(|id| -> Result<Cow<[u8]>, gimli::Error> {
            Ok(elf
                .section_by_name(id.name())
                .and_then(|s| s.uncompressed_data().ok())
                .unwrap_or(Cow::Borrowed(&[])))
        })
        .map_err(dwarf_error)?;
        let dwarf = sections.borrow(|s| gimli::EndianSlice::new(s, gimli::LittleEndian));
        let mut found = Vec::new();
        let mut units = dwarf.units();
        while let Some(header) = units.next().map_err(dwarf_error)? {
            let unit = dwarf.unit(header).map_err(dwarf_error)?;
            let Some(program) = unit.line_program.clone() else {
                continue;
            };
            let mut rows = program.rows();
            while let Some((header, row)) = rows.next_row().map_err(dwarf_error)? {
                if row.end_sequence() || !row.is_stmt() || row.line().map(|l| l.get()) != Some(line)
                {
                    continue;
                }
                let Some(entry) = row.file(header) else {
                    continue;
                };
                let name = dwarf
                    .attr_string(&unit, entry.path_name())
                    .map_err(dwarf_error)?;
                let mut path = String::new();
                if let Some(dir) = entry.directory(header) {
                    if let Ok(d) = dwarf.attr_string(&unit, dir) {
                        path.push_str(&d.to_string_lossy());
                        path.push('/');
                    }
                }
                path.push_str(&name.to_string_lossy());
                if path.ends_with(file) {
                    found.push(row.address());
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }
}
