//! A QEMU migration stream writer (krr-spec.md 2.2-2.7) for tests: framing, the RAM
//! sections, `cpu` v12, `cpu_common`, `apic` v3, ivshmem-plain and opaque devices, the
//! VM-description JSON, and KRR's second (device-state) stream.

use krr::krr_rec::migration::cpu::{CpuCommon, Segment, X86Cpu};
use krr::krr_rec::migration::devices::{Apic, IoApic, Ivshmem, Pic};
use krr::krr_rec::migration::vmstate::Subsection;

/// Big-endian field encoding.
#[derive(Default)]
pub struct Be(pub Vec<u8>);

impl Be {
    pub fn u8(&mut self, v: u8) -> &mut Be {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Be {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Be {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Be {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn str8(&mut self, s: &str) -> &mut Be {
        self.u8(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Be {
        self.0.extend_from_slice(b);
        self
    }
    fn seg(&mut self, s: &Segment) -> &mut Be {
        self.u32(s.selector).u64(s.base).u32(s.limit).u32(s.flags)
    }
}

/// A device section: name, instance, version, field bytes, subsections.
#[derive(Clone)]
pub struct Device {
    pub name: String,
    pub vmsd_name: String,
    pub instance: u32,
    pub version: u32,
    pub fields: Vec<u8>,
    pub subsections: Vec<Subsection>,
}

/// A page record of the RAM sections.
#[derive(Clone)]
pub enum Page {
    Zero(u8),
    Data(Vec<u8>),
}

/// What a stream holds.
#[derive(Clone)]
pub struct Stream {
    pub machine: String,
    /// (block name, used length).
    pub blocks: Vec<(String, u64)>,
    /// (block, offset, page), in PART sections of `pages_per_part` records.
    pub pages: Vec<(String, u64, Page)>,
    pub pages_per_part: usize,
    pub devices: Vec<Device>,
    pub vmdesc: bool,
    pub footers: bool,
    /// KRR's second stream (device state only) after the first.
    pub second_stream: bool,
}

const RAM_SECTION_ID: u32 = 2;

impl Stream {
    fn footer(&self, b: &mut Be, id: u32) {
        if self.footers {
            b.u8(0x7e).u32(id);
        }
    }

    fn device(&self, b: &mut Be, id: u32, d: &Device) {
        b.u8(0x04)
            .u32(id)
            .str8(&d.name)
            .u32(d.instance)
            .u32(d.version);
        b.raw(&d.fields);
        for s in &d.subsections {
            b.u8(0x05).str8(&s.name).u32(s.version).raw(&s.data);
        }
        self.footer(b, id);
    }

    /// The VM-description JSON of the device sections.
    pub fn json(&self) -> String {
        let fields = |n: usize| {
            if n.is_multiple_of(8) && n > 8 {
                format!(
                    r#"[{{"name": "data", "type": "uint64", "size": 8, "array_len": {}}}]"#,
                    n / 8
                )
            } else {
                format!(r#"[{{"name": "data", "type": "buffer", "size": {n}}}]"#)
            }
        };
        let devs: Vec<String> = self
            .devices
            .iter()
            .map(|d| {
                let subs: Vec<String> = d
                    .subsections
                    .iter()
                    .map(|s| {
                        format!(
                            r#"{{"vmsd_name": "{}", "version": {}, "fields": {}}}"#,
                            s.name,
                            s.version,
                            fields(s.data.len())
                        )
                    })
                    .collect();
                format!(
                    r#"{{"name": "{}", "instance_id": {}, "vmsd_name": "{}", "version": {}, "fields": {}, "subsections": [{}]}}"#,
                    d.name,
                    d.instance,
                    d.vmsd_name,
                    d.version,
                    fields(d.fields.len()),
                    subs.join(", ")
                )
            })
            .collect();
        format!(r#"{{"page_size": 4096, "devices": [{}]}}"#, devs.join(", "))
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Be::default();
        b.u32(0x5145_564d).u32(3);
        b.u8(0x07)
            .u32(self.machine.len() as u32)
            .raw(self.machine.as_bytes());
        // RAM: START with the block list, PARTs with the pages, END.
        let total: u64 = self.blocks.iter().map(|x| x.1).sum();
        b.u8(0x01).u32(RAM_SECTION_ID).str8("ram").u32(0).u32(4);
        b.u64(total | 0x04);
        for (name, len) in &self.blocks {
            b.str8(name).u64(*len);
        }
        b.u64(0x10);
        self.footer(&mut b, RAM_SECTION_ID);
        let mut last: Option<&str> = None;
        for chunk in self.pages.chunks(self.pages_per_part.max(1)) {
            b.u8(0x02).u32(RAM_SECTION_ID);
            for (block, off, page) in chunk {
                let cont = last == Some(block.as_str());
                let flags = match page {
                    Page::Zero(_) => 0x02,
                    Page::Data(_) => 0x08,
                } | if cont { 0x20 } else { 0 };
                b.u64(off | flags);
                if !cont {
                    b.str8(block);
                }
                last = Some(block);
                match page {
                    Page::Zero(f) => b.u8(*f),
                    Page::Data(d) => b.raw(d),
                };
            }
            b.u64(0x10);
            self.footer(&mut b, RAM_SECTION_ID);
        }
        b.u8(0x03).u32(RAM_SECTION_ID).u64(0x10);
        self.footer(&mut b, RAM_SECTION_ID);
        for (i, d) in self.devices.iter().enumerate() {
            self.device(&mut b, 3 + i as u32, d);
        }
        b.u8(0x00);
        if self.vmdesc {
            let j = self.json();
            b.u8(0x06).u32(j.len() as u32).raw(j.as_bytes());
        }
        if self.second_stream {
            b.u32(0x5145_564d).u32(3);
            for (i, d) in self.devices.iter().enumerate() {
                self.device(&mut b, 3 + i as u32, d);
            }
            b.u8(0x00);
        }
        b.0
    }
}

pub fn cpu_fields(c: &X86Cpu) -> Vec<u8> {
    let mut b = Be::default();
    for r in c.regs {
        b.u64(r);
    }
    b.u64(c.rip).u64(c.rflags).u32(c.hflags);
    b.u16(c.fpuc).u16(c.fpus).u16(c.fptag).u16(c.fpregs_format);
    for (m, e) in c.fpregs {
        b.u64(m).u16(e);
    }
    for s in &c.segs {
        b.seg(s);
    }
    b.seg(&c.ldt).seg(&c.tr).seg(&c.gdt).seg(&c.idt);
    b.u32(c.sysenter_cs).u64(c.sysenter_esp).u64(c.sysenter_eip);
    b.u64(c.cr0).u64(c.cr2).u64(c.cr3).u64(c.cr4);
    for d in c.dr {
        b.u64(d);
    }
    b.u32(c.a20_mask).u32(c.mxcsr);
    for x in c.xmm {
        b.u64(x[0]).u64(x[1]);
    }
    b.u64(c.efer)
        .u64(c.star)
        .u64(c.lstar)
        .u64(c.cstar)
        .u64(c.fmask)
        .u64(c.kernelgsbase);
    b.u32(c.smbase).u64(c.pat).u32(c.hflags2);
    b.u64(0)
        .u64(0)
        .u64(0)
        .u64(0)
        .u16(0)
        .u16(0)
        .u16(0)
        .u16(0)
        .u32(0); // SVM
    b.u8(c.v_tpr);
    for m in c.mtrr_fixed {
        b.u64(m);
    }
    b.u64(c.mtrr_deftype);
    for (base, mask) in c.mtrr_var {
        b.u64(base).u64(mask);
    }
    b.u32(c.interrupt_injected as u32)
        .u32(c.mp_state)
        .u64(c.tsc);
    b.u32(c.exception_nr as u32)
        .u8(c.soft_interrupt)
        .u8(c.nmi_injected)
        .u8(c.nmi_pending);
    b.u8(c.has_error_code).u32(c.sipi_vector);
    b.u64(c.mcg_cap).u64(c.mcg_status).u64(c.mcg_ctl);
    for m in &c.mce_banks {
        b.u64(*m);
    }
    b.u64(c.tsc_aux)
        .u64(c.system_time_msr)
        .u64(c.wall_clock_msr);
    b.u64(c.xcr0).u64(c.xstate_bv);
    for y in c.ymmh {
        b.u64(y[0]).u64(y[1]);
    }
    // The spec's v12 field list is 1817 bytes.
    assert_eq!(b.0.len(), 1817);
    b.0
}

pub fn apic_fields(a: &Apic) -> Vec<u8> {
    let mut b = Be::default();
    b.u32(a.apicbase)
        .u8(a.id)
        .u8(a.arb_id)
        .u8(a.tpr)
        .u32(a.spurious_vec);
    b.u8(a.log_dest).u8(a.dest_mode);
    for v in a.isr.iter().chain(&a.tmr).chain(&a.irr).chain(&a.lvt) {
        b.u32(*v);
    }
    b.u32(a.esr).u32(a.icr[0]).u32(a.icr[1]).u32(a.divide_conf);
    b.u32(a.count_shift as u32).u32(a.initial_count);
    b.u64(a.initial_count_load_time as u64)
        .u64(a.next_time as u64)
        .u64(a.timer_expiry as u64);
    assert_eq!(b.0.len(), 181);
    b.0
}

pub fn ivshmem_fields(i: &Ivshmem) -> Vec<u8> {
    let mut b = Be::default();
    b.u32(2).raw(&i.config).u32(0).u32(0).u32(0).u32(0);
    b.u32(i.intrstatus).u32(i.intrmask);
    b.0
}

pub fn cpu_common_fields(c: &CpuCommon) -> Vec<u8> {
    let mut b = Be::default();
    b.u32(c.halted).u32(c.interrupt_request);
    b.0
}

/// A distinctive vCPU state (every field different), as a 64-bit kernel would have it.
pub fn sample_cpu(index: u32) -> X86Cpu {
    let k = index as u64 * 0x1000;
    let seg = |sel: u32, base: u64, flags: u32| Segment {
        selector: sel,
        base,
        limit: 0xffff_ffff,
        flags,
    };
    X86Cpu {
        regs: std::array::from_fn(|i| 0x1111_0000 + i as u64 + k),
        rip: 0xffff_ffff_8100_0000 + k,
        rflags: 0x246,
        hflags: 0x0040_c0b3,
        fpuc: 0x37f,
        fpus: 0x3800,
        fptag: 0x80,
        fpregs_format: 0,
        fpregs: std::array::from_fn(|i| (0x8000_0000_0000_0000 | i as u64, 0x3fff + i as u16)),
        segs: [
            seg(0, 0, 0),
            seg(0x10, 0, 0x00a0_9b00),
            seg(0x18, 0, 0x00c0_9300),
            seg(0, 0, 0),
            seg(0, 0x7f00_1234_5000, 0),
            seg(0, 0xffff_8880_1f40_0000 + k, 0),
        ],
        ldt: seg(0, 0, 0x8200),
        tr: seg(0x40, 0xfffffe00_00003000, 0x8b00),
        gdt: seg(0, 0xfffffe00_00001000, 0),
        idt: seg(0, 0xfffffe00_00000000, 0),
        sysenter_cs: 0x10,
        sysenter_esp: 0xfffffe00_00003000,
        sysenter_eip: 0xffff_ffff_8180_1e70,
        cr0: 0x8005_0033,
        cr2: 0x7f00_dead_0000,
        cr3: 0x1a2_b000 + k,
        cr4: 0x3706f0,
        dr: [0, 0, 0, 0, 0xffff0ff0, 0x400, 0xffff0ff0, 0x400],
        a20_mask: 0xffff_ffff,
        mxcsr: 0x1f80,
        xmm: std::array::from_fn(|i| [i as u64, !(i as u64)]),
        efer: 0xd01,
        star: 0x0023_0010_0000_0000,
        lstar: 0xffff_ffff_8180_0080,
        cstar: 0xffff_ffff_8180_1e00,
        fmask: 0x47700,
        kernelgsbase: 0x7f00_0000_1000 + k,
        smbase: 0x30000,
        pat: 0x0407_0406_0007_0406,
        hflags2: 0x2,
        v_tpr: 0,
        mtrr_fixed: std::array::from_fn(|i| 0x0606_0606_0606_0606 + i as u64),
        mtrr_deftype: 0xc00,
        mtrr_var: std::array::from_fn(|i| (0x8000_0000 + i as u64, 0xff_8000_0800)),
        interrupt_injected: -1,
        mp_state: 0,
        tsc: 123_456_789_000 + k,
        exception_nr: -1,
        soft_interrupt: 0,
        nmi_injected: 0,
        nmi_pending: 0,
        has_error_code: 0,
        sipi_vector: 0,
        mcg_cap: 0,
        mcg_status: 0,
        mcg_ctl: 0,
        mce_banks: (0..40).collect(),
        tsc_aux: index as u64,
        system_time_msr: 0,
        wall_clock_msr: 0,
        xcr0: 7,
        xstate_bv: 3,
        ymmh: std::array::from_fn(|i| [0x100 + i as u64, 0x200 + i as u64]),
        subsections: vec![
            Subsection {
                name: "cpu/msr_tscdeadline".into(),
                version: 1,
                data: 0x1234_5678u64.to_be_bytes().to_vec(),
            },
            Subsection {
                name: "cpu/pkru".into(),
                version: 1,
                data: 0x5555_5554u32.to_be_bytes().to_vec(),
            },
            Subsection {
                name: "cpu/spec_ctrl".into(),
                version: 1,
                data: 1u64.to_be_bytes().to_vec(),
            },
        ],
    }
}

pub fn sample_apic(id: u8) -> Apic {
    Apic {
        apicbase: 0xfee0_0900 & !(if id == 0 { 0 } else { 0x100 }),
        id,
        arb_id: id,
        tpr: 0x20,
        spurious_vec: 0x1ff,
        log_dest: 1 << id,
        dest_mode: 0xf,
        isr: [0, 0, 0, 0, 0, 0, 0, 0x100 << id],
        tmr: [0; 8],
        irr: [0, 1, 0, 0, 0, 0, 0, 0],
        lvt: [0xec, 0x10000, 0x400, 0x700, 0x10000, 0xfe],
        esr: 0,
        icr: [0x4ec, 1],
        divide_conf: 3,
        count_shift: 4,
        initial_count: 100_000,
        initial_count_load_time: 5_000_000,
        next_time: 6_000_000,
        timer_expiry: -1,
        subsections: vec![Subsection {
            name: "apic_sipi".into(),
            version: 1,
            data: vec![0, 0, 0, 0x9a, 0, 0, 0, 1],
        }],
    }
}

/// An ivshmem-plain device with BAR2 at `bar2` (64-bit memory BAR).
pub fn sample_ivshmem(bar2: u64) -> Ivshmem {
    let mut config = vec![0u8; 256];
    config[0..4].copy_from_slice(&[0xf4, 0x1a, 0x10, 0x11]);
    config[0x18..0x1c].copy_from_slice(&((bar2 as u32) | 0xc).to_le_bytes());
    config[0x1c..0x20].copy_from_slice(&((bar2 >> 32) as u32).to_le_bytes());
    Ivshmem {
        idstr: "0000:00:04.0/ivshmem-plain".into(),
        config,
        intrstatus: 0,
        intrmask: 0,
    }
}

/// The 8259s as Linux leaves them: vector bases 0x30/0x38, all lines masked but the
/// cascade, IRQ 9 level-triggered.
pub fn sample_pics() -> [Pic; 2] {
    let base = |irq_base| Pic {
        irq_base,
        init4: 1,
        ..Pic::default()
    };
    [
        Pic {
            imr: 0xfb,
            ..base(0x30)
        },
        Pic {
            imr: 0xff,
            elcr: 0x02,
            ..base(0x38)
        },
    ]
}

pub fn pic_fields(p: &Pic) -> Vec<u8> {
    vec![
        p.last_irr,
        p.irr,
        p.imr,
        p.isr,
        p.priority_add,
        p.irq_base,
        p.read_reg_select,
        p.poll,
        p.special_mask,
        p.init_state,
        p.auto_eoi,
        p.rotate_on_auto_eoi,
        p.special_fully_nested_mode,
        p.init4,
        p.single_mode,
        p.elcr,
    ]
}

/// An IO-APIC with the timer (pin 2) and the serial port (pin 4) routed.
pub fn sample_ioapic() -> IoApic {
    let mut io = IoApic {
        id: 0,
        ioregsel: 0x14,
        irr: 0,
        ioredtbl: [1 << 16; 24],
    };
    io.ioredtbl[2] = 0x30;
    io.ioredtbl[4] = 0x0100_0000_0000_0024;
    io
}

pub fn ioapic_fields(io: &IoApic) -> Vec<u8> {
    let mut b = vec![io.id, io.ioregsel];
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&io.irr.to_be_bytes());
    for e in io.ioredtbl {
        b.extend_from_slice(&e.to_be_bytes());
    }
    b
}

/// A device of unknown layout, skipped by the reader with the description.
pub fn opaque(name: &str, instance: u32, len: usize) -> Device {
    Device {
        name: name.into(),
        vmsd_name: name.rsplit('/').next().unwrap_or(name).into(),
        instance,
        version: 2,
        fields: (0..len).map(|i| (i * 7 + 0x05) as u8).collect(),
        subsections: vec![Subsection {
            name: format!("{}/sub", name.rsplit('/').next().unwrap_or(name)),
            version: 1,
            data: vec![0x05; 5],
        }],
    }
}

/// A KRR-like recording stream: `ram` bytes of pc.ram (pages at the start, just below the
/// 4 GiB hole and, for large guests, above 4 GiB), `n_cpus` vCPUs with APICs, ivshmem and
/// opaque devices around them.
pub fn sample_stream(ram: u64, n_cpus: u32) -> Stream {
    let mut pages = vec![
        ("pc.ram".to_string(), 0, Page::Data(vec![0xaa; 4096])),
        ("pc.ram".to_string(), 0x1000, Page::Zero(0)),
        ("pc.ram".to_string(), 0x2000, Page::Zero(0x5a)),
        ("pc.bios".to_string(), 0x3000, Page::Data(vec![0xbb; 4096])),
        (
            "pc.ram".to_string(),
            0x3000,
            Page::Data((0..4096).map(|i| i as u8).collect()),
        ),
        (
            "pc.ram".to_string(),
            ram - 0x1000,
            Page::Data(vec![0xcc; 4096]),
        ),
    ];
    // The first page again: the last copy wins.
    pages.push(("pc.ram".to_string(), 0, Page::Data(vec![0xab; 4096])));
    let mut devices = vec![opaque("timer", 0, 24)];
    for i in 0..n_cpus {
        devices.push(Device {
            name: "cpu_common".into(),
            vmsd_name: "cpu_common".into(),
            instance: i,
            version: 1,
            fields: cpu_common_fields(&CpuCommon {
                halted: (i > 0) as u32,
                interrupt_request: 0,
                subsections: vec![],
            }),
            subsections: vec![],
        });
        let c = sample_cpu(i);
        devices.push(Device {
            name: "cpu".into(),
            vmsd_name: "cpu".into(),
            instance: i,
            version: 12,
            fields: cpu_fields(&c),
            subsections: c.subsections.clone(),
        });
        let a = sample_apic(i as u8);
        devices.push(Device {
            name: "apic".into(),
            vmsd_name: "apic".into(),
            instance: i,
            version: 3,
            fields: apic_fields(&a),
            subsections: a.subsections.clone(),
        });
    }
    devices.push(opaque("0000:00:01.0/PIIX3", 0, 300));
    for (instance, pic) in sample_pics().into_iter().enumerate() {
        devices.push(Device {
            name: "i8259".into(),
            vmsd_name: "i8259".into(),
            instance: instance as u32,
            version: 1,
            fields: pic_fields(&pic),
            subsections: vec![],
        });
    }
    devices.push(Device {
        name: "ioapic".into(),
        vmsd_name: "ioapic".into(),
        instance: 0,
        version: 3,
        fields: ioapic_fields(&sample_ioapic()),
        subsections: vec![],
    });
    devices.push(Device {
        name: "0000:00:04.0/ivshmem-plain".into(),
        vmsd_name: "ivshmem-plain".into(),
        instance: 0,
        version: 0,
        fields: ivshmem_fields(&sample_ivshmem(0xf_0000_0000)),
        subsections: vec![],
    });
    devices.push(opaque("globalstate", 0, 9));
    Stream {
        machine: "pc-i440fx-7.0".into(),
        blocks: vec![
            ("pc.ram".into(), ram),
            ("pc.bios".into(), 0x40000),
            ("vga.vram".into(), 0x100_0000),
        ],
        pages,
        pages_per_part: 3,
        devices,
        vmdesc: true,
        footers: true,
        second_stream: true,
    }
}
