//! The device scenario's hardware and QEMU (`Scenario::devices`, kernel `devices.c`): a PIIX
//! IDE function, an e1000 and an NVMe controller, played where KRR's QEMU and KVM would
//! (krr-spec 1.4, 3.5, 3.9), and the recordings' DMA logs:
//! - IDE: the BMDMA command write that starts a read appends DMA_DONE (16 zero bytes) to the
//!   ring at that instruction (QEMU's `ide_dma_cb`); the sectors reach the PRD buffers later
//!   (here: at a chosen count while the kernel waits), one `kernel_rr_dma-9.log` entry per
//!   command (one SG per PRD; inst_cnt, rip, follow_num, cpu_id and owner_id left as garbage,
//!   as QEMU leaves them), then the completion interrupt (IRQ 14 at vector 0x24).
//! - NVMe: the SQ tail doorbell (MMIO write) queues the command; the completion (the data
//!   and the 16-byte CQE, two SGs) is posted at a chosen count on the vCPU thread, which
//!   stamps the entry with that count (KVM's counter), `follow_num` = the ring's
//!   `current_pos`, cpu_id 0, owner_id 0, dev_type 1 (`kernel_rr_dma-40.log`, devfn 00:05.0),
//!   then the MSI (vector 0x26).
//! - e1000: a packet is received at a chosen count: its payload and the 16-byte descriptor
//!   write-back are one `kernel_rr_network.log` entry (inst_cnt = the count, rip 0,
//!   follow_num = `current_pos`, cpu_id 0; dev_type, owner_id and dev_index garbage), then
//!   the interrupt (vector 0x25). Register reads in kernel mode are MMIO events (the value;
//!   id, inst_cnt and rip 0), appended to the ring at the read (QEMU's `e1000.c`).
//! - Interrupts: KVM's INTERRUPT appends (`from` = 0), as for the timer; an e1000 packet
//!   also arrives while user code runs (its entry then carries the count user mode left
//!   the kernel at, its interrupt a user RIP).
//! - The other user actions: `pagemap(addr)` (the kernel reads a user page whole after
//!   `rr_record_page_map`: a 4 KiB CFU with `dest_addr` 0) and `strsum(addr, max)` (a
//!   word-at-a-time get_user reader with a look-behind `rr_gfu_begin` that records nothing,
//!   which KRR's replayer skips by its `ptr == RDI + 8` rule).
//! - When the ring is nearly full (long runs), the recorder fills it so that an IDE read's
//!   host appends (DMA_DONE, the INTERRUPT, the port inputs) run past `total_size`: KVM and
//!   QEMU append without rotating, and the guest's next allocation rotates (hypercall 102).
//!
//! Choices where the spec is open: the IDE data is written when the recorder completes the
//! command (QEMU's AIO completes some time after the start); KRR's replayer writes it at the
//! start, which is the same to a kernel that only reads the buffers after the interrupt (as
//! drivers do). Likewise the e1000 entry, which KRR's replayer writes one instruction before
//! its count: the kernel reads the ring only after the interrupt. The snapshot holds the
//! IDE (`0000:00:01.1/ide`) and e1000 (`0000:00:03.0/e1000`) functions' PCI config spaces
//! (BAR4 = the BMDMA ports, BAR0 = the registers), which is where a replayer finds them;
//! NVMe has no section (its DMA log's `dev_type` says what it is).

use super::m;
use super::{Recorder, Rng};
use krr::krr_rec::dma::{DmaEntry, DmaSg};
use krr::vmlinux::Vmlinux;
use krr_jit::Engine;
use krr_runtime::{Core, CpuState};
use std::path::Path;

pub const DEV_VA: u64 = 0xffff_ffff_82c0_0000;
pub const DEV_PA: u64 = 0xfe00_0000;
pub const E1000_PA: u64 = DEV_PA;
pub const NVME_PA: u64 = DEV_PA + 0x2_0000;
pub const IDE_BM: u16 = 0xc040;
pub const ATA_BASE: u16 = 0x1f0;
pub const IDE_VECTOR: u8 = 0x24;
pub const E1000_VECTOR: u8 = 0x25;
pub const NVME_VECTOR: u8 = 0x26;
/// PCI devfn of the IDE function (00:01.1) and the NVMe controller (00:05.0).
pub const IDE_DEVFN: u32 = 9;
pub const NVME_DEVFN: u32 = 5 << 3;
const SYS_DISK: u64 = 3;
const SYS_NET: u64 = 4;
const SYS_NVME: u64 = 5;
const SYS_PAGEMAP: u64 = 6;
const SYS_STRSUM: u64 = 7;
const RX_DESCS: u64 = 8;
const NVME_QUEUE: u64 = 16;

/// What the device scenario did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub ide_reads: u64,
    pub nvme_reads: u64,
    /// Of them polled (no interrupt).
    pub nvme_polled: u64,
    pub packets: u64,
    /// `net` system calls that waited for a packet (one e1000 interrupt each).
    pub net_calls: u64,
    /// Packets that arrived while user code ran (their interrupt taken in user mode).
    pub user_packets: u64,
    pub device_irqs: u64,
    pub page_maps: u64,
    pub strsums: u64,
    /// IDE reads whose host-side appends (DMA_DONE, the interrupt, the port inputs) ran
    /// past the ring's end: KVM and QEMU never rotate, the guest's next allocation does.
    pub appends_past_full: u64,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    IdeData,
    NvmeComplete,
    Receive,
    Irq(u8),
}

/// The devices' registers and QEMU's DMA logs.
pub struct Dev {
    rng: Rng,
    bm_cmd: u8,
    bm_status: u8,
    prd: u32,
    ata: [u8; 8],
    ide_started: bool,
    e1000: [u32; 0x2820 / 4],
    nvme_doorbell: Option<u32>,
    /// The command in flight is polled (no interrupt).
    nvme_polled: bool,
    /// A packet's interrupt was taken in user mode: the next `net` call finds it at once.
    net_ready: bool,
    nvme_sq_head: u64,
    nvme_cq_tail: u64,
    nvme_phase: u16,
    /// Kernel symbols' physical addresses: the NVMe queues (created at boot by admin
    /// commands, not modelled).
    nvme_sq_pa: u64,
    nvme_cq_pa: u64,
    /// Scheduled device work, by kernel count.
    plan: Vec<(u64, Action)>,
    pub ide_log: Vec<DmaEntry>,
    pub nvme_log: Vec<DmaEntry>,
    pub net_log: Vec<DmaEntry>,
    pub stats: DeviceStats,
}

fn kpa(v: &Vmlinux, name: &str) -> u64 {
    m::kernel_pa(v.symbol(name).unwrap_or_else(|| panic!("{name}")).addr)
}

/// Before boot: the kernel's device mapping (a 2 MiB uncached page of the kernel's PD over
/// the MMIO BARs) and `krr_devices` = 1.
pub fn prepare(core: &mut Core, v: &Vmlinux) {
    let pd_k = m::PML4_PA + 0x2000;
    let slot = pd_k + ((DEV_VA >> 21) & 0x1ff) * 8;
    let mem = core.mem_mut();
    assert_eq!(
        mem.read_u64(slot).unwrap(),
        0,
        "the device page's slot is free"
    );
    mem.write_u64(slot, DEV_PA | m::PTE_P | m::PTE_RW | 0x80 | 0x18)
        .unwrap();
    mem.write_u64(kpa(v, "krr_devices"), 1).unwrap();
}

/// A PCI function's migration section: the version word and its config space (a device of
/// unknown layout to the reader: skipped by its description, its config read by BAR).
fn pci_section(
    name: &str,
    ids: u32,
    bar_off: usize,
    bar: u32,
) -> crate::krr_rec_writer::migration::Device {
    let mut config = vec![0u8; 256];
    config[0..4].copy_from_slice(&ids.to_le_bytes());
    config[4] = 0x07; // I/O, memory, bus master
    config[bar_off..bar_off + 4].copy_from_slice(&bar.to_le_bytes());
    let mut fields = 1u32.to_be_bytes().to_vec();
    fields.extend_from_slice(&config);
    fields.extend_from_slice(&[0; 16]); // the device's own state (not read)
    crate::krr_rec_writer::migration::Device {
        name: name.into(),
        vmsd_name: name.rsplit('/').next().unwrap().into(),
        instance: 0,
        version: 3,
        fields,
        subsections: Vec::new(),
    }
}

/// The snapshot sections of the IDE function and the e1000.
pub fn sections() -> Vec<crate::krr_rec_writer::migration::Device> {
    vec![
        pci_section("0000:00:01.1/ide", 0x7010_8086, 0x20, IDE_BM as u32 | 1),
        pci_section("0000:00:03.0/e1000", 0x100e_8086, 0x10, E1000_PA as u32),
    ]
}

impl Dev {
    pub fn new(seed: u64, v: &Vmlinux) -> Dev {
        Dev {
            rng: Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1),
            bm_cmd: 0,
            bm_status: 0,
            prd: 0,
            ata: [0; 8],
            ide_started: false,
            e1000: [0; 0x2820 / 4],
            nvme_doorbell: None,
            nvme_polled: false,
            net_ready: false,
            nvme_sq_head: 0,
            nvme_cq_tail: 0,
            nvme_phase: 1,
            nvme_sq_pa: kpa(v, "krr_nvme_sq"),
            nvme_cq_pa: kpa(v, "krr_nvme_cq"),
            plan: Vec::new(),
            ide_log: Vec::new(),
            nvme_log: Vec::new(),
            net_log: Vec::new(),
            stats: DeviceStats::default(),
        }
    }

    /// A port read of these devices (KVM records it as IO_IN like any other).
    pub fn port_in(&mut self, port: u16) -> Option<u64> {
        match port {
            p if p == IDE_BM + 2 => Some(self.bm_status as u64),
            p if p == ATA_BASE + 7 => Some(0x50), // DRDY DSC
            _ => None,
        }
    }

    /// A port write; `ring` gets QEMU's DMA_DONE when a read DMA starts.
    pub fn port_out(&mut self, ring: &super::Ring, port: u16, value: u32) -> bool {
        match port {
            p if (ATA_BASE..ATA_BASE + 8).contains(&p) => {
                self.ata[(p - ATA_BASE) as usize] = value as u8
            }
            p if p == IDE_BM => {
                let old = std::mem::replace(&mut self.bm_cmd, value as u8);
                if value & 1 != 0 && old & 1 == 0 && value & 8 != 0 {
                    assert_eq!(self.ata[7], 0xc8, "READ DMA");
                    if ring.enabled() {
                        ring.append(7, &[0; 16]);
                    }
                    self.bm_status |= 1;
                    self.ide_started = true;
                }
            }
            p if p == IDE_BM + 2 => self.bm_status &= !(value as u8 & 6),
            p if p == IDE_BM + 4 => self.prd = value,
            _ => return false,
        }
        true
    }

    /// An MMIO read: the e1000's registers (an MMIO event in kernel mode while recording).
    pub fn mmio_read(&mut self, ring: &super::Ring, cpu: &CpuState, phys: u64) -> Option<u64> {
        if (NVME_PA..NVME_PA + 0x4000).contains(&phys) {
            panic!("the kernel read an NVMe register ({phys:#x}): KRR does not record those");
        }
        if !(E1000_PA..E1000_PA + 0x2_0000).contains(&phys) {
            return None;
        }
        let reg = (phys - E1000_PA) as usize;
        let value = match reg {
            0x08 => 0x8008_0783, // STATUS: full duplex, link up, 1000 Mb/s
            0xc0 => std::mem::take(&mut self.e1000[0xc0 / 4]), // ICR: read to clear
            r if r / 4 < self.e1000.len() => self.e1000[r / 4],
            _ => 0,
        } as u64;
        if ring.enabled() && cpu.cpl() == 0 {
            let mut p = [0u8; 32];
            p[8..16].copy_from_slice(&value.to_le_bytes());
            ring.append(13, &p);
        }
        Some(value)
    }

    pub fn mmio_write(&mut self, phys: u64, value: u64) -> bool {
        if (E1000_PA..E1000_PA + 0x2_0000).contains(&phys) {
            let reg = (phys - E1000_PA) as usize / 4;
            if reg < self.e1000.len() {
                self.e1000[reg] = value as u32;
            }
            return true;
        }
        if (NVME_PA..NVME_PA + 0x4000).contains(&phys) {
            if phys - NVME_PA == 0x1008 {
                self.nvme_doorbell = Some(value as u32);
            }
            return true;
        }
        false
    }

    /// Work the engine must return for (a command started).
    pub fn wants_exit(&self) -> bool {
        self.ide_started || self.nvme_doorbell.is_some()
    }

    pub fn due(&self) -> u64 {
        self.plan.iter().map(|p| p.0).min().unwrap_or(u64::MAX)
    }

    /// The DMA logs beside the recording.
    pub fn write_logs(&self, dir: &Path) {
        let w = |name: String, e: &[DmaEntry]| {
            std::fs::write(dir.join(name), crate::krr_rec_writer::dma_bytes(e)).unwrap()
        };
        w(format!("kernel_rr_dma-{IDE_DEVFN}.log"), &self.ide_log);
        w(format!("kernel_rr_dma-{NVME_DEVFN}.log"), &self.nvme_log);
        w("kernel_rr_network.log".into(), &self.net_log);
    }
}

fn entry(inst_cnt: u64, follow_num: u64, dev_type: i32, sgs: Vec<DmaSg>) -> DmaEntry {
    DmaEntry {
        inst_cnt,
        rip: 0,
        follow_num,
        cpu_id: 0,
        owner_id: 0,
        dev_type,
        dev_index: 0,
        sgs,
        offset: 0,
    }
}

impl Recorder {
    fn dev(&mut self) -> &mut Dev {
        self.bus.dev.as_mut().expect("the device scenario")
    }

    /// The next count at which device work is due.
    pub(super) fn device_due(&self) -> u64 {
        self.bus.dev.as_ref().map_or(u64::MAX, Dev::due)
    }

    /// At a budget stop or a bus request: schedule what the kernel started, do what is due.
    /// False when there was nothing for the devices.
    pub(super) fn device_step(&mut self) -> bool {
        if self.bus.dev.is_none() {
            return false;
        }
        let now = self.cpu().icount;
        let mut acted = false;
        let d = self.dev();
        if std::mem::take(&mut d.ide_started) {
            let at = now + 20 + d.rng.below64(200);
            let irq = at + 5 + d.rng.below64(40);
            d.plan.push((at, Action::IdeData));
            d.plan.push((irq, Action::Irq(IDE_VECTOR)));
            acted = true;
        }
        if let Some(tail) = d.nvme_doorbell.take() {
            assert_eq!(
                tail as u64,
                (d.nvme_sq_head + 1) % NVME_QUEUE,
                "one command"
            );
            let at = now + 20 + d.rng.below64(200);
            let irq = at + 5 + d.rng.below64(40);
            d.plan.push((at, Action::NvmeComplete));
            if !d.nvme_polled {
                d.plan.push((irq, Action::Irq(NVME_VECTOR)));
            }
            acted = true;
        }
        d.plan.sort_by_key(|p| p.0);
        while let Some(&(at, action)) = self.dev().plan.first() {
            if at > now {
                break;
            }
            self.dev().plan.remove(0);
            acted = true;
            match action {
                Action::IdeData => self.ide_data(),
                Action::NvmeComplete => self.nvme_complete(),
                Action::Receive => self.receive(),
                Action::Irq(v) => {
                    let c = self.cpu();
                    if c.cpl() == 0 && Engine::interrupts_enabled(c) {
                        self.inject(v);
                        self.dev().stats.device_irqs += 1;
                    } else {
                        self.dev().plan.insert(0, (now + 1, action));
                        break;
                    }
                }
            }
        }
        acted
    }

    /// `n` bytes of device data.
    fn dev_bytes(&mut self, n: usize) -> Vec<u8> {
        let rng = &mut self.dev().rng;
        (0..n).map(|_| rng.next() as u8).collect()
    }

    /// The sectors of the started READ DMA into its PRD buffers.
    fn ide_data(&mut self) {
        let mut sgs = Vec::new();
        let mut at = self.dev().prd as u64;
        loop {
            let prd = self.core.mem().read_u64(at).unwrap();
            let (addr, count, last) = (prd as u32 as u64, (prd >> 32) as u16, prd >> 63 != 0);
            let n = if count == 0 { 0x1_0000 } else { count as usize };
            let data = self.dev_bytes(n);
            self.core.mem_mut().write(addr, &data).unwrap();
            sgs.push(DmaSg { addr, data });
            if last {
                break;
            }
            at += 8;
        }
        let d = self.dev();
        d.bm_status = (d.bm_status & !1) | 4;
        // QEMU does not fill an IDE entry's position fields: whatever its node held.
        let garbage = |d: &mut Dev| d.rng.next() & 0xffff_ffff;
        let mut e = entry(garbage(d), garbage(d), 0, sgs);
        e.rip = garbage(d);
        e.cpu_id = garbage(d) as i32;
        e.owner_id = garbage(d) as i32;
        d.ide_log.push(e);
        d.stats.ide_reads += 1;
    }

    /// Post the NVMe READ's data and completion (on the vCPU thread, stamped with its count).
    fn nvme_complete(&mut self) {
        let (sq_pa, head) = (self.dev().nvme_sq_pa, self.dev().nvme_sq_head);
        let mut sqe = [0u8; 64];
        self.core.mem().read(sq_pa + 64 * head, &mut sqe).unwrap();
        let word = |o: usize| u32::from_le_bytes(sqe[o..o + 4].try_into().unwrap());
        assert_eq!(word(0) & 0xff, 0x02, "an NVMe READ");
        let cid = (word(0) >> 16) as u16;
        let prp1 = u64::from_le_bytes(sqe[24..32].try_into().unwrap());
        let blocks = (word(48) & 0xffff) as usize + 1;
        let data = self.dev_bytes(512 * blocks);
        self.core.mem_mut().write(prp1, &data).unwrap();
        let d = self.dev();
        d.nvme_sq_head = (head + 1) % NVME_QUEUE;
        let mut cqe = [0u8; 16];
        cqe[0..4].copy_from_slice(&(d.rng.next() as u32 & 0xff).to_le_bytes());
        cqe[8..10].copy_from_slice(&(d.nvme_sq_head as u16).to_le_bytes());
        cqe[10..12].copy_from_slice(&1u16.to_le_bytes());
        cqe[12..14].copy_from_slice(&cid.to_le_bytes());
        cqe[14..16].copy_from_slice(&d.nvme_phase.to_le_bytes());
        let cq_at = d.nvme_cq_pa + 16 * d.nvme_cq_tail;
        d.nvme_cq_tail = (d.nvme_cq_tail + 1) % NVME_QUEUE;
        if d.nvme_cq_tail == 0 {
            d.nvme_phase ^= 1;
        }
        self.core.mem_mut().write(cq_at, &cqe).unwrap();
        let (count, pos) = (self.cpu().icount, self.ring().u32(0) as u64);
        let sgs = vec![
            DmaSg { addr: prp1, data },
            DmaSg {
                addr: cq_at,
                data: cqe.to_vec(),
            },
        ];
        let d = self.dev();
        d.nvme_log.push(entry(count, pos, 1, sgs));
        d.stats.nvme_reads += 1;
        d.stats.nvme_polled += d.nvme_polled as u64;
    }

    /// One packet into the next receive descriptor's buffer, and its write-back.
    fn receive(&mut self) {
        let d = self.dev();
        let (base, len) = (d.e1000[0x2800 / 4] as u64, d.e1000[0x2808 / 4] as u64);
        let rdh = d.e1000[0x2810 / 4] as u64;
        assert_eq!(len, 16 * RX_DESCS);
        let n = 60 + d.rng.below64(1455) as usize;
        let desc_at = base + 16 * rdh;
        let buf = self.core.mem().read_u64(desc_at).unwrap();
        let data = self.dev_bytes(n);
        self.core.mem_mut().write(buf, &data).unwrap();
        let mut desc = [0u8; 16];
        desc[0..8].copy_from_slice(&buf.to_le_bytes());
        desc[8..10].copy_from_slice(&(n as u16).to_le_bytes());
        desc[12] = 0x03; // DD EOP
        self.core.mem_mut().write(desc_at, &desc).unwrap();
        let (count, pos) = (self.cpu().icount, self.ring().u32(0) as u64);
        let d = self.dev();
        d.e1000[0x2810 / 4] = ((rdh + 1) % RX_DESCS) as u32;
        d.e1000[0xc0 / 4] |= 0x80; // RXT0
        let mut e = entry(
            count,
            pos,
            2,
            vec![
                DmaSg { addr: buf, data },
                DmaSg {
                    addr: desc_at,
                    data: desc.to_vec(),
                },
            ],
        );
        // QEMU leaves these as its node held them.
        e.dev_type = d.rng.next() as i32;
        e.owner_id = d.rng.next() as i32;
        e.dev_index = d.rng.next() as i32;
        d.net_log.push(e);
        d.stats.packets += 1;
    }

    /// A `page map` system call of a data page user code wrote 64 bytes into.
    fn page_map(&mut self) {
        let page = m::USER_DATA + self.dev().rng.below64(m::USER_DATA_PAGES) * 4096;
        let at = self.dev().rng.below64(4096 - 64);
        let data = self.dev_bytes(64);
        self.user_write(page + at, &data);
        self.syscall(SYS_PAGEMAP, [page, 0, 0]);
        self.run_kernel();
        self.dev().stats.page_maps += 1;
    }

    /// When the ring is nearly full: fill it (page maps, then a `work` call of the right
    /// size) so that an IDE read's host-side appends run past its end. The INTERRUPT append
    /// is where KRR's replayer rotates on its own (krr-spec 8.3); KVM did not, the guest's
    /// next allocation does (hypercall 102). False when the ring is not near its end.
    fn disk_at_full_ring(&mut self) -> bool {
        let ring = self.ring();
        let total = ring.u64(32);
        let room = |r: &Self| total.saturating_sub(r.ring().current_byte());
        // A `work` call of n bytes allocates 385 + n (SYSCALL 188, CFU 53 + n, GFU, RDTSC
        // and RDSEED 36 each) and KVM appends its IO_IN (36); then the disk call's SYSCALL
        // (188) is to end 100 bytes before the end (no rotation), so DMA_DONE (20) fits and
        // the INTERRUPT (196) does not.
        const WORK: u64 = 385;
        const SYSCALL: u64 = 188;
        if !(WORK + SYSCALL + 100 + 1..=20_000).contains(&room(self)) {
            return false;
        }
        while room(self) > WORK + SYSCALL + 100 + 4096 {
            self.page_map();
        }
        let n = room(self) - (WORK + SYSCALL + 100);
        let buf = m::USER_DATA + self.dev().rng.below64(m::USER_DATA_PAGES * 4096 - n);
        let data = self.dev_bytes(n as usize);
        self.user_write(buf, &data);
        let ptr = m::USER_DATA + 8 * self.dev().rng.below64(m::USER_DATA_PAGES * 512);
        let word = self.dev_bytes(8);
        self.user_write(ptr, &word);
        self.syscall(0, [buf, n, ptr]);
        self.run_kernel();
        assert_eq!(room(self), SYSCALL + 100, "the ring filled as planned");
        let lba = self.dev().rng.below64(1 << 20);
        self.syscall(SYS_DISK, [lba, 0, 0]);
        self.run_kernel();
        assert!(self.ring().current_byte() > total, "past the end");
        self.dev().stats.appends_past_full += 1;
        true
    }

    /// The device scenario's extra user action after action `i` (the first eight fixed:
    /// every kind, and a second NVMe command, which is polled).
    pub(super) fn device_action(&mut self, i: usize) {
        self.user_continues();
        if i >= 8 && self.disk_at_full_ring() {
            return;
        }
        let kind = if i < 8 {
            [0, 1, 2, 3, 4, 5, 2, 1][i]
        } else if self.dev().rng.chance(60) {
            self.dev().rng.below64(6)
        } else {
            return;
        };
        match kind {
            0 => {
                let lba = self.dev().rng.below64(1 << 20);
                self.syscall(SYS_DISK, [lba, 0, 0]);
                self.run_kernel();
            }
            1 if std::mem::take(&mut self.dev().net_ready) => {
                self.syscall(SYS_NET, [0, 0, 0]);
                self.run_kernel();
            }
            1 => {
                self.syscall(SYS_NET, [0, 0, 0]);
                let now = self.cpu().icount;
                let d = self.dev();
                let packets = 1 + d.rng.below64(2);
                let mut at = now + 10 + d.rng.below64(100);
                for _ in 0..packets {
                    d.plan.push((at, Action::Receive));
                    at += 3 + d.rng.below64(60);
                }
                d.plan.push((at, Action::Irq(E1000_VECTOR)));
                d.stats.net_calls += 1;
                self.run_kernel();
            }
            2 => {
                let lba = self.dev().rng.below64(1 << 30);
                // Every other command polled (the first is not).
                let poll = self.dev().stats.nvme_reads % 2;
                self.dev().nvme_polled = poll == 1;
                self.syscall(SYS_NVME, [lba, poll, 0]);
                self.run_kernel();
            }
            // User code filled some of a data page; the kernel maps all of it.
            3 => self.page_map(),
            // A packet while user code runs: QEMU posts it at the vCPU's next exit, which
            // is the interrupt's (the entry's count is the kernel count user mode left).
            5 if !self.dev().net_ready => {
                self.scramble_user_regs();
                self.core.arch_mut().rip = m::USER_CODE;
                self.receive();
                self.inject(E1000_VECTOR);
                let d = self.dev();
                d.stats.device_irqs += 1;
                d.stats.user_packets += 1;
                d.net_ready = true;
                self.run_kernel();
            }
            5 => {}
            _ => {
                let len = 1 + self.dev().rng.below64(60) as usize;
                let off = 8 + self.dev().rng.below64(m::USER_DATA_PAGES * 4096 - 8 - 72);
                let mut s: Vec<u8> = self.dev_bytes(len).iter().map(|b| b | 1).collect();
                s.push(0);
                self.user_write(m::USER_DATA + off, &s);
                self.syscall(SYS_STRSUM, [m::USER_DATA + off, 64, 0]);
                self.run_kernel();
                self.dev().stats.strsums += 1;
            }
        }
    }
}
