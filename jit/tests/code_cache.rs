//! Compiled code taken from the code cache runs exactly as freshly compiled code: a snippet
//! whose blocks reach every kind of relocated address (helper shims through TLB misses and
//! DIV, exit slots through a chained loop, the jump cache through RET, a decoded instruction
//! through REP MOVSB's `krr_interpret`, a pure host function through CRC32) runs in a new
//! engine from a cache the first filled, compiling nothing.

use iced_x86::code_asm::*;
use krr_jit::snippet::*;
use krr_runtime::arch::{mxcsr, rflags};

mod common;
use common::assemble;

const CODE: u64 = 0x40_0000;
const DATA: u64 = 0x60_0000;

fn program() -> Snippet {
    let code = assemble(
        |a| {
            let mut top = a.create_label();
            let mut func = a.create_label();
            let mut done = a.create_label();
            a.mov(ecx, 200)?;
            a.mov(rsi, DATA)?;
            a.set_label(&mut top)?;
            a.add(rax, qword_ptr(rsi))?;
            a.mov(qword_ptr(rsi + 8), rax)?;
            a.xor(edx, edx)?;
            a.mov(ebx, 7)?;
            a.div(rbx)?;
            a.crc32(eax, ebx)?;
            a.call(func)?;
            a.dec(ecx)?;
            a.jnz(top)?;
            a.mov(rsi, DATA)?;
            a.mov(rdi, DATA + 0x100)?;
            a.mov(ecx, 16)?;
            a.rep().movsb()?;
            a.jmp(done)?;
            a.set_label(&mut func)?;
            a.add(rax, rdx)?;
            a.ret()?;
            a.set_label(&mut done)?;
            a.nop()?;
            Ok(())
        },
        CODE,
    );
    Snippet {
        code_addr: CODE,
        code,
        regions: vec![Region {
            addr: DATA,
            data: (0..4096u32).map(|i| (i * 7) as u8).collect(),
        }],
    }
}

fn init() -> UserState {
    let mut s = UserState {
        rip: CODE,
        rflags: rflags::IF | rflags::FIXED1,
        mxcsr: mxcsr::INIT,
        ..Default::default()
    };
    s.gpr[4] = DATA + 0x800;
    s
}

#[test]
fn cached_code_runs_like_compiled_code() {
    if !std::arch::is_x86_feature_detected!("sse4.2") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("krr-ccache-jit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir: &'static std::path::Path = Box::leak(dir.into_boxed_path());
    let s = program();
    let reference = run_snippet(&s, &init(), Tier::Interpreter, 1_000_000).unwrap();
    assert_eq!(reference.outcome, SnippetEnd::Completed);
    for tier in [Tier::Jit, Tier::Tiered] {
        let opts = SnippetOptions {
            code_cache: Some(dir),
            ..Default::default()
        };
        // The first engine compiles (or, for the second tier, finds Jit's blocks where
        // their shapes agree); the second finds everything in the cache.
        let first = run_snippet_with(&s, &init(), tier, 1_000_000, opts).unwrap();
        let second = run_snippet_with(&s, &init(), tier, 1_000_000, opts).unwrap();
        for r in [&first, &second] {
            assert_eq!(r.state, reference.state, "{tier:?}");
            assert_eq!(r.regions, reference.regions, "{tier:?}");
            assert_eq!(r.instructions, reference.instructions, "{tier:?}");
        }
        let installed = first.stats.blocks_compiled + first.stats.blocks_cached;
        assert!(installed > 0, "{tier:?}");
        assert_eq!(second.stats.blocks_compiled, 0, "{tier:?}");
        assert_eq!(second.stats.blocks_cached, installed, "{tier:?}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
