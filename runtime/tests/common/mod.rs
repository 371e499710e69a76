//! A CPU in 64-bit mode with 4-level paging over a small guest RAM, as the engine's snippet
//! runner builds it: a `Core` (flat 64-bit CPU over `RAM` bytes) + `PageTableBuilder`.
#![allow(dead_code)]

use krr_runtime::{Core, CpuState, GuestMemory, PageTableBuilder};

pub const RAM: u64 = 4 << 20;
/// Page tables are allocated from here.
pub const PT_POOL: (u64, u64) = (0x30_0000, 0x38_0000);

/// Page-table entry bits (not every test binary uses each).
#[allow(unused_imports)]
pub use krr_runtime::arch::pte::{A, D, NX, P, PS, RW, US};

/// #PF error-code bits.
#[allow(unused_imports)]
pub use krr_runtime::arch::pf_error::{
    I as PF_I, P as PF_P, RSVD as PF_RSVD, U as PF_U, W as PF_W,
};

pub struct Machine {
    pub core: Core,
    pub pt: PageTableBuilder,
}

impl Machine {
    pub fn new() -> Machine {
        let mut core = Core::new(RAM).expect("guest RAM");
        let pt = PageTableBuilder::new(core.mem_mut(), PT_POOL.0, PT_POOL.1);
        core.arch_mut().cr3 = pt.cr3;
        Machine { core, pt }
    }

    /// The whole CPU state (the MMU and delivery functions take it).
    pub fn cpu(&mut self) -> &mut CpuState {
        // SAFETY: the tests read and write fields only; they never move or replace the state.
        unsafe { self.core.state_mut() }
    }

    pub fn mem(&mut self) -> &mut GuestMemory {
        self.core.mem_mut()
    }

    pub fn map(&mut self, linear: u64, phys: u64, flags: u64) {
        self.pt.map_4k(self.core.mem_mut(), linear, phys, flags);
    }

    /// Physical address of the entry at `level` (3 = PML4 ... 0 = PT) that translates
    /// `linear`, following present entries.
    pub fn entry_addr(&self, linear: u64, level: u32) -> u64 {
        let mut table = self.core.cpu().cr3 & 0x000f_ffff_ffff_f000;
        for l in (level..4).rev() {
            let addr = table + ((linear >> (12 + 9 * l)) & 0x1ff) * 8;
            if l == level {
                return addr;
            }
            table = self.core.mem().read_u64(addr).unwrap() & 0x000f_ffff_ffff_f000;
        }
        unreachable!()
    }

    pub fn entry(&self, linear: u64, level: u32) -> u64 {
        self.core
            .mem()
            .read_u64(self.entry_addr(linear, level))
            .unwrap()
    }

    pub fn set_entry(&mut self, linear: u64, level: u32, v: u64) {
        let a = self.entry_addr(linear, level);
        self.core.mem_mut().write_u64(a, v).unwrap();
    }

    /// Run at CPL0 (64-bit kernel code and data segments).
    pub fn kernel_mode(&mut self) {
        use krr_runtime::seg;
        self.cpu().seg[seg::CS].selector = 0x08;
        self.cpu().seg[seg::CS].attrs = 0x209b;
        self.cpu().seg[seg::SS].selector = 0x10;
        self.cpu().seg[seg::SS].attrs = 0xc093;
    }
}
