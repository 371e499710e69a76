//! The architectural CPU state, laid out `#[repr(C)]` so that compiled code can address every
//! field by a constant offset (see [`offsets`]).

use std::mem::offset_of;

use crate::arch::{cr0, cr4, dr6, dr7, efer, mxcsr, xcr0};
// Kept importable as `cpu::rflags`, `cpu::vector` and `cpu::ExceptionRecord` (and through the
// crate root) for the engine and the drivers.
pub use crate::arch::{rflags, vector};
pub use crate::exception::ExceptionRecord;

/// General-purpose register numbers in x86 encoding order.
pub mod gpr {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
    pub const NAMES: [&str; 16] = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
}

/// Segment register numbers in x86 encoding order.
pub mod seg {
    pub const ES: usize = 0;
    pub const CS: usize = 1;
    pub const SS: usize = 2;
    pub const DS: usize = 3;
    pub const FS: usize = 4;
    pub const GS: usize = 5;
}

/// A segment register with its hidden (descriptor cache) part.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    /// Descriptor attribute bits 8..15 and 20..23 of the high dword (type, S, DPL, P, AVL, L, D/B, G)
    /// packed as in VMX: bits 0..7 = type/S/DPL/P, bits 12..15 = AVL/L/DB/G.
    pub attrs: u16,
    pub limit: u32,
    pub base: u64,
}

impl Segment {
    /// `attrs` bit L: a 64-bit code segment (clear: compatibility mode in long mode).
    pub const ATTR_LONG: u16 = 1 << 13;
    /// `attrs` bit D/B: 32-bit default operand size (code) or stack pointer (SS).
    pub const ATTR_DEFAULT32: u16 = 1 << 14;
    /// `attrs` of a 64-bit code segment at DPL0 (type 0xb execute/read accessed, S, P, L, G),
    /// as SYSCALL loads it.
    pub const CODE64_DPL0: u16 = 0xa09b;
    /// `attrs` of a read/write data segment at DPL0 (type 3, S, P, D/B, G), as SYSCALL loads
    /// SS.
    pub const DATA_DPL0: u16 = 0xc093;
    /// `attrs` of a read/write data segment at DPL3 (type 3, S, DPL3, P, D/B, G), as SYSRET
    /// loads SS.
    pub const DATA_DPL3: u16 = 0xc0f3;

    /// A flat segment (base 0, limit 4 GiB - 1) with `selector` and `attrs`.
    pub const fn flat(selector: u16, attrs: u16) -> Segment {
        Segment {
            selector,
            attrs,
            limit: 0xffff_ffff,
            base: 0,
        }
    }
}

/// A descriptor-table register (GDTR, IDTR).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// x87 state in the FXSAVE layout's terms.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X87State {
    pub fcw: u16,
    pub fsw: u16,
    /// Abridged tag word as FXSAVE stores it (one bit per register, 1 = valid).
    pub ftw: u8,
    pub fop: u16,
    pub fip: u64,
    pub fdp: u64,
    /// ST0-7 / MM0-7, 80 bits each in 16-byte slots.
    pub st: [[u8; 16]; 8],
}

impl Default for X87State {
    fn default() -> Self {
        // Power-on/FNINIT state.
        X87State {
            fcw: 0x037f,
            fsw: 0,
            ftw: 0,
            fop: 0,
            fip: 0,
            fdp: 0,
            st: [[0; 16]; 8],
        }
    }
}

/// The architectural CPU state: what a trace's CPU image stores and a state hash covers
/// (with the lazy arithmetic flags, which only the representation of RFLAGS).
#[repr(C)]
#[derive(Clone)]
pub struct ArchState {
    pub gpr: [u64; 16],
    pub rip: u64,
    /// RFLAGS without the six arithmetic flags, which live in the lazy-flags fields below.
    pub rflags: u64,
    /// Lazy arithmetic flags: the last flag-setting operation (kind and size, see
    /// [`crate::lazy_flags::FlagOp`]) and its operands. `cc_op == 0` means `cc_res` holds the flag bits themselves.
    pub cc_op: u64,
    pub cc_res: u64,
    pub cc_a: u64,
    pub cc_b: u64,
    pub cc_aux: u64,
    /// Instructions retired so far.
    pub icount: u64,
    pub seg: [Segment; 6],
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: DescriptorTable,
    pub idtr: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub xcr0: u64,
    pub dr: [u64; 8],
    pub kernel_gs_base: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub tsc_aux: u64,
    pub pat: u64,
    pub apic_base: u64,
    pub misc_enable: u64,
    pub spec_ctrl: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    /// MTRRs: 8 variable base/mask pairs, 11 fixed-range registers, MTRRdefType.
    pub mtrr: [u64; 28],
    pub mxcsr: u32,
    pub _pad0: u32,
    pub xmm: [[u64; 2]; 16],
    /// Bits 255:128 of YMM0-15 (the AVX state, XSAVE component 2): VEX.128 forms zero them,
    /// legacy SSE forms leave them alone.
    pub ymm_hi: [[u64; 2]; 16],
    pub x87: X87State,
    /// Interrupts are inhibited at the instruction boundary where `icount` equals this value
    /// (the STI / MOV SS shadow).
    pub irq_shadow_at: u64,
    /// Debug traps are inhibited at the instruction boundary where `icount` equals this value
    /// (the MOV SS shadow: a #DB trap due there waits for the next boundary, SDM 6.8.3).
    pub db_inhibit_at: u64,
    /// DR6 bits (B0-B3, BS) of a #DB trap due at the next boundary where traps are not
    /// inhibited (set while in the MOV SS shadow).
    pub pending_db: u64,
    /// 1 while NMIs are blocked: from the delivery of an NMI until the next IRET (SDM 6.7.1).
    pub nmi_blocked: u64,
}

/// The engine's execution context: the budget, the mailboxes between compiled code, helpers
/// and the dispatcher, the software TLB and the pointers into guest memory and the driver's
/// bus. None of it is architectural; the pointers are set only by [`crate::Core`].
#[repr(C)]
pub struct ExecContext {
    /// The engine stops before retiring instruction number `icount_limit`.
    pub icount_limit: u64,
    pub exception: ExceptionRecord,
    /// Scratch space helpers use to pass 128-bit operands between compiled code and Rust.
    pub scratch: [u64; 4],
    /// Instructions that raised #UD because the engine does not implement them.
    pub unimplemented_count: u64,
    /// How the last helper call ended (see the jit's `helpers` module); anything but
    /// [`crate::Outcome::Continue`] makes compiled code leave the block.
    pub helper_status: crate::Outcome,
    /// Return value of the last helper call from compiled code (helpers are reached through
    /// register-preserving shims, which cannot return values).
    pub helper_value: u64,
    /// Arguments of that helper call (after the CPU pointer), passed in memory so that the
    /// call site needs no argument registers besides the CPU pointer.
    pub helper_args: [u64; 4],
    /// Physical address of the last access that hit no RAM (for the driver).
    pub unbacked_phys: u64,
    /// Address of the chaining slot of the exit compiled code last left through (0 = none).
    pub exit_slot: u64,
    /// Linear start address of the block that left through `exit_slot`.
    pub exit_from: u64,
    /// Software TLB (see [`crate::tlb`]).
    pub tlb: crate::tlb::Tlb,
    /// The driver's bus while the engine runs (see [`crate::bus`]).
    pub(crate) bus: crate::bus::BusPtr,
    /// RIP of the last INT n / INT3 / INTO raised (faults during its delivery are reported
    /// there).
    pub trap_rip: u64,
    /// B0-B3 bits of the data breakpoints the current instruction hit (MMU checked path).
    pub db_hits: u64,
    /// Writes to pages holding translated code since the engine last looked: `smc_count` of
    /// them (without [`STORE_EXIT_REQUEST`]) as [start, end) physical ranges in `smc_writes`
    /// (touching writes merge); more than fit means "assume any". Both tiers leave for the
    /// dispatcher right after an instruction that stored while this is non-zero, which is
    /// also how an MMIO store asks for an exit ([`STORE_EXIT_REQUEST`]).
    pub smc_count: u64,
    pub smc_writes: [[u64; 2]; 4],
    /// The code-page bitmap of guest memory (one bit per 4 KiB page of the mapping, see
    /// `GuestMemory`).
    pub(crate) code_bitmap: *mut u64,
    pub(crate) code_bitmap_words: u64,
    /// The dirty-page bitmap of guest memory (same shape; see `GuestMemory::digest`).
    pub(crate) dirty_bitmap: *mut u64,
    /// Guest physical memory's mapping, for helpers (compiled code reaches memory through
    /// the TLB), `mem_size` bytes holding the RAM windows `ram` back to back.
    pub(crate) mem_base: *mut u8,
    pub(crate) mem_size: u64,
    /// Pause a REP string instruction between iterations: before the iteration that would
    /// start with RCX (as the instruction's address size reads it) equal to `rep_pause_rcx`,
    /// at linear RIP `rep_pause_rip` ([`NO_REP_PAUSE`]: none). The instruction does not
    /// retire; the engine returns `Exit::Budget` with RIP at it and the iterations so far
    /// committed, where a hardware interrupt between iterations would find it (KRR's
    /// recordings place such interrupts by RIP and RCX).
    pub rep_pause_rip: u64,
    pub rep_pause_rcx: u64,
    /// The last pause came after at least one iteration of this execution of the
    /// instruction (not at its boundary).
    pub rep_paused_midway: bool,
    pub(crate) ram: crate::ram_windows::RamWindows,
    /// The behaviour profile the engine runs with (its `EngineConfig::profile`, stored here
    /// by the engine whenever it runs or delivers an event): read by the interpreter, the
    /// system instructions and event delivery.
    pub profile: crate::Profile,
    /// A debugger's watchpoints (not reached by compiled code: its pages are never in the
    /// TLB).
    pub watch: crate::watch::Watch,
}

/// [`ExecContext::rep_pause_rip`] when no pause is armed.
pub const NO_REP_PAUSE: u64 = u64::MAX;

/// The whole CPU as compiled code sees it (it receives a `*mut CpuState` and addresses fields
/// by the constant offsets in [`offsets`]): the architectural state, the CPU model, and the
/// engine's context. It derefs to [`ArchState`], so `cpu.rip` is the architectural RIP.
///
/// Only [`crate::Core`] makes one, pinned beside the guest memory its pointers lead into:
/// safe code gets `&CpuState` or [`ArchState`] access, never a movable `&mut CpuState`, so it
/// cannot swap a state into a place where its pointers would outlive their memory.
#[repr(C)]
pub struct CpuState {
    pub arch: ArchState,
    /// What CPUID reports.
    pub cpuid: crate::cpuid::CpuidTable,
    pub exec: ExecContext,
    _pinned: std::marker::PhantomPinned,
}

impl std::ops::Deref for CpuState {
    type Target = ArchState;
    fn deref(&self) -> &ArchState {
        &self.arch
    }
}

impl std::ops::DerefMut for CpuState {
    fn deref_mut(&mut self) -> &mut ArchState {
        &mut self.arch
    }
}

impl ArchState {
    /// A CPU in 64-bit mode at CPL3 with flat segments, as the engine-core tests and
    /// benchmarks use it (CR3 is 0: a test that runs with paging maps its pages first).
    pub fn flat64() -> ArchState {
        let user_data = Segment::flat(0x2b, Segment::DATA_DPL3);
        let mut seg = [user_data; 6];
        // 64-bit code segment, DPL3 (attrs: type=0xb, S, DPL=3, P, L).
        seg[seg::CS] = Segment::flat(0x33, 0x20fb);
        ArchState {
            gpr: [0; 16],
            rip: 0,
            rflags: rflags::FIXED1,
            cc_op: 0,
            cc_res: 0,
            cc_a: 0,
            cc_b: 0,
            cc_aux: 0,
            icount: 0,
            seg,
            ldtr: Segment::default(),
            tr: Segment::default(),
            gdtr: DescriptorTable::default(),
            idtr: DescriptorTable::default(),
            cr0: cr0::PG | cr0::PE | cr0::ET | cr0::NE,
            cr2: 0,
            cr3: 0,
            cr4: cr4::OSFXSR | cr4::OSXMMEXCPT | cr4::PAE,
            cr8: 0,
            efer: efer::SCE | efer::LME | efer::LMA | efer::NXE,
            xcr0: xcr0::X87,
            dr: [0, 0, 0, 0, 0, 0, dr6::FIXED1, dr7::FIXED1],
            kernel_gs_base: 0,
            star: 0,
            lstar: 0,
            cstar: 0,
            sfmask: 0,
            tsc_aux: 0,
            pat: 0x0007_0406_0007_0406,
            apic_base: 0xfee0_0900,
            misc_enable: 1,
            spec_ctrl: 0,
            sysenter_cs: 0,
            sysenter_esp: 0,
            sysenter_eip: 0,
            mtrr: [0; 28],
            mxcsr: mxcsr::INIT,
            _pad0: 0,
            xmm: [[0; 2]; 16],
            ymm_hi: [[0; 2]; 16],
            x87: X87State::default(),
            irq_shadow_at: u64::MAX,
            db_inhibit_at: u64::MAX,
            pending_db: 0,
            nmi_blocked: 0,
        }
    }

    /// Current privilege level (CS.DPL in long mode).
    pub fn cpl(&self) -> u8 {
        ((self.seg[seg::CS].attrs >> 5) & 3) as u8
    }

    /// CF, PF, AF, ZF, SF and OF as RFLAGS bits, computed from the lazy flags without
    /// changing them (the jit's `materialize_flags` returns the same bits and stores them
    /// back in concrete form).
    pub fn arith_flags(&self) -> u64 {
        crate::lazy_flags::arith_flags(self.cc_op, self.cc_res, self.cc_a, self.cc_b, self.cc_aux)
    }

    /// The architectural RFLAGS: the stored bits with the arithmetic flags read from the lazy
    /// state.
    pub fn rflags_value(&self) -> u64 {
        (self.rflags & !rflags::ARITH) | self.arith_flags()
    }

    /// Set the whole RFLAGS (the arithmetic flags become concrete); bit 1 always reads 1.
    pub fn set_rflags_value(&mut self, v: u64) {
        self.cc_op = crate::lazy_flags::FlagOp::CONCRETE.encode();
        self.cc_res = v & rflags::ARITH;
        self.rflags = (v & !rflags::ARITH) | rflags::FIXED1;
    }
}

/// Set in `smc_count` by an MMIO store after which the bus wants the engine back (a device
/// was left work for the next instruction boundary, e.g. a virtio queue notification, or an
/// interrupt became deliverable): the after-store check that catches code writes then
/// returns to the dispatcher right after that instruction, in every tier, and the dispatcher
/// asks the bus before running on.
pub const STORE_EXIT_REQUEST: u64 = 1 << 63;

impl ExecContext {
    /// How many code-write ranges `smc_count` notes (see [`STORE_EXIT_REQUEST`]).
    pub fn smc_ranges(&self) -> usize {
        (self.smc_count & !STORE_EXIT_REQUEST) as usize
    }

    /// A fresh context over `mem` (no budget, empty TLB, no bus).
    fn new(mem: &mut crate::GuestMemory) -> ExecContext {
        let (code_bitmap, words) = mem.code_page_bitmap();
        ExecContext {
            icount_limit: u64::MAX,
            exception: ExceptionRecord::default(),
            scratch: [0; 4],
            unimplemented_count: 0,
            helper_status: crate::Outcome::Continue,
            helper_value: 0,
            helper_args: [0; 4],
            unbacked_phys: 0,
            exit_slot: 0,
            exit_from: 0,
            tlb: crate::tlb::Tlb::new(),
            bus: None,
            trap_rip: 0,
            db_hits: 0,
            smc_count: 0,
            smc_writes: [[0; 2]; 4],
            code_bitmap,
            code_bitmap_words: words as u64,
            dirty_bitmap: mem.dirty_page_bitmap(),
            rep_pause_rip: NO_REP_PAUSE,
            rep_pause_rcx: 0,
            rep_paused_midway: false,
            mem_base: mem.as_mut_ptr(),
            mem_size: mem.size(),
            ram: *mem.ram_windows(),
            profile: crate::Profile::Host,
            watch: Default::default(),
        }
    }

    /// Guest RAM's size in bytes, all windows together (what `mem_base` spans).
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// Where guest RAM lies in guest-physical space.
    pub fn ram_windows(&self) -> &crate::ram_windows::RamWindows {
        &self.ram
    }

    /// The host address of guest-physical `[phys, phys + len)` if all of it is RAM in one
    /// window (for helpers; the pointer stays valid while the owning `Core` lives).
    #[inline]
    pub fn ram_ptr(&self, phys: u64, len: u64) -> Option<*mut u8> {
        let off = self.ram.offset(phys, len)?;
        // Inside the mapping: `offset` only returns ranges of it.
        Some(self.mem_base.wrapping_add(off as usize))
    }

    /// Is the driver's bus attached (the engine is inside `run_with_bus`)?
    pub fn has_bus(&self) -> bool {
        self.bus.is_some()
    }
}

impl CpuState {
    /// A state over `mem` (which must outlive it and not move its mapping; [`crate::Core`]
    /// guarantees that by owning both).
    pub(crate) fn new(arch: ArchState, mem: &mut crate::GuestMemory) -> CpuState {
        CpuState {
            arch,
            cpuid: crate::cpuid::CpuidTable::krr_default(),
            exec: ExecContext::new(mem),
            _pinned: std::marker::PhantomPinned,
        }
    }

    /// Point the context at `mem` again (after the memory may have been swapped for another
    /// core's): a different mapping also drops every cached translation.
    pub(crate) fn attach(&mut self, mem: &mut crate::GuestMemory) {
        let base = mem.as_mut_ptr();
        if base != self.exec.mem_base {
            self.exec = ExecContext {
                icount_limit: self.exec.icount_limit,
                exception: self.exec.exception,
                unimplemented_count: self.exec.unimplemented_count,
                ..ExecContext::new(mem)
            };
        }
    }

    /// Does guest-physical page `page` (a page number) hold translated code?
    pub fn is_code_page(&self, page: u64) -> bool {
        let Some(index) = self.exec.ram.page_index(page) else {
            return false;
        };
        let word = index / 64;
        if word >= self.exec.code_bitmap_words {
            return false;
        }
        // SAFETY: `code_bitmap` points at `code_bitmap_words` words owned by the guest memory
        // that the owning `Core` keeps beside this state; the index is checked above.
        unsafe { *self.exec.code_bitmap.add(word as usize) & (1 << (index % 64)) != 0 }
    }

    /// Note that guest-physical page `page` (a page number) was written, or may be written
    /// through a TLB entry, for the RAM digest.
    pub fn mark_dirty_page(&mut self, page: u64) {
        let Some(index) = self.exec.ram.page_index(page) else {
            return;
        };
        let word = index / 64;
        if word >= self.exec.code_bitmap_words {
            return;
        }
        // SAFETY: `dirty_bitmap` has `code_bitmap_words` words (both bitmaps have one bit per
        // page of the same memory), owned by the guest memory the owning `Core` keeps beside
        // this state; the index is checked above.
        unsafe { *self.exec.dirty_bitmap.add(word as usize) |= 1 << (index % 64) }
    }

    /// Mark or unmark guest-physical page `page` as holding translated code (no effect
    /// outside RAM).
    pub fn set_code_page(&mut self, page: u64, on: bool) {
        let Some(index) = self.exec.ram.page_index(page) else {
            return;
        };
        let word = index / 64;
        if word >= self.exec.code_bitmap_words {
            return;
        }
        // SAFETY: as in is_code_page; the CPU state is the only writer while the engine runs.
        unsafe {
            let w = &mut *self.exec.code_bitmap.add(word as usize);
            if on {
                *w |= 1 << (index % 64);
            } else {
                *w &= !(1 << (index % 64));
            }
        }
    }
}

/// Byte offsets of the fields compiled code touches.
pub mod offsets {
    use super::*;
    pub const GPR: i32 = offset_of!(CpuState, arch.gpr) as i32;
    pub const RIP: i32 = offset_of!(CpuState, arch.rip) as i32;
    pub const RFLAGS: i32 = offset_of!(CpuState, arch.rflags) as i32;
    pub const CC_OP: i32 = offset_of!(CpuState, arch.cc_op) as i32;
    pub const CC_RES: i32 = offset_of!(CpuState, arch.cc_res) as i32;
    pub const CC_A: i32 = offset_of!(CpuState, arch.cc_a) as i32;
    pub const CC_B: i32 = offset_of!(CpuState, arch.cc_b) as i32;
    pub const CC_AUX: i32 = offset_of!(CpuState, arch.cc_aux) as i32;
    pub const ICOUNT: i32 = offset_of!(CpuState, arch.icount) as i32;
    pub const ICOUNT_LIMIT: i32 = offset_of!(CpuState, exec.icount_limit) as i32;
    pub const SEG: i32 = offset_of!(CpuState, arch.seg) as i32;
    pub const SEG_SIZE: i32 = std::mem::size_of::<Segment>() as i32;
    pub const SEG_BASE: i32 = offset_of!(Segment, base) as i32;
    pub const XMM: i32 = offset_of!(CpuState, arch.xmm) as i32;
    pub const YMM_HI: i32 = offset_of!(CpuState, arch.ymm_hi) as i32;
    pub const CR0: i32 = offset_of!(CpuState, arch.cr0) as i32;
    pub const CR4: i32 = offset_of!(CpuState, arch.cr4) as i32;
    pub const XCR0: i32 = offset_of!(CpuState, arch.xcr0) as i32;
    pub const MXCSR: i32 = offset_of!(CpuState, arch.mxcsr) as i32;
    pub const SCRATCH: i32 = offset_of!(CpuState, exec.scratch) as i32;
    pub const TLB: i32 = offset_of!(CpuState, exec.tlb) as i32;
    pub const HELPER_STATUS: i32 = offset_of!(CpuState, exec.helper_status) as i32;
    pub const HELPER_VALUE: i32 = offset_of!(CpuState, exec.helper_value) as i32;
    pub const TLB_DATA_KEY: i32 =
        (offset_of!(CpuState, exec.tlb) + offset_of!(crate::tlb::Tlb, data_key)) as i32;
    pub const TLB_JUMP_KEY: i32 =
        (offset_of!(CpuState, exec.tlb) + offset_of!(crate::tlb::Tlb, jump_key)) as i32;
    pub const HELPER_ARGS: i32 = offset_of!(CpuState, exec.helper_args) as i32;
    pub const EXIT_SLOT: i32 = offset_of!(CpuState, exec.exit_slot) as i32;
    pub const SMC_COUNT: i32 = offset_of!(CpuState, exec.smc_count) as i32;
    pub const TRAP_RIP: i32 = offset_of!(CpuState, exec.trap_rip) as i32;
    pub const EXIT_FROM: i32 = offset_of!(CpuState, exec.exit_from) as i32;

    pub fn gpr(r: usize) -> i32 {
        GPR + 8 * r as i32
    }
    pub fn seg_base(s: usize) -> i32 {
        SEG + SEG_SIZE * s as i32 + SEG_BASE
    }
    pub fn xmm(r: usize, half: usize) -> i32 {
        XMM + 16 * r as i32 + 8 * half as i32
    }
    /// Quadword `q` (0..4) of YMM register `r`: 0 and 1 are the XMM part, 2 and 3 the upper.
    pub fn ymm(r: usize, q: usize) -> i32 {
        if q < 2 {
            xmm(r, q)
        } else {
            YMM_HI + 16 * r as i32 + 8 * (q as i32 - 2)
        }
    }
}
