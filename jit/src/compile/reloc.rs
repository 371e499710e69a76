//! Addresses in block code that change from one process to the next (ASLR, heap placement):
//! the helper shims, the jump cache, the block's exit slots, its decoded instructions (the
//! argument of `krr_interpret`) and the pure host functions. Block code never holds them as
//! constants: the lowering names them with [`Sym`] (a `symbol_value` of an external name in
//! krr's own namespace, which x86-64 without PIC emits as `movabs reg, imm64` with an `Abs8`
//! relocation), and [`patch`] writes the addresses of this process into the code before it is
//! installed. So the same machine code, with its [`KrrReloc`]s, serves any process: what the
//! persistent code cache (`crate::code_cache`) stores.

use crate::helpers::pure::{Pure, PureFn};
use cranelift_codegen::binemit::Reloc;
use cranelift_codegen::ir::{
    self, types, ExternalName, GlobalValueData, InstBuilder, UserExternalName, Value,
};
use cranelift_codegen::{FinalizedMachReloc, FinalizedRelocTarget};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{FuncId, ModuleReloc};
use iced_x86::Instruction;

/// The external-name namespace of krr's symbols (cranelift-module uses 0 and 1).
pub(super) const KRR_NS: u32 = 0x6b72;

/// A process-specific address block code refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sym {
    /// The `preserve_all` shim of helper number n (`shims::helper_table` order).
    Shim(u8),
    /// The engine's jump cache.
    JumpCache,
    /// The block's exit slot n (0 taken, 1 not taken).
    Slot(u8),
    /// The block's decoded instruction n.
    Insn(u32),
    /// The pure host function `Pure::ALL[n]`.
    Pure(u8),
}

const SHIM: u32 = 0x1000_0000;
const JUMP_CACHE: u32 = 0x2000_0000;
const SLOT: u32 = 0x3000_0000;
const INSN: u32 = 0x4000_0000;
const PURE: u32 = 0x5000_0000;
const KIND: u32 = 0xf000_0000;

impl Sym {
    pub(crate) fn index(self) -> u32 {
        match self {
            Sym::Shim(n) => SHIM | n as u32,
            Sym::JumpCache => JUMP_CACHE,
            Sym::Slot(n) => SLOT | n as u32,
            Sym::Insn(n) => INSN | n,
            Sym::Pure(n) => PURE | n as u32,
        }
    }

    pub(crate) fn from_index(i: u32) -> Option<Sym> {
        let n = i & !KIND;
        Some(match i & KIND {
            SHIM => Sym::Shim(u8::try_from(n).ok()?),
            JUMP_CACHE if n == 0 => Sym::JumpCache,
            SLOT => Sym::Slot(u8::try_from(n).ok()?),
            INSN => Sym::Insn(n),
            PURE => Sym::Pure(u8::try_from(n).ok()?),
            _ => return None,
        })
    }

    /// The symbol of pure function `f` (one of `Pure::ALL`'s).
    pub(crate) fn pure(f: PureFn) -> Sym {
        let n = Pure::ALL
            .iter()
            .position(|p| p.func().is_some_and(|g| g as usize == f as usize))
            .expect("pure functions come from Pure::func");
        Sym::Pure(n as u8)
    }
}

/// Emit `sym + offset` as a value of `fb`'s function.
pub(super) fn sym_value(fb: &mut FunctionBuilder<'_>, sym: Sym, offset: i64) -> Value {
    let name = fb
        .func
        .declare_imported_user_function(UserExternalName::new(KRR_NS, sym.index()));
    let gv = fb.create_global_value(GlobalValueData::Symbol {
        name: ExternalName::user(name),
        offset: ir::immediates::Imm64::new(offset),
        colocated: false,
        tls: false,
    });
    fb.ins().symbol_value(types::I64, gv)
}

/// A relocation of krr's: write `sym + addend` as 8 bytes at `offset` of the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KrrReloc {
    pub offset: u32,
    pub sym: Sym,
    pub addend: i64,
}

/// Split compiled code's relocations into krr's and any other (for the module to resolve;
/// code with any is not position-independent in krr's sense and is not stored in the code
/// cache).
pub(super) fn split(
    relocs: &[FinalizedMachReloc],
    func: &ir::Function,
    id: FuncId,
) -> (Vec<KrrReloc>, Vec<ModuleReloc>) {
    let mut krr = Vec::new();
    let mut other = Vec::new();
    for r in relocs {
        if let FinalizedRelocTarget::ExternalName(ExternalName::User(name)) = &r.target {
            let name = &func.params.user_named_funcs()[*name];
            if name.namespace == KRR_NS {
                assert_eq!(r.kind, Reloc::Abs8, "krr's symbols are absolute addresses");
                krr.push(KrrReloc {
                    offset: r.offset,
                    sym: Sym::from_index(name.index).expect("krr's symbols come from Sym"),
                    addend: r.addend,
                });
                continue;
            }
        }
        other.push(ModuleReloc::from_mach_reloc(r, func, id));
    }
    (krr, other)
}

/// Where this process keeps what [`Sym`]s name, for one block.
pub(crate) struct Resolver<'a> {
    pub shims: &'a [u64],
    pub jump_cache: u64,
    pub slots: &'a [u64; 2],
    pub insns: *const Instruction,
    pub insn_count: usize,
}

impl Resolver<'_> {
    fn address(&self, sym: Sym) -> Option<u64> {
        Some(match sym {
            Sym::Shim(n) => *self.shims.get(n as usize)?,
            Sym::JumpCache => self.jump_cache,
            Sym::Slot(n) => self.slots.get(n as usize)? as *const u64 as u64,
            Sym::Insn(n) if (n as usize) < self.insn_count => {
                self.insns.wrapping_add(n as usize) as u64
            }
            Sym::Insn(_) => return None,
            Sym::Pure(n) => Pure::ALL.get(n as usize)?.func()? as usize as u64,
        })
    }
}

/// Write the addresses `relocs` name into `code`. `None` (code left unusable) when a symbol
/// has no address here or a relocation lies outside the code (only from a damaged cache
/// entry, whose checksum matched by accident).
pub(crate) fn patch(code: &mut [u8], relocs: &[KrrReloc], at: &Resolver<'_>) -> Option<()> {
    for r in relocs {
        let v = at.address(r.sym)?.wrapping_add(r.addend as u64);
        let o = r.offset as usize;
        code.get_mut(o..o.checked_add(8)?)?
            .copy_from_slice(&v.to_le_bytes());
    }
    Some(())
}
