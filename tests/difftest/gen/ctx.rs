//! The generation context: the knobs ([`GenOptions`], per-form [`Hook`]s) and the state of one
//! case under construction ([`Ctx`]): its initial registers and memory, the registers pinned
//! as pointers, and the bookkeeping of deliberate faults and of blocks.

use super::super::compare::{CF, DF, OF, PF};
use super::super::rng::Rng;
use super::layout::{layout, MXCSR_DEFAULT, STACK};
use super::regs::{gpr_bit, read_reg, write_reg_bits};
use super::values::{random_gpr, random_region, random_xmm};
use iced_x86::{Code, Instruction, OpKind, Register};
use krr_jit::snippet::{Region, Snippet, UserState};

/// Per-Code hook run after the built-in generation, before encoding: may change register and
/// memory values (through [`Ctx`]) and immediates (through the instruction). For example, to
/// make every 64-bit DIV divide by zero:
///
/// ```ignore
/// fn zero_divisor(ctx: &mut Ctx, ins: &mut Instruction, _: &mut Rng) {
///     ctx.set_operand_value(ins, 0, 0);
/// }
/// let opts = GenOptions { hooks: vec![(Code::Div_rm64, zero_divisor)], ..GenOptions::default() };
/// let cases = cases_for_with(Code::Div_rm64, &mut rng, 10, &opts);
/// ```
///
/// Registers used as addresses or counts are locked ([`Ctx::set_reg`] refuses them). Hooks do
/// not run for relative branches.
pub type Hook = fn(&mut Ctx, &mut Instruction, &mut Rng);

/// Generation knobs.
#[derive(Clone)]
pub struct GenOptions {
    /// About one case (or block) in this many deliberately accesses unmapped or non-canonical
    /// memory (or transfers control there).
    pub fault_one_in: u64,
    /// Extra per-Code hooks, run after the built-in ones.
    pub hooks: Vec<(Code, Hook)>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            fault_one_in: 24,
            hooks: Vec::new(),
        }
    }
}

/// The state of one case under construction. Hooks use its methods to tune values.
#[derive(Clone)]
pub struct Ctx {
    /// The initial state being built.
    pub st: UserState,
    /// The regions, in [`layout`] order.
    pub regions: Vec<Region>,
    /// GPRs (bit per x86 register number) whose values are pinned: address registers, string
    /// counts, the stack pointer. [`Ctx::set_reg`] refuses to change them.
    pub locked: u16,
    /// Generating an instruction inside a multi-instruction block.
    pub block: bool,
    /// Address of the current instruction's explicit memory operand, if any.
    pub mem_addr: Option<u64>,
    /// A deliberate fault may still be planted in this case.
    pub(super) fault_pending: bool,
    /// The current instruction got the deliberate fault (its accesses are not checked).
    pub(super) cur_fault: bool,
    /// Blocks: GPRs written by earlier instructions (other than the bounded updates of RSP by
    /// stack operations and of RSI/RDI/RCX by string operations); their initial values are not
    /// what later instructions see.
    pub(super) clobbered: u16,
    /// Blocks: change of RSP by the earlier instructions.
    pub(super) rsp_delta: i64,
    /// Bytes that must be inside the region before and after the memory operand.
    pub(super) margin: u64,
    /// FS (bit 0) and GS (bit 1) bases set by an instruction of the case (an FS/GS override).
    seg_locked: u8,
}

impl Ctx {
    pub(super) fn new(rng: &mut Rng, block: bool) -> Ctx {
        let mut st = UserState::default();
        for g in st.gpr.iter_mut() {
            *g = random_gpr(rng);
        }
        st.rflags = 0x202;
        for f in [CF, PF, 1 << 4, 1 << 6, 1 << 7, OF, DF] {
            if rng.chance(1, 2) {
                st.rflags |= f;
            }
        }
        for x in st.xmm.iter_mut() {
            *x = random_xmm(rng);
        }
        st.mxcsr = MXCSR_DEFAULT;
        let regions = layout()
            .iter()
            .map(|&(addr, len)| Region {
                addr,
                data: random_region(rng, len),
            })
            .collect();
        let mut ctx = Ctx {
            st,
            regions,
            locked: 0,
            block,
            mem_addr: None,
            fault_pending: false,
            cur_fault: false,
            clobbered: 0,
            rsp_delta: 0,
            margin: 0,
            seg_locked: 0,
        };
        if block {
            // A valid stack pointer for the whole block, far from both ends of the stack.
            ctx.lock(Register::RSP, STACK + 0xc00 + rng.below(0x80) * 8);
        }
        ctx
    }

    pub fn reg(&self, reg: Register) -> u64 {
        read_reg(&self.st, reg)
    }

    /// Sets the bits of `reg` unless its GPR is locked; returns whether it did.
    pub fn set_reg(&mut self, reg: Register, value: u64) -> bool {
        if self.locked & gpr_bit(reg) != 0 {
            return false;
        }
        write_reg_bits(&mut self.st, reg, value);
        true
    }

    pub(super) fn lock(&mut self, reg: Register, value: u64) {
        write_reg_bits(&mut self.st, reg, value);
        self.locked |= gpr_bit(reg);
    }

    pub(super) fn is_locked(&self, reg: Register) -> bool {
        self.locked & gpr_bit(reg) != 0
    }

    fn seg_bit(seg: Register) -> u8 {
        match seg {
            Register::FS => 1,
            Register::GS => 2,
            _ => 0,
        }
    }

    /// Whether an earlier instruction of the case set the base of `seg` (FS or GS).
    pub(super) fn seg_locked(&self, seg: Register) -> bool {
        self.seg_locked & Self::seg_bit(seg) != 0
    }

    /// Sets (and pins) the base of `seg` (FS or GS).
    pub(super) fn set_seg_base(&mut self, seg: Register, base: u64) {
        match seg {
            Register::FS => self.st.fs_base = base,
            Register::GS => self.st.gs_base = base,
            _ => return,
        }
        self.seg_locked |= Self::seg_bit(seg);
    }

    /// An XMM register, or the low half of a YMM register.
    pub fn xmm(&self, reg: Register) -> u128 {
        self.st.xmm[reg.number()]
    }

    pub fn set_xmm(&mut self, reg: Register, value: u128) {
        self.st.xmm[reg.number()] = value;
    }

    /// Region index and offset if `[addr, addr+len)` lies inside one region.
    pub(super) fn locate(&self, addr: u64, len: u64) -> Option<(usize, usize)> {
        self.regions.iter().enumerate().find_map(|(i, r)| {
            let off = addr.checked_sub(r.addr)?;
            (off.checked_add(len)? <= r.data.len() as u64).then_some((i, off as usize))
        })
    }

    pub fn read_mem(&self, addr: u64, len: u64) -> Option<Vec<u8>> {
        let (i, off) = self.locate(addr, len)?;
        Some(self.regions[i].data[off..off + len as usize].to_vec())
    }

    /// Writes initial memory; returns false (writing nothing) unless it is all inside a region.
    pub fn write_mem(&mut self, addr: u64, data: &[u8]) -> bool {
        let Some((i, off)) = self.locate(addr, data.len() as u64) else {
            return false;
        };
        self.regions[i].data[off..off + data.len()].copy_from_slice(data);
        true
    }

    /// Value of operand `op` of `ins` (registers, the explicit memory operand, immediates).
    pub fn operand_value(&self, ins: &Instruction, op: u32) -> Option<u128> {
        match ins.op_kind(op) {
            OpKind::Register => {
                let reg = ins.op_register(op);
                if reg.is_xmm() || reg.is_ymm() {
                    Some(self.xmm(reg))
                } else {
                    Some(self.reg(reg) as u128)
                }
            }
            OpKind::Memory => {
                let size = ins.memory_size().size() as u64;
                let bytes = self.read_mem(self.mem_addr?, size)?;
                let mut v = [0u8; 16];
                v[..bytes.len().min(16)].copy_from_slice(&bytes[..bytes.len().min(16)]);
                Some(u128::from_le_bytes(v))
            }
            OpKind::Immediate8
            | OpKind::Immediate8_2nd
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Some(ins.immediate(op) as u128),
            _ => None,
        }
    }

    /// Sets the value of register or memory operand `op`; returns whether it could.
    pub fn set_operand_value(&mut self, ins: &Instruction, op: u32, value: u128) -> bool {
        match ins.op_kind(op) {
            OpKind::Register => {
                let reg = ins.op_register(op);
                if reg.is_xmm() || reg.is_ymm() {
                    self.set_xmm(reg, value);
                    true
                } else {
                    self.set_reg(reg, value as u64)
                }
            }
            OpKind::Memory => {
                let Some(addr) = self.mem_addr else {
                    return false;
                };
                let size = (ins.memory_size().size()).min(16);
                self.write_mem(addr, &value.to_le_bytes()[..size])
            }
            _ => false,
        }
    }

    /// Value the CPU will use for `reg` when forming an address: RSP includes the drift caused
    /// by earlier stack operations of the block.
    pub(super) fn addr_value(&self, reg: Register) -> u64 {
        let v = self.reg(reg);
        if reg.full_register() == Register::RSP {
            let v = v.wrapping_add(self.rsp_delta as u64);
            return if reg.size() == 4 { v & 0xffff_ffff } else { v };
        }
        v
    }

    pub(super) fn into_snippet(self, code_addr: u64, code: Vec<u8>) -> (Snippet, UserState) {
        let mut st = self.st;
        st.rip = code_addr;
        (
            Snippet {
                code_addr,
                code,
                regions: self.regions,
            },
            st,
        )
    }

    /// Locked registers that stay usable as a base or index (their value is known): all
    /// locked ones except those clobbered earlier in the block.
    pub(super) fn locked_usable(&self) -> u16 {
        self.locked & !self.clobbered
    }
}
