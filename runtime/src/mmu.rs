//! Linear-to-physical translation (4-level paging) and the slow paths of the software TLB
//! ([`crate::tlb`]). Compiled code does the TLB lookup inline; a miss calls
//! [`load_slow`]/[`store_slow`], which walk the page tables, set accessed/dirty bits as the
//! hardware does, fill the entry and raise #PF/#GP through [`CpuState::exception`].
//!
//! A write entry is only filled when the walk has already set the dirty bit and the page holds
//! no translated code, so the first write to a clean page and every write to a code page take
//! the slow path.

/// Page-table entry bits (also the leaf flags for [`PageTableBuilder::map_4k`]).
pub use crate::arch::pte;
use crate::arch::{cr0, cr4, efer, pf_error, rflags, vector};
use crate::cpu::{CpuState, ExceptionRecord};
// The TLB's names stay reachable as `mmu::X` for the engine.
pub use crate::tlb::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Execute,
}

/// What translation found, beside the physical address.
#[derive(Clone, Copy, Debug)]
pub struct Translation {
    pub phys: u64,
    /// The page may be cached for writes (writable, already dirty).
    pub write_ok: bool,
    /// A global page (PTE.G with CR4.PGE): its translation survives CR3 loads.
    pub global: bool,
    /// Log2 of the size of the page mapping it (12, 21 or 30).
    pub page_shift: u32,
    /// A user page (U/S set at every level).
    pub user_page: bool,
}

pub fn is_canonical(linear: u64) -> bool {
    ((linear as i64) << 16 >> 16) as u64 == linear
}

fn gp0() -> ExceptionRecord {
    ExceptionRecord::fault(vector::GP, Some(0))
}

fn page_fault(linear: u64, code: u32) -> ExceptionRecord {
    ExceptionRecord::page_fault(code, linear)
}

fn phys_read_u64(cpu: &CpuState, phys: u64) -> Option<u64> {
    let host = cpu.exec.ram_ptr(phys, 8)?;
    // SAFETY: `ram_ptr` checked the 8 bytes against the RAM windows of the guest mapping that
    // `mem_base` points to, which the owning `Core` keeps beside the CPU state (see
    // `Core::state_mut`); unaligned read allowed.
    Some(unsafe { std::ptr::read_unaligned(host as *const u64) })
}

fn phys_write_u64(cpu: &mut CpuState, phys: u64, v: u64) {
    if let Some(host) = cpu.exec.ram_ptr(phys, 8) {
        cpu.mark_dirty_page(phys >> 12);
        // SAFETY: as in phys_read_u64.
        unsafe { std::ptr::write_unaligned(host as *mut u64, v) }
    }
}

/// Translate a linear address for an access at privilege `user` (CPL3 or an explicit user
/// access), walking the page tables and updating accessed/dirty bits.
pub fn translate(
    cpu: &mut CpuState,
    linear: u64,
    access: Access,
    user: bool,
) -> Result<Translation, ExceptionRecord> {
    if !is_canonical(linear) {
        return Err(gp0());
    }
    if cpu.cr0 & cr0::PG == 0 {
        return Ok(Translation {
            phys: linear & 0xffff_ffff,
            write_ok: true,
            global: false,
            page_shift: 12,
            user_page: false,
        });
    }
    let nxe = cpu.efer & efer::NXE != 0;
    let write = access == Access::Write;
    let fetch = access == Access::Execute;
    let mut err = 0u32;
    if write {
        err |= pf_error::W;
    }
    if user {
        err |= pf_error::U;
    }
    if fetch && (nxe || cpu.cr4 & cr4::SMEP != 0) {
        err |= pf_error::I;
    }
    let mut table = cpu.cr3 & pte::ADDR;
    let mut writable = true;
    let mut user_ok = true;
    let mut no_exec = false;
    let mut entries: [(u64, u64); 4] = [(0, 0); 4];
    let mut levels = 0;
    let mut page_size_shift = 12;
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let entry_addr = table + ((linear >> shift) & 0x1ff) * 8;
        let Some(entry) = phys_read_u64(cpu, entry_addr) else {
            return Err(page_fault(linear, err | pf_error::RSVD));
        };
        if entry & pte::P == 0 {
            return Err(page_fault(linear, err));
        }
        if (entry & pte::NX != 0 && !nxe) || (level == 3 && entry & pte::PS != 0) {
            return Err(page_fault(linear, err | pf_error::P | pf_error::RSVD));
        }
        writable &= entry & pte::RW != 0;
        user_ok &= entry & pte::US != 0;
        no_exec |= nxe && entry & pte::NX != 0;
        entries[levels] = (entry_addr, entry);
        levels += 1;
        if level > 0 && entry & pte::PS != 0 {
            let mask = (1u64 << shift) - 1;
            // Reserved bits 13..shift of a large-page entry must be zero.
            if (entry & pte::ADDR & mask) >> 13 != 0 {
                return Err(page_fault(linear, err | pf_error::P | pf_error::RSVD));
            }
            table = entry & pte::ADDR & !mask;
            page_size_shift = shift;
            break;
        }
        table = entry & pte::ADDR;
    }
    let violation = if user {
        !user_ok || (write && !writable) || (fetch && no_exec)
    } else {
        (write && !writable && cpu.cr0 & cr0::WP != 0)
            || (fetch && no_exec)
            || (fetch && user_ok && cpu.cr4 & cr4::SMEP != 0)
            || (!fetch && user_ok && cpu.cr4 & cr4::SMAP != 0 && cpu.rflags & rflags::AC == 0)
    };
    if violation {
        return Err(page_fault(linear, err | pf_error::P));
    }
    // Accessed on every level, dirty on the leaf for writes: only written when they change.
    for (i, &(addr, entry)) in entries[..levels].iter().enumerate() {
        let leaf = i == levels - 1;
        let mut new = entry | pte::A;
        if leaf && write {
            new |= pte::D;
        }
        if new != entry {
            phys_write_u64(cpu, addr, new);
        }
    }
    let (_, leaf) = entries[levels - 1];
    let offset_mask = (1u64 << page_size_shift) - 1;
    let phys = table | (linear & offset_mask);
    let dirty = write || leaf & pte::D != 0;
    let write_ok = dirty && (writable || (!user && cpu.cr0 & cr0::WP == 0));
    Ok(Translation {
        phys,
        write_ok,
        global: leaf & pte::G != 0 && cpu.cr4 & cr4::PGE != 0,
        page_shift: page_size_shift,
        user_page: user_ok,
    })
}

/// The MMU index compiled code and helpers use: bit 0 for CPL3 (user accesses), bit 1 when
/// accesses must be checked: a data breakpoint is enabled in DR7, or alignment checking is on
/// (CR0.AM, RFLAGS.AC at CPL3). The checked indices have no TLB entries, so every access takes
/// the slow path, which raises #AC and records data-breakpoint hits.
#[inline]
pub fn mmu_index(cpu: &CpuState) -> usize {
    let user = cpu.cpl() == 3;
    let checked = crate::debugreg::alignment_checked(cpu)
        || (cpu.dr[7] & crate::debugreg::dr7::ENABLE_MASK != 0
            && crate::debugreg::data_breakpoints(cpu.dr[7]) != 0);
    user as usize | (checked as usize) << 1
}

/// Is `mmu_idx` a user (CPL3) index?
pub fn is_user_index(mmu_idx: usize) -> bool {
    mmu_idx & 1 != 0
}

/// The checks of the checked MMU indices, before translation: a non-canonical address faults
/// first (#GP(0)), then a misaligned access with alignment checking on (#AC(0)); enabled data
/// breakpoints the access hits are recorded in `cpu.db_hits`.
fn checked_access(
    cpu: &mut CpuState,
    linear: u64,
    size: usize,
    access: Access,
    mmu_idx: usize,
) -> Result<(), MemFault> {
    if !is_canonical(linear) {
        cpu.exec.exception = gp0();
        return Err(MemFault::Exception);
    }
    if is_user_index(mmu_idx)
        && crate::debugreg::alignment_checked(cpu)
        && crate::debugreg::alignment_fault(linear, size)
    {
        cpu.exec.exception = ExceptionRecord::fault(vector::AC, Some(0));
        return Err(MemFault::Exception);
    }
    if cpu.dr[7] & crate::debugreg::dr7::ENABLE_MASK != 0 {
        cpu.exec.db_hits |=
            crate::debugreg::data_hits(cpu, linear, size as u64, access == Access::Write);
    }
    Ok(())
}

/// Outcome of a slow-path memory access that could not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemFault {
    /// An architectural exception, recorded in `cpu.exception`.
    Exception,
    /// The physical address is not RAM (MMIO, or nothing there).
    Unbacked { phys: u64 },
}

/// Translate one page for `access`, filling the TLB when the page is RAM: the physical
/// address and where it lies in the guest mapping.
fn translate_and_fill(
    cpu: &mut CpuState,
    linear: u64,
    access: Access,
    mmu_idx: usize,
) -> Result<(u64, u64), MemFault> {
    let t = match translate(cpu, linear, access, is_user_index(mmu_idx)) {
        Ok(t) => t,
        Err(e) => {
            cpu.exec.exception = e;
            return Err(MemFault::Exception);
        }
    };
    let page_phys = t.phys & !0xfff;
    let Some(page_offset) = cpu.exec.ram.offset(page_phys, 4096) else {
        return Err(MemFault::Unbacked { phys: t.phys });
    };
    let page = linear & !0xfff;
    let addend = (cpu.exec.mem_base as u64)
        .wrapping_add(page_offset)
        .wrapping_sub(page);
    let code = access == Access::Write && cpu.is_code_page(page_phys >> 12);
    // A watched page stays out of the TLB: every access to it comes here.
    let watched = cpu.exec.watch.page_watched(page_phys >> 12);
    if mmu_idx < 2 && !watched && (access != Access::Write || (t.write_ok && !code)) {
        // Reads may always be cached after a successful walk; writes only once dirty. Writes
        // through the entry will not call back, so the page counts as written from now on.
        if access == Access::Write {
            cpu.mark_dirty_page(page_phys >> 12);
        }
        let write = access == Access::Write;
        // SMAP is checked at every access: such an entry lives only while RFLAGS.AC is set.
        let smap_user = mmu_idx == 0 && t.user_page && cpu.cr4 & cr4::SMAP != 0;
        let tlb = &mut cpu.exec.tlb;
        tlb.fill(
            mmu_idx,
            write,
            page,
            addend,
            t.global,
            smap_user,
            t.page_shift,
        );
    }
    Ok((t.phys, page_offset | (t.phys & 0xfff)))
}

/// One page's part of an access: its physical address, where that lies in the guest mapping,
/// and how many bytes.
#[derive(Clone, Copy, Default)]
struct Part {
    phys: u64,
    offset: u64,
    len: usize,
}

/// Translate every byte range of an access (at most two pages) before touching memory, so that
/// a fault on the second page leaves the first untouched.
fn translate_access(
    cpu: &mut CpuState,
    linear: u64,
    size: usize,
    access: Access,
    mmu_idx: usize,
) -> Result<[Part; 2], MemFault> {
    cpu.exec.tlb.misses += 1;
    if mmu_idx >= 2 {
        checked_access(cpu, linear, size, access, mmu_idx)?;
    }
    let first_len = (4096 - (linear & 0xfff) as usize).min(size);
    let (phys, offset) = translate_and_fill(cpu, linear, access, mmu_idx)?;
    let p0 = Part {
        phys,
        offset,
        len: first_len,
    };
    if first_len == size {
        return Ok([p0, Part::default()]);
    }
    let second = linear.wrapping_add(first_len as u64);
    let (phys, offset) = translate_and_fill(cpu, second, access, mmu_idx)?;
    Ok([
        p0,
        Part {
            phys,
            offset,
            len: size - first_len,
        },
    ])
}

/// Raise the fault a write of `size` bytes at `linear` would raise, without writing (ENTER
/// checks its final stack pointer this way, MASKMOVDQU its 16-byte window). The translation is
/// cached as a write's would be. A page that is not RAM does not fault when a bus takes MMIO
/// (the stores there go to the bus): both pages are still checked.
pub fn probe_write(
    cpu: &mut CpuState,
    linear: u64,
    size: usize,
    mmu_idx: usize,
) -> Result<(), MemFault> {
    cpu.exec.tlb.misses += 1;
    if mmu_idx >= 2 {
        checked_access(cpu, linear, size, Access::Write, mmu_idx)?;
    }
    let first_len = (4096 - (linear & 0xfff) as usize).min(size);
    let second = (first_len < size).then(|| linear.wrapping_add(first_len as u64));
    for addr in [Some(linear), second].into_iter().flatten() {
        match translate_and_fill(cpu, addr, Access::Write, mmu_idx) {
            Ok(_) => {}
            Err(MemFault::Unbacked { .. }) if cpu.exec.bus.is_some() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Load `size` (1, 2, 4, 8 or 16) bytes at `linear` into `out`.
pub fn load_bytes(
    cpu: &mut CpuState,
    linear: u64,
    out: &mut [u8],
    mmu_idx: usize,
) -> Result<(), MemFault> {
    let parts = translate_access(cpu, linear, out.len(), Access::Read, mmu_idx)?;
    watch_check(cpu, &parts, false)?;
    let mut done = 0;
    for Part { offset, len, .. } in parts {
        if len == 0 {
            continue;
        }
        // SAFETY: translate_and_fill only returns offsets whose whole page lies in the guest
        // mapping (inside one RAM window), and `len` stays inside that page.
        unsafe {
            std::ptr::copy_nonoverlapping(
                cpu.exec.mem_base.add(offset as usize),
                out[done..].as_mut_ptr(),
                len,
            )
        };
        done += len;
    }
    Ok(())
}

/// An access to a watched range (see [`crate::watch`]): outside the re-run, the instruction
/// ends before touching memory, like a precise fault; in the re-run, the hit is recorded.
fn watch_check(cpu: &mut CpuState, parts: &[Part; 2], write: bool) -> Result<(), MemFault> {
    if cpu.exec.watch.ranges.is_empty() || cpu.exec.watch.implicit {
        return Ok(());
    }
    for p in parts.iter().filter(|p| p.len > 0) {
        if let Some(r) = cpu.exec.watch.check(p.phys, p.len as u64, write) {
            if cpu.exec.watch.stepping {
                cpu.exec.watch.hit.get_or_insert(crate::watch::WatchHit {
                    addr: r.addr,
                    write,
                });
            } else {
                cpu.exec.exception = ExceptionRecord::fault(crate::watch::RESTART_VECTOR, None);
                return Err(MemFault::Exception);
            }
        }
    }
    Ok(())
}

/// Store `data` at `linear`.
pub fn store_bytes(
    cpu: &mut CpuState,
    linear: u64,
    data: &[u8],
    mmu_idx: usize,
) -> Result<(), MemFault> {
    let parts = translate_access(cpu, linear, data.len(), Access::Write, mmu_idx)?;
    watch_check(cpu, &parts, true)?;
    let mut done = 0;
    for Part { phys, offset, len } in parts {
        if len == 0 {
            continue;
        }
        // SAFETY: as in load_bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data[done..].as_ptr(),
                cpu.exec.mem_base.add(offset as usize),
                len,
            )
        };
        done += len;
        cpu.mark_dirty_page(phys >> 12);
        if cpu.is_code_page(phys >> 12) {
            note_code_write(cpu, phys, len as u64);
        }
    }
    Ok(())
}

/// Remember that `len` bytes at `phys`, on a page with translated code, were written, for
/// the engine to invalidate the blocks there. A write touching a range already noted extends
/// it (a REP STOS stays one range).
pub fn note_code_write(cpu: &mut CpuState, phys: u64, len: u64) {
    let (start, end) = (phys, phys + len);
    let n = cpu.exec.smc_ranges();
    let kept = cpu.exec.smc_writes.len();
    for r in cpu.exec.smc_writes[..n.min(kept)].iter_mut() {
        if start <= r[1] && r[0] <= end {
            r[0] = r[0].min(start);
            r[1] = r[1].max(end);
            return;
        }
    }
    if n < kept {
        cpu.exec.smc_writes[n] = [start, end];
    }
    cpu.exec.smc_count += 1;
}

/// Slow-path load of an integer of `size` bytes (1, 2, 4, 8), zero-extended.
pub fn load_slow(
    cpu: &mut CpuState,
    linear: u64,
    size: usize,
    mmu_idx: usize,
) -> Result<u64, MemFault> {
    let mut buf = [0u8; 8];
    match load_bytes(cpu, linear, &mut buf[..size], mmu_idx) {
        Ok(()) => Ok(u64::from_le_bytes(buf)),
        Err(MemFault::Unbacked { phys }) if cpu.exec.bus.is_some() && same_page(linear, size) => {
            crate::bus::with_bus(cpu, |bus, cpu| bus.mmio_read(cpu, phys, size as u8))
                .ok_or(MemFault::Unbacked { phys })
        }
        Err(e) => Err(e),
    }
}

/// MMIO goes to the bus only for accesses within one page (devices never straddle pages).
fn same_page(linear: u64, size: usize) -> bool {
    (linear & 0xfff) as usize + size <= 4096
}

/// Slow-path store of the low `size` bytes of `value`.
pub fn store_slow(
    cpu: &mut CpuState,
    linear: u64,
    value: u64,
    size: usize,
    mmu_idx: usize,
) -> Result<(), MemFault> {
    match store_bytes(cpu, linear, &value.to_le_bytes()[..size], mmu_idx) {
        Err(MemFault::Unbacked { phys }) if cpu.exec.bus.is_some() && same_page(linear, size) => {
            let wants_exit = crate::bus::with_bus(cpu, |bus, cpu| {
                bus.mmio_write(cpu, phys, size as u8, value);
                bus.wants_exit(cpu)
            })
            .ok_or(MemFault::Unbacked { phys })?;
            if wants_exit {
                cpu.exec.smc_count |= crate::cpu::STORE_EXIT_REQUEST;
            }
            Ok(())
        }
        r => r,
    }
}

/// Fetch up to `out.len()` instruction bytes at `linear`, stopping early at a page that cannot
/// be fetched. Returns how many bytes were read, or the fault if not even the first byte could be.
pub fn fetch_code(cpu: &mut CpuState, linear: u64, out: &mut [u8]) -> Result<usize, MemFault> {
    let user = cpu.cpl() == 3;
    let mut done = 0;
    while done < out.len() {
        let addr = linear.wrapping_add(done as u64);
        let t = match translate(cpu, addr, Access::Execute, user) {
            Ok(t) => t,
            Err(e) => {
                if done > 0 {
                    break;
                }
                cpu.exec.exception = e;
                return Err(MemFault::Exception);
            }
        };
        let len = (4096 - (addr & 0xfff) as usize).min(out.len() - done);
        let Some(host) = cpu.exec.ram_ptr(t.phys, len as u64) else {
            if done > 0 {
                break;
            }
            return Err(MemFault::Unbacked { phys: t.phys });
        };
        // SAFETY: `ram_ptr` checked the range against guest RAM (one window of the mapping).
        unsafe { std::ptr::copy_nonoverlapping(host, out[done..].as_mut_ptr(), len) };
        done += len;
    }
    Ok(done)
}

/// Builds 4-level page tables in guest memory (4 KiB pages), for tests and the built-in guests.
pub struct PageTableBuilder {
    pub cr3: u64,
    next_free: u64,
    limit: u64,
}

impl PageTableBuilder {
    /// Tables are allocated from the physical range `[pool_start, pool_end)`.
    pub fn new(mem: &mut crate::GuestMemory, pool_start: u64, pool_end: u64) -> PageTableBuilder {
        let mut b = PageTableBuilder {
            cr3: 0,
            next_free: pool_start,
            limit: pool_end,
        };
        b.cr3 = b.alloc(mem);
        b
    }

    fn alloc(&mut self, mem: &mut crate::GuestMemory) -> u64 {
        let page = self.next_free;
        assert!(page + 4096 <= self.limit, "page-table pool exhausted");
        self.next_free += 4096;
        mem.write(page, &[0u8; 4096])
            .expect("page-table pool outside guest memory");
        page
    }

    /// Map the 4 KiB page at `linear` to `phys` with the given leaf flags (P is implied).
    /// Intermediate levels get P|RW|US so the leaf alone decides permissions.
    pub fn map_4k(&mut self, mem: &mut crate::GuestMemory, linear: u64, phys: u64, flags: u64) {
        let mut table = self.cr3;
        for level in (1..4).rev() {
            let idx = (linear >> (12 + 9 * level)) & 0x1ff;
            let entry_addr = table + idx * 8;
            let entry = mem.read_u64(entry_addr).expect("page table in RAM");
            table = if entry & pte::P == 0 {
                let t = self.alloc(mem);
                mem.write_u64(entry_addr, t | pte::P | pte::RW | pte::US)
                    .expect("page table in RAM");
                t
            } else {
                entry & pte::ADDR
            };
        }
        let idx = (linear >> 12) & 0x1ff;
        mem.write_u64(table + idx * 8, (phys & pte::ADDR) | flags | pte::P)
            .expect("page table in RAM");
    }
}
