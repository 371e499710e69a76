//! The opcode router: which function executes or translates each mnemonic. Every integer
//! instruction has its own out-of-line function, so [`execute`] stays a thin dispatcher whose
//! arms are tail calls; system instructions leave through one [`Helper::System`] call.

use super::classify::{is_far, is_string, is_system_only};
use super::system::system;
use super::*;
use super::{arith::*, bitops::*, control::*, data::*, flagops::*, shift::*};
use iced_x86::Mnemonic as M;
use krr_runtime::vector;

pub fn execute<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
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
        M::Xlatb => xlat(b, insn),
        M::Push => push_insn(b, insn),
        M::Pop => pop_insn(b, insn),
        M::Pushf | M::Pushfd | M::Pushfq => pushf(b, insn),
        M::Popf | M::Popfd | M::Popfq => popf(b, insn),
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
        M::Retf => system(b, insn),
        M::Jmp | M::Call if is_far(insn) => system(b, insn),
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
        _ => system_or_sse(b, insn),
    }
}

/// The rest: string instructions, the system instructions named by mnemonic, and SSE.
#[inline(always)]
fn system_or_sse<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    if is_string(insn) {
        super::string::execute(b)
    } else if is_system_only(insn) {
        system(b, insn)
    } else {
        super::sse::execute(b)
    }
}
