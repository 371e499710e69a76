//! Integer, control-transfer and miscellaneous user-level instructions.

use super::flags::{self, cf, concrete, cond, materialize, FlagKind, FlagState};
use super::*;
use iced_x86::{Mnemonic, OpKind};
use krr_runtime::gpr::{RAX, RBP, RCX, RDX, RSP};
use krr_runtime::{rflags, vector};

pub fn execute<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Mov => mov(b, insn),
        M::Movzx => movzx(b, insn),
        M::Movsx | M::Movsxd => movsx(b, insn),
        M::Movbe => movbe(b, insn),
        M::Lea => lea(b, insn),
        M::Xchg => xchg(b, insn),
        M::Cmpxchg => cmpxchg(b, insn),
        M::Cmpxchg8b | M::Cmpxchg16b => cmpxchg_double(b, insn),
        M::Xadd => xadd(b, insn),
        M::Bswap => bswap(b, insn),
        M::Push => push_insn(b, insn),
        M::Pop => pop_insn(b, insn),
        M::Pushf | M::Pushfq => pushf(b, insn),
        M::Popf | M::Popfq => popf(b, insn),
        M::Add | M::Adc | M::Sub | M::Sbb | M::And | M::Or | M::Xor | M::Cmp | M::Test => {
            alu2(b, insn)
        }
        M::Inc | M::Dec => inc_dec(b, insn),
        M::Neg => neg(b, insn),
        M::Not => not(b, insn),
        M::Shl | M::Sal | M::Shr | M::Sar => shift(b, insn),
        M::Rol | M::Ror => rotate(b, insn),
        M::Rcl | M::Rcr => rotate_through_carry(b, insn),
        M::Shld | M::Shrd => double_shift(b, insn),
        M::Mul | M::Imul if insn.op_count() == 1 => mul_wide(b, insn),
        M::Imul => imul_truncating(b, insn),
        M::Div | M::Idiv => div(b, insn),
        M::Bt | M::Bts | M::Btr | M::Btc => bit_test(b, insn),
        M::Bsf | M::Bsr => bit_scan(b, insn),
        M::Popcnt | M::Lzcnt | M::Tzcnt => bit_count(b, insn),
        M::Andn
        | M::Bextr
        | M::Blsi
        | M::Blsmsk
        | M::Blsr
        | M::Bzhi
        | M::Pdep
        | M::Pext
        | M::Rorx
        | M::Sarx
        | M::Shlx
        | M::Shrx
        | M::Mulx => bmi(b, insn),
        M::Adcx | M::Adox => adcx_adox(b, insn),
        M::Seto
        | M::Setno
        | M::Setb
        | M::Setae
        | M::Sete
        | M::Setne
        | M::Setbe
        | M::Seta
        | M::Sets
        | M::Setns
        | M::Setp
        | M::Setnp
        | M::Setl
        | M::Setge
        | M::Setle
        | M::Setg => setcc(b, insn),
        M::Cmovo
        | M::Cmovno
        | M::Cmovb
        | M::Cmovae
        | M::Cmove
        | M::Cmovne
        | M::Cmovbe
        | M::Cmova
        | M::Cmovs
        | M::Cmovns
        | M::Cmovp
        | M::Cmovnp
        | M::Cmovl
        | M::Cmovge
        | M::Cmovle
        | M::Cmovg => cmovcc(b, insn),
        M::Jo
        | M::Jno
        | M::Jb
        | M::Jae
        | M::Je
        | M::Jne
        | M::Jbe
        | M::Ja
        | M::Js
        | M::Jns
        | M::Jp
        | M::Jnp
        | M::Jl
        | M::Jge
        | M::Jle
        | M::Jg => jcc(b, insn),
        M::Retf => super::far::execute(b),
        M::Jmp | M::Call if is_far_indirect(insn) => super::far::execute(b),
        M::Jmp => jmp(b, insn),
        M::Call => call(b, insn),
        M::Ret => ret(b, insn),
        M::Loop | M::Loope | M::Loopne | M::Jrcxz | M::Jecxz => loop_jrcxz(b, insn),
        M::Cbw | M::Cwde | M::Cdqe => sign_extend_rax(b, insn),
        M::Cwd | M::Cdq | M::Cqo => sign_extend_into_rdx(b, insn),
        M::Clc | M::Stc | M::Cmc => carry_flag(b, insn),
        M::Cld | M::Std => direction_flag(b, insn),
        M::Lahf => lahf(b),
        M::Sahf => sahf(b),
        M::Movsb
        | M::Movsw
        | M::Movsd
        | M::Movsq
        | M::Stosb
        | M::Stosw
        | M::Stosd
        | M::Stosq
        | M::Lodsb
        | M::Lodsw
        | M::Lodsd
        | M::Lodsq
        | M::Cmpsb
        | M::Cmpsw
        | M::Cmpsd
        | M::Cmpsq
        | M::Scasb
        | M::Scasw
        | M::Scasd
        | M::Scasq
            if !is_sse_movsd(insn) =>
        {
            super::string::execute(b)
        }
        M::Enter => enter(b, insn),
        M::Leave => leave(b, insn),
        M::Nop
        | M::Endbr64
        | M::Endbr32
        | M::Pause
        | M::Lfence
        | M::Mfence
        | M::Sfence
        | M::Prefetchnta
        | M::Prefetcht0
        | M::Prefetcht1
        | M::Prefetcht2
        | M::Prefetchw => Ok(()),
        M::Cpuid => cpuid(b),
        M::INVALID | M::Ud0 | M::Ud1 | M::Ud2 => Err(b.raise(vector::UD, None)),
        M::Int3 => Err(b.raise_trap(vector::BP)),
        _ if super::system::handles(insn) => super::system::execute(b),
        _ => super::sse::execute(b),
    }
}

#[inline(never)]
fn mov<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    if !is_gpr_form(insn) {
        // Control, debug and segment registers.
        return super::system::execute(b);
    }
    let size = op_size(insn, 0);
    let v = read_op(b, 1, size)?;
    write_op(b, 0, size, v)
}

#[inline(never)]
fn movzx<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let v = read_op(b, 1, op_size(insn, 1))?;
    write_op(b, 0, op_size(insn, 0), v)
}

#[inline(never)]
fn movsx<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let src_size = op_size(insn, 1);
    let v = read_op(b, 1, src_size)?;
    let v = b.sext(v, bits(src_size));
    let size = op_size(insn, 0);
    let v = b.zext(v, bits(size));
    write_op(b, 0, size, v)
}

#[inline(never)]
fn movbe<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let v = read_op(b, 1, size)?;
    let v = byte_swap(b, v, size);
    write_op(b, 0, size, v)
}

#[inline(never)]
fn lea<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let a = offset_address(b);
    let size = op_size(insn, 0);
    let a = b.zext(a, bits(size));
    write_op(b, 0, size, a)
}

#[inline(never)]
fn xchg<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let x = read_op(b, 0, size)?;
    let y = read_op(b, 1, size)?;
    // Memory first so a fault leaves the registers untouched.
    if insn.op0_kind() == OpKind::Memory {
        write_op(b, 0, size, y)?;
        write_op(b, 1, size, x)
    } else {
        write_op(b, 1, size, x)?;
        write_op(b, 0, size, y)
    }
}

#[inline(never)]
fn xadd<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let (addr, dst) = read_rmw(b, size)?;
    let src = read_op(b, 1, size)?;
    let sum = b.add(dst, src);
    let sum = b.zext(sum, bits(size));
    write_rmw(b, addr, size, sum)?;
    write_op(b, 1, size, dst)?;
    let z = b.c(0);
    b.set_flags(FlagState::new(FlagKind::Add, size, sum, dst, src, z));
    if addr.is_none() {
        // xadd r, r with the same register: the sum wins.
        write_op(b, 0, size, sum)?;
    }
    Ok(())
}

#[inline(never)]
fn bswap<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let v = read_op(b, 0, size)?;
    let v = if size == 2 {
        b.c(0)
    } else {
        byte_swap(b, v, size)
    };
    write_op(b, 0, size, v)
}

#[inline(never)]
fn push_insn<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let size = if insn.op0_kind() == OpKind::Register || insn.op0_kind() == OpKind::Memory {
        size
    } else if insn.op0_kind() == OpKind::Immediate8to16 || insn.op0_kind() == OpKind::Immediate16 {
        2
    } else {
        8
    };
    if insn.op0_kind() == OpKind::Register && insn.op0_register().is_segment_register() {
        return super::system::execute(b);
    }
    let v = match insn.op0_kind() {
        OpKind::Register | OpKind::Memory => read_op(b, 0, size)?,
        _ => b.c(truncate(insn.immediate(0), size)),
    };
    push(b, v, size)
}

#[inline(never)]
fn pop_insn<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    if insn.op0_kind() == OpKind::Register && insn.op0_register().is_segment_register() {
        return super::system::execute(b);
    }
    let size = op_size(insn, 0);
    let (v, nsp) = pop(b, size)?;
    // The destination address is computed with the incremented RSP.
    b.set_gpr(RSP, nsp);
    write_op(b, 0, size, v)
}

#[inline(never)]
fn pushf<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = if insn.mnemonic() == M::Pushf { 2 } else { 8 };
    let f = read_rflags(b);
    let m = b.c(!(rflags::RF | rflags::VM));
    let f = b.and(f, m);
    push(b, f, size)
}

#[inline(never)]
fn inc_dec<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = op_size(insn, 0);
    let (addr, x) = read_rmw(b, size)?;
    let one = b.c(1);
    let (res, kind) = if insn.mnemonic() == M::Inc {
        (b.add(x, one), FlagKind::Inc)
    } else {
        (b.sub(x, one), FlagKind::Dec)
    };
    let res = b.zext(res, bits(size));
    let f = b.flags();
    let carry = cf(b, &f);
    let carry = b.b2v(carry);
    write_rmw(b, addr, size, res)?;
    b.set_flags(FlagState::new(kind, size, res, x, one, carry));
    Ok(())
}

#[inline(never)]
fn neg<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let (addr, x) = read_rmw(b, size)?;
    let zero = b.c(0);
    let res = b.sub(zero, x);
    let res = b.zext(res, bits(size));
    write_rmw(b, addr, size, res)?;
    b.set_flags(FlagState::new(FlagKind::Sub, size, res, zero, x, zero));
    Ok(())
}

#[inline(never)]
fn not<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let (addr, x) = read_rmw(b, size)?;
    let res = b.not(x);
    let res = b.zext(res, bits(size));
    write_rmw(b, addr, size, res)
}

#[inline(never)]
fn div<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = op_size(insn, 0);
    let src = read_op(b, 0, size)?;
    let s = b.c(size as u64);
    let z = b.c(0);
    let h = if insn.mnemonic() == M::Div {
        Helper::Div
    } else {
        Helper::Idiv
    };
    b.call(h, [s, src, z])?;
    Ok(())
}

#[inline(never)]
fn adcx_adox<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = op_size(insn, 0);
    let dst = read_op(b, 0, size)?;
    let src = read_op(b, 1, size)?;
    let old = current_flags(b);
    let bit = if insn.mnemonic() == M::Adcx {
        rflags::CF
    } else {
        rflags::OF
    };
    let m = b.c(bit);
    let cin = b.and(old, m);
    let zero = b.c(0);
    let cin = b.icmp(Cmp::Ne, cin, zero);
    let cin = b.b2v(cin);
    let s = b.add(dst, src);
    let s = b.add(s, cin);
    let res = b.zext(s, bits(size));
    let tmp = FlagState::new(FlagKind::Adc, size, res, dst, src, cin);
    let cout = cf(b, &tmp);
    let cout = b.b2v(cout);
    let k = b.c(bit.trailing_zeros() as u64);
    let cout = b.shl(cout, k);
    let keep = b.c(!bit);
    let f = b.and(old, keep);
    let f = b.or(f, cout);
    let st = concrete(b, f);
    write_op(b, 0, size, res)?;
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
fn setcc<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let c = cond(b, insn.condition_code());
    let v = b.b2v(c);
    write_op(b, 0, 1, v)
}

#[inline(never)]
fn cmovcc<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let src = read_op(b, 1, size)?;
    let dst = read_op(b, 0, size)?;
    let c = cond(b, insn.condition_code());
    let v = b.select(c, src, dst);
    write_op(b, 0, size, v)
}

#[inline(never)]
fn jcc<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let c = cond(b, insn.condition_code());
    b.flow(
        Flow::Branch {
            taken: insn.near_branch_target(),
            not_taken: insn.next_ip(),
        },
        Some(c),
    );
    Ok(())
}

#[inline(never)]
fn jmp<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    if is_near_branch(insn) {
        b.flow(Flow::Direct(insn.near_branch_target()), None);
    } else if insn.op0_kind() == OpKind::Register || insn.op0_kind() == OpKind::Memory {
        let t = read_op(b, 0, 8)?;
        branch_target_canonical(b, t)?;
        b.flow(Flow::Indirect(t), None);
    } else {
        return Err(b.unimplemented());
    }
    Ok(())
}

#[inline(never)]
fn call<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let ret = b.c(insn.next_ip());
    if is_near_branch(insn) {
        push(b, ret, 8)?;
        b.flow(Flow::Direct(insn.near_branch_target()), None);
    } else if insn.op0_kind() == OpKind::Register || insn.op0_kind() == OpKind::Memory {
        let t = read_op(b, 0, 8)?;
        branch_target_canonical(b, t)?;
        push(b, ret, 8)?;
        b.flow(Flow::Indirect(t), None);
    } else {
        return Err(b.unimplemented());
    }
    Ok(())
}

#[inline(never)]
fn ret<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let (t, nsp) = pop(b, 8)?;
    branch_target_canonical(b, t)?;
    let extra = if insn.op_count() == 1 {
        insn.immediate(0)
    } else {
        0
    };
    let nsp = if extra != 0 {
        let k = b.c(extra);
        b.add(nsp, k)
    } else {
        nsp
    };
    b.set_gpr(RSP, nsp);
    b.flow(Flow::Indirect(t), None);
    Ok(())
}

#[inline(never)]
fn loop_jrcxz<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    // The 0x67 forms count in ECX (and the write zero-extends into RCX).
    let wide = !matches!(
        insn.code(),
        iced_x86::Code::Loop_rel8_64_ECX
            | iced_x86::Code::Loope_rel8_64_ECX
            | iced_x86::Code::Loopne_rel8_64_ECX
            | iced_x86::Code::Jecxz_rel8_64
    );
    let width = if wide { 64 } else { 32 };
    let rcx = b.get_gpr(RCX);
    let zero = b.c(0);
    let c = if matches!(insn.mnemonic(), M::Jrcxz | M::Jecxz) {
        let v = b.zext(rcx, width);
        b.icmp(Cmp::Eq, v, zero)
    } else {
        let one = b.c(1);
        let n = b.sub(rcx, one);
        let n = b.zext(n, width);
        b.set_gpr(RCX, n);
        let nz = b.icmp(Cmp::Ne, n, zero);
        match insn.mnemonic() {
            M::Loope => {
                let f = b.flags();
                let z = flags::zf(b, &f);
                b.band(nz, z)
            }
            M::Loopne => {
                let f = b.flags();
                let z = flags::zf(b, &f);
                let nzf = b.bnot(z);
                b.band(nz, nzf)
            }
            _ => nz,
        }
    };
    b.flow(
        Flow::Branch {
            taken: insn.near_branch_target(),
            not_taken: insn.next_ip(),
        },
        Some(c),
    );
    Ok(())
}

#[inline(never)]
fn sign_extend_rax<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = match insn.mnemonic() {
        M::Cbw => 1,
        M::Cwde => 2,
        _ => 4,
    };
    let a = b.get_gpr(RAX);
    let v = b.sext(a, bits(size));
    write_gpr(b, RAX, 2 * size, v);
    Ok(())
}

#[inline(never)]
fn sign_extend_into_rdx<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = match insn.mnemonic() {
        M::Cwd => 2,
        M::Cdq => 4,
        _ => 8,
    };
    let a = b.get_gpr(RAX);
    let a = b.sext(a, bits(size));
    let k = b.c(63);
    let v = b.sar(a, k);
    write_gpr(b, RDX, size, v);
    Ok(())
}

#[inline(never)]
fn carry_flag<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let f = current_flags(b);
    let m = b.c(rflags::CF);
    let f = match insn.mnemonic() {
        M::Clc => {
            let nm = b.not(m);
            b.and(f, nm)
        }
        M::Stc => b.or(f, m),
        _ => b.xor(f, m),
    };
    let st = concrete(b, f);
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
fn direction_flag<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let f = b.load_state(krr_runtime::offsets::RFLAGS);
    let m = b.c(rflags::DF);
    let f = if insn.mnemonic() == M::Std {
        b.or(f, m)
    } else {
        let nm = b.not(m);
        b.and(f, nm)
    };
    b.store_state(krr_runtime::offsets::RFLAGS, f);
    Ok(())
}

#[inline(never)]
fn lahf<B: Builder>(b: &mut B) -> R<()> {
    let f = current_flags(b);
    let m = b.c(rflags::SF | rflags::ZF | rflags::AF | rflags::PF | rflags::CF);
    let f = b.and(f, m);
    let two = b.c(2);
    let f = b.or(f, two);
    write_reg(b, Register::AH, f);
    Ok(())
}

#[inline(never)]
fn sahf<B: Builder>(b: &mut B) -> R<()> {
    let ah = read_reg(b, Register::AH);
    let m = b.c(rflags::SF | rflags::ZF | rflags::AF | rflags::PF | rflags::CF);
    let ah = b.and(ah, m);
    let f = current_flags(b);
    let keep = b.c(rflags::OF);
    let f = b.and(f, keep);
    let f = b.or(f, ah);
    let st = concrete(b, f);
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
fn leave<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    // LEAVEW pops 2 bytes into BP only.
    let size = if insn.code() == iced_x86::Code::Leavew {
        2
    } else {
        8
    };
    let bp = b.get_gpr(RBP);
    stack_canonical(b, bp)?;
    let v = b.load(bp, size)?;
    let k = b.c(size as u64);
    let nsp = b.add(bp, k);
    b.set_gpr(RSP, nsp);
    if size == 2 {
        write_reg(b, Register::BP, v);
    } else {
        b.set_gpr(RBP, v);
    }
    Ok(())
}

#[inline(never)]
fn cpuid<B: Builder>(b: &mut B) -> R<()> {
    let z = b.c(0);
    b.call(Helper::Cpuid, [z, z, z])?;
    Ok(())
}

/// MOV between GPRs, memory and immediates (not segment, control or debug registers).
fn is_gpr_form(insn: &Instruction) -> bool {
    debug_assert_eq!(insn.op_count(), 2);
    let gpr_or_not_reg = |k: OpKind, r: Register| k != OpKind::Register || is_gpr(r);
    gpr_or_not_reg(insn.op0_kind(), insn.op0_register())
        && gpr_or_not_reg(insn.op1_kind(), insn.op1_register())
}

/// JMP/CALL m16:16/32/64.
fn is_far_indirect(insn: &Instruction) -> bool {
    insn.op0_kind() == OpKind::Memory
        && matches!(
            insn.memory_size(),
            iced_x86::MemorySize::SegPtr16
                | iced_x86::MemorySize::SegPtr32
                | iced_x86::MemorySize::SegPtr64
        )
}

fn is_near_branch(insn: &Instruction) -> bool {
    matches!(
        insn.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    )
}

/// MOVSD/CMPSD, the SSE2 scalar instructions, share their mnemonics with the string ones.
fn is_sse_movsd(insn: &Instruction) -> bool {
    matches!(insn.mnemonic(), Mnemonic::Movsd | Mnemonic::Cmpsd)
        && !matches!(
            insn.code(),
            iced_x86::Code::Movsd_m32_m32 | iced_x86::Code::Cmpsd_m32_m32
        )
}

fn byte_swap<B: Builder>(b: &mut B, v: B::V, size: u32) -> B::V {
    let s = b.bswap(v);
    if size == 8 {
        s
    } else {
        let k = b.c(64 - bits(size) as u64);
        b.shr(s, k)
    }
}

/// The six arithmetic flags as RFLAGS bits.
pub fn current_flags<B: Builder>(b: &mut B) -> B::V {
    let f = b.flags();
    materialize(b, &f)
}

/// Replace one arithmetic flag (`mask` has one bit) with `value`, keeping the others.
fn set_one_flag<B: Builder>(b: &mut B, mask: u64, value: B::B) {
    let old = current_flags(b);
    let keep = b.c(!mask);
    let f = b.and(old, keep);
    let v = b.b2v(value);
    let k = b.c(mask.trailing_zeros() as u64);
    let v = b.shl(v, k);
    let f = b.or(f, v);
    let st = concrete(b, f);
    b.set_flags(st);
}

/// The whole RFLAGS value.
pub fn read_rflags<B: Builder>(b: &mut B) -> B::V {
    let arith = current_flags(b);
    let sys = b.load_state(krr_runtime::offsets::RFLAGS);
    let m = b.c(!rflags::ARITH);
    let sys = b.and(sys, m);
    b.or(sys, arith)
}

#[inline(never)]
fn popf<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = if insn.mnemonic() == Mnemonic::Popf {
        2
    } else {
        8
    };
    let (v, nsp) = pop(b, size)?;
    b.set_gpr(RSP, nsp);
    let old = b.load_state(krr_runtime::offsets::RFLAGS);
    // Which bits POPF may change depends on CPL and IOPL; the CS descriptor is in the state.
    let attrs_off = krr_runtime::offsets::SEG
        + krr_runtime::offsets::SEG_SIZE * krr_runtime::seg::CS as i32
        + 2;
    let cs_attrs = b.load_state(attrs_off - 2);
    let k = b.c(16 + 5);
    let cpl = b.shr(cs_attrs, k);
    let three = b.c(3);
    let cpl = b.and(cpl, three);
    let mut changeable =
        rflags::ARITH | rflags::TF | rflags::DF | rflags::NT | rflags::AC | rflags::ID;
    if size == 2 {
        changeable &= 0xffff;
    }
    let base_mask = b.c(changeable);
    let zero = b.c(0);
    let is_cpl0 = b.icmp(Cmp::Eq, cpl, zero);
    let iopl_mask = b.c(if size == 2 {
        rflags::IOPL & 0xffff
    } else {
        rflags::IOPL
    });
    let extra0 = b.select(is_cpl0, iopl_mask, zero);
    let k12 = b.c(12);
    let iopl = b.shr(old, k12);
    let iopl = b.and(iopl, three);
    let le = b.icmp(Cmp::Ule, cpl, iopl);
    let ifm = b.c(rflags::IF);
    let extra1 = b.select(le, ifm, zero);
    let mask = b.or(base_mask, extra0);
    let mask = b.or(mask, extra1);
    let nmask = b.not(mask);
    let keep = b.and(old, nmask);
    let set = b.and(v, mask);
    let new = b.or(keep, set);
    let fixed = b.c(rflags::FIXED1);
    let new = b.or(new, fixed);
    let st = concrete(b, new);
    b.set_flags(st);
    let sysm = b.c(!rflags::ARITH);
    let sys = b.and(new, sysm);
    b.store_state(krr_runtime::offsets::RFLAGS, sys);
    // POPF may set IF: leave through the dispatcher, which checks for a deliverable interrupt
    // before the next block in every tier (compiled code would otherwise chain past it, and
    // the interrupt would land at a tier-dependent instruction).
    let next = b.c(insn.next_ip());
    b.flow(Flow::Jump(next), None);
    Ok(())
}

#[inline(never)]
fn alu2<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = op_size(insn, 0);
    let writes = !matches!(insn.mnemonic(), M::Cmp | M::Test);
    let (addr, x) = if writes {
        read_rmw(b, size)?
    } else {
        (None, read_op(b, 0, size)?)
    };
    let y = read_op(b, 1, size)?;
    let zero = b.c(0);
    let (res, st) = match insn.mnemonic() {
        M::Add => {
            let r = b.add(x, y);
            let r = b.zext(r, bits(size));
            (r, FlagState::new(FlagKind::Add, size, r, x, y, zero))
        }
        M::Adc | M::Sbb => {
            let f = b.flags();
            let c = cf(b, &f);
            let c = b.b2v(c);
            let (r, kind) = if insn.mnemonic() == M::Adc {
                let r = b.add(x, y);
                (b.add(r, c), FlagKind::Adc)
            } else {
                let r = b.sub(x, y);
                (b.sub(r, c), FlagKind::Sbb)
            };
            let r = b.zext(r, bits(size));
            (r, FlagState::new(kind, size, r, x, y, c))
        }
        M::Sub | M::Cmp => {
            let r = b.sub(x, y);
            let r = b.zext(r, bits(size));
            (r, FlagState::new(FlagKind::Sub, size, r, x, y, zero))
        }
        M::And | M::Test => {
            let r = b.and(x, y);
            (
                r,
                FlagState::new(FlagKind::Logic, size, r, zero, zero, zero),
            )
        }
        M::Or => {
            let r = b.or(x, y);
            (
                r,
                FlagState::new(FlagKind::Logic, size, r, zero, zero, zero),
            )
        }
        _ => {
            let r = b.xor(x, y);
            (
                r,
                FlagState::new(FlagKind::Logic, size, r, zero, zero, zero),
            )
        }
    };
    if writes {
        write_rmw(b, addr, size, res)?;
    }
    b.set_flags(st);
    Ok(())
}

/// The shift count: masked to 6 bits for 64-bit operands, 5 otherwise.
fn shift_count<B: Builder>(b: &mut B, size: u32) -> R<B::V> {
    let insn = *b.insn();
    let c = if insn.op_count() < 2 {
        b.c(1)
    } else {
        read_op(b, 1, 1)?
    };
    let m = b.c(if size == 8 { 63 } else { 31 });
    Ok(b.and(c, m))
}

/// Replace the flags with `new` unless `count` is zero (x86 shifts by 0 leave flags alone).
fn set_flags_unless_zero_count<B: Builder>(b: &mut B, count: B::V, new: FlagState<B::V>) {
    match b.const_of(count) {
        Some(0) => {}
        Some(_) => b.set_flags(new),
        None => {
            let old = b.flags();
            let old_bits = materialize(b, &old);
            let new_bits = materialize(b, &new);
            let zero = b.c(0);
            let is_zero = b.icmp(Cmp::Eq, count, zero);
            let bits = b.select(is_zero, old_bits, new_bits);
            let st = concrete(b, bits);
            b.set_flags(st);
        }
    }
}

#[inline(never)]
fn shift<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let (addr, x) = read_rmw(b, size)?;
    let n = shift_count(b, size)?;
    let w = bits(size);
    let (res, kind) = match insn.mnemonic() {
        Mnemonic::Shl | Mnemonic::Sal => (b.shl(x, n), FlagKind::Shl),
        Mnemonic::Shr => (b.shr(x, n), FlagKind::Shr),
        _ => {
            let s = b.sext(x, w);
            (b.sar(s, n), FlagKind::Sar)
        }
    };
    let res = b.zext(res, w);
    write_rmw(b, addr, size, res)?;
    let zero = b.c(0);
    let st = FlagState::new(kind, size, res, x, n, zero);
    set_flags_unless_zero_count(b, n, st);
    Ok(())
}

/// Flags with CF and OF replaced, the rest kept.
fn with_cf_of<B: Builder>(b: &mut B, old: B::V, c: B::B, o: B::B) -> B::V {
    let keep = b.c(!(rflags::CF | rflags::OF));
    let f = b.and(old, keep);
    let c = b.b2v(c);
    let o = b.b2v(o);
    let k = b.c(11);
    let o = b.shl(o, k);
    let f = b.or(f, c);
    b.or(f, o)
}

fn bit_of<B: Builder>(b: &mut B, v: B::V, bit: u32) -> B::B {
    let k = b.c(bit as u64);
    let s = b.shr(v, k);
    let one = b.c(1);
    let s = b.and(s, one);
    let zero = b.c(0);
    b.icmp(Cmp::Ne, s, zero)
}

#[inline(never)]
fn rotate<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let (addr, x) = read_rmw(b, size)?;
    let n = shift_count(b, size)?;
    let wm = b.c(w as u64 - 1);
    let r = b.and(n, wm);
    let wv = b.c(w as u64);
    let back = b.sub(wv, r);
    let left = insn.mnemonic() == Mnemonic::Rol;
    let (p, q) = if left {
        (b.shl(x, r), b.shr(x, back))
    } else {
        (b.shr(x, r), b.shl(x, back))
    };
    let res = b.or(p, q);
    let res = b.zext(res, w);
    write_rmw(b, addr, size, res)?;
    let old = current_flags(b);
    let (c, o) = if left {
        let c = bit_of(b, res, 0);
        let m = bit_of(b, res, w - 1);
        (c, b.bxor(m, c))
    } else {
        let c = bit_of(b, res, w - 1);
        let m2 = bit_of(b, res, w - 2);
        (c, b.bxor(c, m2))
    };
    let new = with_cf_of(b, old, c, o);
    let st = concrete(b, new);
    set_flags_unless_zero_count(b, n, st);
    Ok(())
}

#[inline(never)]
fn rotate_through_carry<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let (addr, x) = read_rmw(b, size)?;
    let n = shift_count(b, size)?;
    // Rotation is over w+1 bits (the operand and CF).
    let r = if w < 32 {
        let m = b.c(w as u64 + 1);
        // n < 32, so n mod (w+1) by repeated subtraction twice at most for w=8 (n<=31<36).
        let mut r = n;
        for _ in 0..3 {
            let ge = b.icmp(Cmp::Uge, r, m);
            let d = b.sub(r, m);
            r = b.select(ge, d, r);
        }
        r
    } else {
        n
    };
    let old = current_flags(b);
    let one = b.c(1);
    let cin = b.and(old, one);
    let left = insn.mnemonic() == Mnemonic::Rcl;
    let wv = b.c(w as u64);
    let zero = b.c(0);
    let is_zero = b.icmp(Cmp::Eq, r, zero);
    // Work on the (w+1)-bit value; for w = 64 through split shifts that stay below 64.
    let (res, cout) = if left {
        // res = x << r | cin << (r-1) | x >> (w+1-r)
        let rm1 = b.sub(r, one);
        let p = b.shl(x, r);
        let q = b.shl(cin, rm1);
        let x1 = b.shr(x, one);
        let back = b.sub(wv, r);
        let s = b.shr(x1, back);
        let res = b.or(p, q);
        let res = b.or(res, s);
        let co = b.shr(x, back);
        let co = b.and(co, one);
        (res, co)
    } else {
        // res = x >> r | cin << (w-r) | x << (w+1-r)
        let p = b.shr(x, r);
        let back = b.sub(wv, r);
        let q = b.shl(cin, back);
        let x1 = b.shl(x, one);
        let s = b.shl(x1, back);
        let res = b.or(p, q);
        let res = b.or(res, s);
        let rm1 = b.sub(r, one);
        let co = b.shr(x, rm1);
        let co = b.and(co, one);
        (res, co)
    };
    let res = b.zext(res, w);
    let res = b.select(is_zero, x, res);
    let cout = b.select(is_zero, cin, cout);
    write_rmw(b, addr, size, res)?;
    let c = b.icmp(Cmp::Ne, cout, zero);
    let o = if left {
        let m = bit_of(b, res, w - 1);
        b.bxor(m, c)
    } else {
        let m = bit_of(b, res, w - 1);
        let m2 = bit_of(b, res, w - 2);
        b.bxor(m, m2)
    };
    let new = with_cf_of(b, old, c, o);
    let st = concrete(b, new);
    set_flags_unless_zero_count(b, n, st);
    Ok(())
}

/// Flags from a result for operations that set SF/ZF/PF from it and CF/OF explicitly.
fn result_flags<B: Builder>(b: &mut B, res: B::V, size: u32, c: B::B, o: B::B) -> B::V {
    let zero = b.c(0);
    let st = FlagState::new(FlagKind::Logic, size, res, zero, zero, zero);
    let base = materialize(b, &st);
    with_cf_of(b, base, c, o)
}

#[inline(never)]
fn double_shift<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let (addr, x) = read_rmw(b, size)?;
    let y = read_op(b, 1, size)?;
    let n = {
        let c = read_op(b, 2, 1)?;
        let m = b.c(if size == 8 { 63 } else { 31 });
        b.and(c, m)
    };
    let left = insn.mnemonic() == Mnemonic::Shld;
    let one = b.c(1);
    let (res, c) = if w == 16 {
        // Counts above 16 are architecturally undefined; model the 48-bit pattern x:y:x that
        // hardware shifts through.
        let k16 = b.c(16);
        let k32 = b.c(32);
        let hi = b.shl(x, k32);
        let mid = b.shl(y, k16);
        let cat = b.or(hi, mid);
        let cat = b.or(cat, x);
        if left {
            let sh = b.shl(cat, n);
            let res = b.shr(sh, k32);
            let k48 = b.c(48);
            let back = b.sub(k48, n);
            let cbit = b.shr(cat, back);
            let cbit = b.and(cbit, one);
            (b.zext(res, 16), cbit)
        } else {
            let sh = b.shr(cat, n);
            let res = b.zext(sh, 16);
            let nm1 = b.sub(n, one);
            let cbit = b.shr(cat, nm1);
            let cbit = b.and(cbit, one);
            (res, cbit)
        }
    } else {
        let wv = b.c(w as u64);
        let back = b.sub(wv, n);
        let (p, q) = if left {
            (b.shl(x, n), b.shr(y, back))
        } else {
            (b.shr(x, n), b.shl(y, back))
        };
        // With n = 0 `back` = w: for w = 64 the shift wraps to 0, so mask that term out.
        let zero = b.c(0);
        let nz = b.icmp(Cmp::Ne, n, zero);
        let q = b.select(nz, q, zero);
        let res = b.or(p, q);
        let res = b.zext(res, w);
        let cbit = if left {
            let s = b.shr(x, back);
            b.and(s, one)
        } else {
            let nm1 = b.sub(n, one);
            let s = b.shr(x, nm1);
            b.and(s, one)
        };
        (res, cbit)
    };
    let zero = b.c(0);
    let is_zero = b.icmp(Cmp::Eq, n, zero);
    let res = b.select(is_zero, x, res);
    write_rmw(b, addr, size, res)?;
    let cflag = b.icmp(Cmp::Ne, c, zero);
    let s_old = bit_of(b, x, w - 1);
    let s_new = bit_of(b, res, w - 1);
    let o = b.bxor(s_old, s_new);
    let new = result_flags(b, res, size, cflag, o);
    let st = concrete(b, new);
    set_flags_unless_zero_count(b, n, st);
    Ok(())
}

#[inline(never)]
fn mul_wide<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let src = read_op(b, 0, size)?;
    let a = b.get_gpr(RAX);
    let a = b.zext(a, w);
    let signed = insn.mnemonic() == Mnemonic::Imul;
    let (lo, hi, overflow) = if size == 8 {
        let lo = b.mul(a, src);
        let hi = if signed {
            b.smulh(a, src)
        } else {
            b.umulh(a, src)
        };
        let ov = if signed {
            let k = b.c(63);
            let sign = b.sar(lo, k);
            b.icmp(Cmp::Ne, hi, sign)
        } else {
            let zero = b.c(0);
            b.icmp(Cmp::Ne, hi, zero)
        };
        (lo, hi, ov)
    } else {
        let (x, y) = if signed {
            (b.sext(a, w), b.sext(src, w))
        } else {
            (a, src)
        };
        let p = b.mul(x, y);
        let lo = b.zext(p, w);
        let k = b.c(w as u64);
        let hi = b.shr(p, k);
        let hi = b.zext(hi, w);
        let ov = if signed {
            let e = b.sext(p, w);
            b.icmp(Cmp::Ne, e, p)
        } else {
            let zero = b.c(0);
            b.icmp(Cmp::Ne, hi, zero)
        };
        (lo, hi, ov)
    };
    if size == 1 {
        let k = b.c(8);
        let h = b.shl(hi, k);
        let ax = b.or(h, lo);
        write_reg(b, Register::AX, ax);
    } else {
        write_gpr(b, RAX, size, lo);
        write_gpr(b, RDX, size, hi);
    }
    let new = result_flags(b, lo, size, overflow, overflow);
    let st = concrete(b, new);
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
fn imul_truncating<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let (x, y) = if insn.op_count() == 3 {
        (read_op(b, 1, size)?, b.c(truncate(insn.immediate(2), size)))
    } else {
        (read_op(b, 0, size)?, read_op(b, 1, size)?)
    };
    let xs = b.sext(x, w);
    let ys = b.sext(y, w);
    let p = b.mul(xs, ys);
    let lo = b.zext(p, w);
    let overflow = if size == 8 {
        let hi = b.smulh(xs, ys);
        let k = b.c(63);
        let sign = b.sar(p, k);
        b.icmp(Cmp::Ne, hi, sign)
    } else {
        let e = b.sext(p, w);
        b.icmp(Cmp::Ne, e, p)
    };
    write_op(b, 0, size, lo)?;
    let new = result_flags(b, lo, size, overflow, overflow);
    let st = concrete(b, new);
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
fn cmpxchg<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let (addr, dst) = read_rmw(b, size)?;
    let src = read_op(b, 1, size)?;
    let acc = b.get_gpr(RAX);
    let acc = b.zext(acc, w);
    let eq = b.icmp(Cmp::Eq, acc, dst);
    let zero = b.c(0);
    match addr {
        Some(a) => {
            // The destination is always written (with its old value when unequal).
            let v = b.select(eq, src, dst);
            b.store(a, v, size)?;
        }
        None => {
            let r = insn.op0_register();
            let (idx, _) = gpr_of(r);
            let old = b.get_gpr(idx);
            write_reg(b, r, src);
            let merged = b.get_gpr(idx);
            let v = b.select(eq, merged, old);
            b.set_gpr(idx, v);
        }
    }
    // The accumulator is written only when unequal.
    let old_rax = b.get_gpr(RAX);
    write_gpr(b, RAX, size, dst);
    let merged = b.get_gpr(RAX);
    let v = b.select(eq, old_rax, merged);
    b.set_gpr(RAX, v);
    let res = b.sub(acc, dst);
    let res = b.zext(res, w);
    b.set_flags(FlagState::new(FlagKind::Sub, size, res, acc, dst, zero));
    Ok(())
}

#[inline(never)]
fn cmpxchg_double<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let wide = insn.mnemonic() == Mnemonic::Cmpxchg16b;
    let a = effective_address(b);
    let zero = b.c(0);
    let (eq, lo, hi) = if wide {
        let m = b.c(15);
        let mis = b.and(a, m);
        let bad = b.icmp(Cmp::Ne, mis, zero);
        b.raise_if(bad, vector::GP, Some(0))?;
        stack_check(b, a)?;
        let (lo, hi) = b.load128(a)?;
        let rax = b.get_gpr(RAX);
        let rdx = b.get_gpr(RDX);
        let e1 = b.icmp(Cmp::Eq, lo, rax);
        let e2 = b.icmp(Cmp::Eq, hi, rdx);
        let eq = b.band(e1, e2);
        let rbx = b.get_gpr(krr_runtime::gpr::RBX);
        let rcx = b.get_gpr(RCX);
        let nlo = b.select(eq, rbx, lo);
        let nhi = b.select(eq, rcx, hi);
        b.store128(a, nlo, nhi)?;
        (eq, lo, hi)
    } else {
        stack_check(b, a)?;
        let v = b.load(a, 8)?;
        let rax = b.get_gpr(RAX);
        let rax = b.zext(rax, 32);
        let rdx = b.get_gpr(RDX);
        let k = b.c(32);
        let rdx = b.shl(rdx, k);
        let expect = b.or(rdx, rax);
        let eq = b.icmp(Cmp::Eq, v, expect);
        let rbx = b.get_gpr(krr_runtime::gpr::RBX);
        let rbx = b.zext(rbx, 32);
        let rcx = b.get_gpr(RCX);
        let rcx = b.shl(rcx, k);
        let new = b.or(rcx, rbx);
        let nv = b.select(eq, new, v);
        b.store(a, nv, 8)?;
        let lo = b.zext(v, 32);
        let hi = b.shr(v, k);
        (eq, lo, hi)
    };
    let old_rax = b.get_gpr(RAX);
    let old_rdx = b.get_gpr(RDX);
    let rax = b.select(eq, old_rax, lo);
    let rdx = b.select(eq, old_rdx, hi);
    b.set_gpr(RAX, rax);
    b.set_gpr(RDX, rdx);
    set_one_flag(b, rflags::ZF, eq);
    Ok(())
}

#[inline(never)]
fn bit_test<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let writes = insn.mnemonic() != Mnemonic::Bt;
    let offset_is_reg = insn.op1_kind() == OpKind::Register;
    let raw = read_op(b, 1, size)?;
    let wm = b.c(w as u64 - 1);
    let bit = b.and(raw, wm);
    let (addr, x) = if insn.op0_kind() == OpKind::Memory {
        let mut a = access_address(b)?;
        if offset_is_reg {
            // A register offset addresses a bit string: move by whole operands.
            let s = b.sext(raw, w);
            let k = b.c(w.trailing_zeros() as u64);
            let q = b.sar(s, k);
            let ks = b.c(size.trailing_zeros() as u64);
            let d = b.shl(q, ks);
            a = b.add(a, d);
        }
        (Some(a), b.load(a, size)?)
    } else {
        (None, read_reg(b, insn.op0_register()))
    };
    let one = b.c(1);
    let m = b.shl(one, bit);
    let t = b.and(x, m);
    let zero = b.c(0);
    let c = b.icmp(Cmp::Ne, t, zero);
    if writes {
        let v = match insn.mnemonic() {
            Mnemonic::Bts => b.or(x, m),
            Mnemonic::Btr => {
                let nm = b.not(m);
                b.and(x, nm)
            }
            _ => b.xor(x, m),
        };
        match addr {
            Some(a) => b.store(a, v, size)?,
            None => write_reg(b, insn.op0_register(), v),
        }
    }
    set_one_flag(b, rflags::CF, c);
    Ok(())
}

#[inline(never)]
fn bit_scan<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let src = read_op(b, 1, size)?;
    let zero = b.c(0);
    let is_zero = b.icmp(Cmp::Eq, src, zero);
    let idx = if insn.mnemonic() == Mnemonic::Bsf {
        b.ctz(src)
    } else {
        let l = b.clz(src);
        let k = b.c(63);
        b.sub(k, l)
    };
    // A zero source leaves the destination unchanged, all 64 bits of it (as AMD documents
    // and this host does): no 32-bit zero extension either.
    let r = insn.op0_register();
    let (gi, _) = gpr_of(r);
    let old = b.get_gpr(gi);
    write_reg(b, r, idx);
    let merged = b.get_gpr(gi);
    let v = b.select(is_zero, old, merged);
    b.set_gpr(gi, v);
    set_one_flag(b, rflags::ZF, is_zero);
    Ok(())
}

#[inline(never)]
fn bit_count<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let src = read_op(b, 1, size)?;
    let zero = b.c(0);
    let src_zero = b.icmp(Cmp::Eq, src, zero);
    let res = match insn.mnemonic() {
        Mnemonic::Popcnt => b.popcnt(src),
        Mnemonic::Lzcnt => {
            let l = b.clz(src);
            let k = b.c(64 - w as u64);
            b.sub(l, k)
        }
        _ => {
            let t = b.ctz(src);
            let wv = b.c(w as u64);
            b.select(src_zero, wv, t)
        }
    };
    write_op(b, 0, size, res)?;
    let f = if insn.mnemonic() == Mnemonic::Popcnt {
        let z = b.b2v(src_zero);
        let k6 = b.c(6);
        b.shl(z, k6)
    } else {
        let old = current_flags(b);
        let keep = b.c(!(rflags::CF | rflags::ZF));
        let f = b.and(old, keep);
        let c = b.b2v(src_zero);
        let rz = b.icmp(Cmp::Eq, res, zero);
        let z = b.b2v(rz);
        let k6 = b.c(6);
        let z = b.shl(z, k6);
        let f = b.or(f, c);
        b.or(f, z)
    };
    let st = concrete(b, f);
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
fn bmi<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = op_size(insn, 0);
    let w = bits(size);
    let zero = b.c(0);
    let one = b.c(1);
    let logic = |_: &mut B, r: B::V| FlagState::new(FlagKind::Logic, size, r, zero, zero, zero);
    match insn.mnemonic() {
        M::Andn => {
            let x = read_op(b, 1, size)?;
            let y = read_op(b, 2, size)?;
            let nx = b.not(x);
            let r = b.and(nx, y);
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
            let st = logic(b, r);
            b.set_flags(st);
        }
        M::Bextr => {
            let x = read_op(b, 1, size)?;
            let ctl = read_op(b, 2, size)?;
            let ff = b.c(0xff);
            let start = b.and(ctl, ff);
            let k8 = b.c(8);
            let len = b.shr(ctl, k8);
            let len = b.and(len, ff);
            let wv = b.c(w as u64);
            let s = b.shr(x, start);
            let start_big = b.icmp(Cmp::Uge, start, wv);
            let s = b.select(start_big, zero, s);
            let mask = b.shl(one, len);
            let mask = b.sub(mask, one);
            let len_big = b.icmp(Cmp::Uge, len, wv);
            let all = b.c(u64::MAX);
            let mask = b.select(len_big, all, mask);
            let r = b.and(s, mask);
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
            let st = logic(b, r);
            b.set_flags(st);
        }
        M::Blsi | M::Blsmsk | M::Blsr => {
            let x = read_op(b, 1, size)?;
            let r = match insn.mnemonic() {
                M::Blsi => {
                    let n = b.sub(zero, x);
                    b.and(n, x)
                }
                M::Blsmsk => {
                    let d = b.sub(x, one);
                    b.xor(d, x)
                }
                _ => {
                    let d = b.sub(x, one);
                    b.and(d, x)
                }
            };
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
            let c = if insn.mnemonic() == M::Blsi {
                b.icmp(Cmp::Ne, x, zero)
            } else {
                b.icmp(Cmp::Eq, x, zero)
            };
            let f = b.bconst(false);
            let bits_v = result_flags(b, r, size, c, f);
            let st = concrete(b, bits_v);
            b.set_flags(st);
        }
        M::Bzhi => {
            let x = read_op(b, 1, size)?;
            let idx = read_op(b, 2, size)?;
            let ff = b.c(0xff);
            let n = b.and(idx, ff);
            let wv = b.c(w as u64);
            let big = b.icmp(Cmp::Uge, n, wv);
            let mask = b.shl(one, n);
            let mask = b.sub(mask, one);
            let m = b.and(x, mask);
            let r = b.select(big, x, m);
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
            let wm1 = b.c(w as u64 - 1);
            let c = b.icmp(Cmp::Ugt, n, wm1);
            let f = b.bconst(false);
            let bits_v = result_flags(b, r, size, c, f);
            let st = concrete(b, bits_v);
            b.set_flags(st);
        }
        M::Pdep | M::Pext => {
            let x = read_op(b, 1, size)?;
            let m = read_op(b, 2, size)?;
            let mut r = zero;
            if b.is_interpreter() {
                let (xv, mv) = (b.const_of(x).unwrap_or(0), b.const_of(m).unwrap_or(0));
                let v = if insn.mnemonic() == M::Pdep {
                    pdep(xv, mv)
                } else {
                    pext(xv, mv)
                };
                r = b.c(v);
            } else {
                // Unrolled over the mask bits: for each bit position i, PDEP takes the next
                // source bit (popcount of mask bits below i) and PEXT the reverse.
                let mut k = zero;
                for i in 0..w {
                    let bit_i = b.c(1u64 << i);
                    let mi = b.and(m, bit_i);
                    let set = b.icmp(Cmp::Ne, mi, zero);
                    if insn.mnemonic() == M::Pdep {
                        let sx = b.shr(x, k);
                        let sx = b.and(sx, one);
                        let iv = b.c(i as u64);
                        let sx = b.shl(sx, iv);
                        let t = b.or(r, sx);
                        r = b.select(set, t, r);
                    } else {
                        let xi = b.and(x, bit_i);
                        let iv = b.c(i as u64);
                        let xi = b.shr(xi, iv);
                        let xi = b.shl(xi, k);
                        let t = b.or(r, xi);
                        r = b.select(set, t, r);
                    }
                    let k1 = b.add(k, one);
                    k = b.select(set, k1, k);
                }
            }
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
        }
        M::Rorx => {
            let x = read_op(b, 1, size)?;
            let n = insn.immediate(2) & (w as u64 - 1);
            let nv = b.c(n);
            let back = b.c((w as u64 - n) % 64);
            let p = b.shr(x, nv);
            let q = b.shl(x, back);
            let q = if n == 0 { zero } else { q };
            let r = b.or(p, q);
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
        }
        M::Sarx | M::Shlx | M::Shrx => {
            let x = read_op(b, 1, size)?;
            let c = read_op(b, 2, size)?;
            let m = b.c(w as u64 - 1);
            let n = b.and(c, m);
            let r = match insn.mnemonic() {
                M::Sarx => {
                    let s = b.sext(x, w);
                    b.sar(s, n)
                }
                M::Shlx => b.shl(x, n),
                _ => b.shr(x, n),
            };
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
        }
        _ => {
            // MULX: op0 = high half, op1 = low half, op2 = source; RDX is the other factor.
            let src = read_op(b, 2, size)?;
            let d = b.get_gpr(RDX);
            let d = b.zext(d, w);
            let (lo, hi) = if size == 8 {
                (b.mul(d, src), b.umulh(d, src))
            } else {
                let p = b.mul(d, src);
                let k = b.c(32);
                (b.zext(p, 32), b.shr(p, k))
            };
            write_op(b, 1, size, lo)?;
            write_op(b, 0, size, hi)?;
        }
    }
    Ok(())
}

pub fn pdep(x: u64, mut m: u64) -> u64 {
    let mut r = 0;
    let mut k = 0;
    while m != 0 {
        let low = m & m.wrapping_neg();
        if x >> k & 1 != 0 {
            r |= low;
        }
        k += 1;
        m &= m - 1;
    }
    r
}

pub fn pext(x: u64, mut m: u64) -> u64 {
    let mut r = 0;
    let mut k = 0;
    while m != 0 {
        let low = m & m.wrapping_neg();
        if x & low != 0 {
            r |= 1 << k;
        }
        k += 1;
        m &= m - 1;
    }
    r
}

#[inline(never)]
fn enter<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let alloc = insn.immediate(0) & 0xffff;
    let level = insn.immediate(1) & 31;
    // ENTERW pushes 2-byte frame pointers and writes BP only.
    let size: u32 = if insn.code() == iced_x86::Code::Enterw_imm16_imm8 {
        2
    } else {
        8
    };
    let rbp = b.get_gpr(RBP);
    let sp0 = b.get_gpr(RSP);
    let step = b.c(size as u64);
    // All stores go below the original RSP; registers change only after they all succeeded.
    let mut sp = b.sub(sp0, step);
    stack_canonical(b, sp)?;
    b.store(sp, rbp, size)?;
    let frame = sp;
    if level > 0 {
        let mut bp = rbp;
        for _ in 1..level {
            bp = b.sub(bp, step);
            stack_canonical(b, bp)?;
            let v = b.load(bp, size)?;
            sp = b.sub(sp, step);
            stack_canonical(b, sp)?;
            b.store(sp, v, size)?;
        }
        sp = b.sub(sp, step);
        stack_canonical(b, sp)?;
        b.store(sp, frame, size)?;
    }
    let a = b.c(alloc);
    let sp = b.sub(sp, a);
    // A write at the final stack pointer must be possible too (SDM ENTER: "#PF ... if a write
    // using the final value of the stack pointer ... would cause a page fault").
    stack_canonical(b, sp)?;
    b.probe_write(sp, size)?;
    if size == 2 {
        write_reg(b, Register::BP, frame);
    } else {
        b.set_gpr(RBP, frame);
    }
    b.set_gpr(RSP, sp);
    Ok(())
}
