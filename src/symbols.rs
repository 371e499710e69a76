//! Kernel symbols for people reading a replay without gdb: addresses shown as `func+0xoff`
//! and breakpoints named by symbol. From a System.map (`ADDR TYPE NAME` lines, as Debian's
//! kernel packages ship in /boot and /proc/kallsyms prints) or a vmlinux's ELF symbols.

use std::path::Path;

/// Symbols sorted by address.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    /// (address, size if known, name), sorted by address.
    entries: Vec<(u64, Option<u64>, String)>,
}

impl SymbolTable {
    /// A System.map or /proc/kallsyms listing: `ADDR TYPE NAME [module]` per line. Only text
    /// symbols (types t/T/w/W) are kept; absolute, data and zero addresses are not code.
    pub fn from_system_map(path: &Path) -> Result<SymbolTable, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::parse_system_map(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse_system_map(text: &str) -> Result<SymbolTable, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (f.next(), f.next(), f.next()) else {
                if line.trim().is_empty() {
                    continue;
                }
                return Err(format!("line {}: not `ADDRESS TYPE NAME`: {line:?}", n + 1));
            };
            let addr = u64::from_str_radix(addr, 16)
                .map_err(|_| format!("line {}: `{addr}` is not a hex address", n + 1))?;
            if matches!(ty, "t" | "T" | "w" | "W") && addr != 0 {
                entries.push((addr, None, name.to_string()));
            }
        }
        if entries.is_empty() {
            return Err(if text.contains("real System.map is in") {
                "a placeholder without symbols (Debian's /boot/System.map): use the System.map or vmlinux of the linux-image-...-dbg package, or the guest's /proc/kallsyms".into()
            } else {
                "no text symbols".into()
            });
        }
        Ok(Self::sorted(entries))
    }

    /// The symbols of a vmlinux (link-time addresses: a kernel booted with `nokaslr`).
    pub fn from_vmlinux(path: &Path) -> Result<SymbolTable, String> {
        let v = crate::vmlinux::Vmlinux::open(path).map_err(|e| e.to_string())?;
        Ok(Self::of_vmlinux(&v))
    }

    /// The symbols of a vmlinux already loaded.
    pub fn of_vmlinux(v: &crate::vmlinux::Vmlinux) -> SymbolTable {
        let entries = v
            .symbols()
            .filter(|(_, s)| s.addr != 0)
            .map(|(n, s)| (s.addr, (s.size != 0).then_some(s.size), n.to_string()))
            .collect();
        Self::sorted(entries)
    }

    fn sorted(mut entries: Vec<(u64, Option<u64>, String)>) -> SymbolTable {
        // At one address, prefer the name with a size, then the shortest (aliases such as
        // `__pfx_` padding or `_text` next to a function).
        entries.sort_by(|a, b| {
            (a.0, a.1.is_none(), a.2.len(), &a.2).cmp(&(b.0, b.1.is_none(), b.2.len(), &b.2))
        });
        entries.dedup_by_key(|e| e.0);
        SymbolTable { entries }
    }

    /// The same symbols moved by a KASLR `slide`.
    pub fn shifted(mut self, slide: u64) -> SymbolTable {
        for e in &mut self.entries {
            e.0 = e.0.wrapping_add(slide);
        }
        self
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `name+0xoff` for an address inside a symbol: the nearest symbol at or below it, within
    /// its size when the size is known, else before the next symbol.
    pub fn describe(&self, addr: u64) -> Option<String> {
        let i = self
            .entries
            .partition_point(|e| e.0 <= addr)
            .checked_sub(1)?;
        let (start, size, name) = &self.entries[i];
        let off = addr - start;
        if size.is_some_and(|s| off >= s) {
            return None;
        }
        Some(if off == 0 {
            name.clone()
        } else {
            format!("{name}+{off:#x}")
        })
    }

    /// ` (name+0xoff)` or nothing: for appending to an address in a message.
    pub fn suffix(table: Option<&SymbolTable>, addr: u64) -> String {
        table
            .and_then(|t| t.describe(addr))
            .map(|d| format!(" ({d})"))
            .unwrap_or_default()
    }

    /// A symbol's address.
    pub fn lookup(&self, name: &str) -> Option<u64> {
        self.entries.iter().find(|e| e.2 == name).map(|e| e.0)
    }

    /// A breakpoint's address from `SYMBOL`, `SYMBOL+OFFSET` or a hex address (`0x...`).
    pub fn resolve(table: Option<&SymbolTable>, spec: &str) -> Result<u64, String> {
        let hex = |s: &str| {
            s.strip_prefix("0x")
                .or_else(|| s.strip_prefix("0X"))
                .and_then(|h| u64::from_str_radix(h, 16).ok())
        };
        if let Some(a) = hex(spec) {
            return Ok(a);
        }
        let (name, off) = match spec.split_once('+') {
            Some((n, o)) => {
                let off = hex(o)
                    .or_else(|| o.parse().ok())
                    .ok_or_else(|| format!("`{spec}`: `{o}` is not an offset"))?;
                (n, off)
            }
            None => (spec, 0),
        };
        let Some(t) = table else {
            return Err(format!(
                "`{spec}`: a symbol needs --system-map FILE or --vmlinux FILE (or give a 0x address)"
            ));
        };
        let base = t
            .lookup(name)
            .ok_or_else(|| format!("`{name}`: no such text symbol"))?;
        Ok(base.wrapping_add(off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
0000000000000000 A __per_cpu_start
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81001000 T do_one_initcall
ffffffff81001200 t helper
ffffffff82000000 D jiffies
ffffffff81001300 W weak_one
";

    #[test]
    fn system_map_lookup_describe_resolve() {
        let t = SymbolTable::parse_system_map(MAP).unwrap();
        assert_eq!(t.len(), 4, "text only, one name per address");
        assert_eq!(
            t.describe(0xffff_ffff_8100_1000).unwrap(),
            "do_one_initcall"
        );
        assert_eq!(
            t.describe(0xffff_ffff_8100_1010).unwrap(),
            "do_one_initcall+0x10"
        );
        assert_eq!(t.describe(0xffff_ffff_8100_1250).unwrap(), "helper+0x50");
        assert_eq!(t.describe(0xffff_ffff_8000_0000), None);
        assert_eq!(t.describe(0xffff_ffff_8100_0004).unwrap(), "_text+0x4");
        let r = |s| SymbolTable::resolve(Some(&t), s);
        assert_eq!(r("helper"), Ok(0xffff_ffff_8100_1200));
        assert_eq!(r("helper+0x8"), Ok(0xffff_ffff_8100_1208));
        assert_eq!(r("helper+8"), Ok(0xffff_ffff_8100_1208));
        assert_eq!(r("0xffffffff81001300"), Ok(0xffff_ffff_8100_1300));
        assert!(r("jiffies").unwrap_err().contains("no such text symbol"));
        assert!(SymbolTable::resolve(None, "helper")
            .unwrap_err()
            .contains("--system-map"));
        assert_eq!(SymbolTable::resolve(None, "0x10"), Ok(0x10));
        assert!(SymbolTable::parse_system_map("zz T x\n").is_err());
        assert!(SymbolTable::parse_system_map("ffff D x\n").is_err());
        let debian =
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n";
        assert!(SymbolTable::parse_system_map(debian)
            .unwrap_err()
            .contains("/proc/kallsyms"));
    }
}
