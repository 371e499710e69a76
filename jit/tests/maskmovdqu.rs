//! MASKMOVDQU at a system level, in every tier: faults are those of a 16-byte store whatever
//! the mask (measured on the reference host, an AMD EPYC: a window reaching into an unmapped
//! or read-only page faults at the first such byte even with an all-zero mask or with mask
//! bits only in the accessible page, writing nothing; the error code is a write's), and only
//! the selected bytes are written, one byte store each, nothing read (a doorbell MMIO page
//! sees exactly the selected byte stores and no read).

mod common;

use common::*;
use iced_x86::code_asm::*;
use krr_jit::engine::Exit;
use krr_runtime::arch::pf_error;
use krr_runtime::arch::vector::{GP, PF};

const PF_P: u64 = pf_error::P as u64;
const PF_W: u64 = pf_error::W as u64;

/// The data register's bytes: 0xa0 + i.
const DATA: u64 = KSCRATCH + 0x100;
/// The masks, 16 bytes per case.
const MASKS: u64 = KSCRATCH + 0x200;
/// What the test pages hold before the run.
const FILL: u8 = 0x11;

fn data_byte(i: usize) -> u8 {
    0xa0 + i as u8
}

/// A mask register selecting the bytes whose bit is set in `sel`: only bit 7 of each byte
/// counts (the other bits are set where it is clear).
fn mask_bytes(sel: u16) -> [u8; 16] {
    std::array::from_fn(|i| if sel & (1 << i) != 0 { 0x80 } else { 0x7f })
}

struct Case {
    rdi: u64,
    sel: u16,
    /// The 67-prefixed form (EDI).
    addr32: bool,
    /// The expected fault: (vector, error code, CR2).
    fault: Option<(u8, u64, u64)>,
}

/// Pages at `TEST_AREA`: +0 read/write, +0x1000 unmapped, +0x2000 read-only, +0x3000 and
/// +0x4000 read/write (CR0.WP is set: CPL0 writes to read-only pages fault).
#[test]
fn maskmovdqu_faults_as_a_16_byte_store_and_writes_only_selected_bytes() {
    let a = TEST_AREA;
    let cases_list = [
        // Mask bits only in the mapped first page: the unmapped rest still faults.
        Case {
            rdi: a + 0x1000 - 6,
            sel: 0x003f,
            addr32: false,
            fault: Some((PF, PF_W, a + 0x1000)),
        },
        // An all-zero mask faults too.
        Case {
            rdi: a + 0x1000 - 6,
            sel: 0,
            addr32: false,
            fault: Some((PF, PF_W, a + 0x1000)),
        },
        // Mask bits only in the unmapped page: the #PF address is still the page's start.
        Case {
            rdi: a + 0x1000 - 6,
            sel: 0xffc0,
            addr32: false,
            fault: Some((PF, PF_W, a + 0x1000)),
        },
        // Read-only first page, mask bits only in the writable second: a protection fault at
        // the window's start, nothing written in the second page.
        Case {
            rdi: a + 0x3000 - 6,
            sel: 0xffc0,
            addr32: false,
            fault: Some((PF, PF_P | PF_W, a + 0x3000 - 6)),
        },
        // A read-only page with an all-zero mask.
        Case {
            rdi: a + 0x2800,
            sel: 0,
            addr32: false,
            fault: Some((PF, PF_P | PF_W, a + 0x2800)),
        },
        // Two writable pages: only the selected bytes change.
        Case {
            rdi: a + 0x4000 - 6,
            sel: 0xa5c3,
            addr32: false,
            fault: None,
        },
        // [EDI]: the upper half of RDI is ignored.
        Case {
            rdi: 0xffff_ffff_0000_0000 | (a + 0x3100),
            sel: 0x8001,
            addr32: true,
            fault: None,
        },
        // Non-canonical with an all-zero mask: #GP(0).
        Case {
            rdi: 0x8000_0000_0000_0000,
            sel: 0,
            addr32: false,
            fault: Some((GP, 0, 0)),
        },
        Case {
            rdi: a + 0x10,
            sel: 0xffff,
            addr32: false,
            fault: None,
        },
    ];
    let kernel = |k: &mut Asm| {
        k.movdqu(xmm0, xmmword_ptr(DATA))?;
        cases(k, cases_list.len(), |k, i| {
            let c = &cases_list[i];
            k.mov(rdi, c.rdi)?;
            k.movdqu(xmm1, xmmword_ptr(MASKS + 16 * i as u64))?;
            k.def(&format!("m{i}"))?;
            if c.addr32 {
                k.db(&[0x67, 0x66, 0x0f, 0xf7, 0xc1])
            } else {
                k.maskmovdqu(xmm0, xmm1)
            }
        })?;
        stop(k)
    };
    let setup = |m: &mut Machine| {
        for (page, flags) in [
            (0, pte::RW | pte::NX),
            (0x2000, pte::NX),
            (0x3000, pte::RW | pte::NX),
            (0x4000, pte::RW | pte::NX),
        ] {
            m.pt.map(&mut m.mem, a + page, a + page, PageSize::K4, flags);
        }
        m.mem.write(a, &[FILL; 0x5000]).unwrap();
        let data: Vec<u8> = (0..16).map(data_byte).collect();
        m.mem.write(DATA, &data).unwrap();
        for (i, c) in cases_list.iter().enumerate() {
            m.mem
                .write(MASKS + 16 * i as u64, &mask_bytes(c.sel))
                .unwrap();
        }
        m.resume_at(PF, "next");
        m.resume_at(GP, "next");
    };
    let r = run_all(kernel, |_| Ok(()), setup);

    let expected_events: Vec<_> = cases_list
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.fault.map(|f| (f, r.label(&format!("m{i}")))))
        .collect();
    let events: Vec<_> = r
        .events
        .iter()
        .map(|e| ((e.vector, e.error_code, e.cr2), e.rip))
        .collect();
    // CR2 keeps the last #PF address across the #GP.
    let last_cr2 = |n: usize| {
        expected_events[..n]
            .iter()
            .rev()
            .find(|((v, _, _), _)| *v == PF)
            .map_or(0, |((_, _, addr), _)| *addr)
    };
    let expected: Vec<_> = expected_events
        .iter()
        .enumerate()
        .map(|(n, &((v, ec, addr), rip))| ((v, ec, if v == PF { addr } else { last_cr2(n) }), rip))
        .collect();
    assert_eq!(events, expected, "{:#x?}", r.events);

    // Memory: the fill everywhere but the selected bytes of the completed cases.
    let mut image = vec![FILL; 0x5000];
    for c in cases_list.iter().filter(|c| c.fault.is_none()) {
        let base = (c.rdi & if c.addr32 { 0xffff_ffff } else { u64::MAX }) - a;
        for i in 0..16 {
            if c.sel & (1 << i) != 0 {
                image[base as usize + i] = data_byte(i);
            }
        }
    }
    for page in [0u64, 0x2000, 0x3000, 0x4000] {
        let got = r.bytes(a + page, 0x1000);
        let want = &image[page as usize..page as usize + 0x1000];
        if got != want {
            let at = got.iter().zip(want).position(|(x, y)| x != y).unwrap();
            panic!(
                "memory at {:#x}: {:#x} instead of {:#x}",
                a + page + at as u64,
                got[at],
                want[at]
            );
        }
    }
}

/// MASKMOVDQU to a doorbell MMIO page: one byte store per selected byte, in address order, no
/// read (the test bus panics on MMIO reads); an all-zero mask touches nothing.
#[test]
fn maskmovdqu_to_mmio_makes_only_the_selected_byte_stores() {
    let sel: u16 = 0x8062;
    let r = all_tiers(|tier| {
        let mut m = Machine::new(
            |k| {
                k.movdqu(xmm0, xmmword_ptr(DATA))?;
                k.movdqu(xmm1, xmmword_ptr(MASKS))?;
                k.movdqu(xmm2, xmmword_ptr(MASKS + 16))?;
                k.mov(rdi, DOORBELL)?;
                k.maskmovdqu(xmm0, xmm1)?;
                k.def("after")?;
                k.maskmovdqu(xmm0, xmm2)?;
                k.mov(ebx, 2)?;
                report(k, rbx)?;
                stop(k)
            },
            |_| Ok(()),
        );
        m.pt.map(
            &mut m.mem,
            DOORBELL,
            DOORBELL,
            PageSize::K4,
            pte::RW | pte::NX,
        );
        let data: Vec<u8> = (0..16).map(data_byte).collect();
        m.mem.write(DATA, &data).unwrap();
        m.mem.write(MASKS, &mask_bytes(sel)).unwrap();
        m.mem.write(MASKS + 16, &mask_bytes(0)).unwrap();
        let after = m.label("after");
        let mut s = m.start(tier);
        // The doorbell asks for an exit: the run returns right after the instruction, with all
        // of its byte stores made.
        assert_eq!(s.run(), Exit::BusRequest, "{tier:?}");
        assert_eq!(s.cpu().rip, after, "{tier:?}");
        let exit = s.run();
        s.finish(exit)
    });
    let stores: Vec<Io> = (0..16)
        .filter(|i| sel & (1 << i) != 0)
        .map(|i| Io::Out {
            port: i as u16,
            size: 1,
            value: data_byte(i) as u32,
        })
        .collect();
    assert_eq!(r.io, stores);
    assert_eq!(r.reports, vec![2]);
    assert!(r.events.is_empty(), "{:#x?}", r.events);
}
