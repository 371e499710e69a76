//! Synthetic KRR recordings (issue 15 item 7): a small guest kernel with KRR's guest agent
//! (`kernel/`, built here with `cc` and `ld` into a vmlinux with symbols and DWARF), run in
//! krr's engine by a test-only recorder that plays the hardware, KVM, QEMU and user space,
//! and writes what KRR would have recorded: the snapshot (`test1`, a QEMU migration stream)
//! and `kernel_rr.log`.
//!
//! Test files use it with `mod krr_rec_writer; mod krr_synth;` and
//! [`build_recording`]`(&Scenario::small(), dir)`.
//!
//! What the recording is (krr-spec sections 1-4, one vCPU):
//! - The snapshot is taken at the first return to user mode after the kernel's boot routine
//!   (the recorder's `rr_record`): the vCPU at CPL3, RIP = the user loop, IA32_LSTAR =
//!   `entry_SYSCALL_64`, no KASLR slide. RAM = 64 MiB of pc.ram; ivshmem's BAR2 (the ring)
//!   at [`machine::BAR2`], not in the snapshot; the log's initial header restores it.
//! - `inst_cnt` = kernel instructions retired since the snapshot, as KVM's PMC3 counts them:
//!   krr's `icount`, with user-mode instructions (the SYSCALL the recorder executes) taken
//!   out and one added per instruction KVM emulates (VMCALL). A REP string instruction counts
//!   once per stop: when it completes, and also when an interrupt stops it between
//!   iterations (it ends there with RIP at itself). IN and RDTSC exit to KVM at record; their
//!   one count is the engine's own.
//! - The ring order is the log order: the guest agent's entries are written by the kernel's
//!   own code; KVM's (IO_IN in the port-IN callback, INTERRUPT `from`=0 at injection, the
//!   RDTSC exit patching id/inst_cnt/rip into the guest's entry) are written into the ring
//!   at the moment they happen; QEMU drains the ring at hypercall 102 and at the end.
//!
//! The scripted user actions: `work(buf, n, ptr)` system calls (copy_from_user of n bytes
//! with REP MOVSB, get_user, IN from port 0x71, RDTSC, RDSEED), `unmap(addr)` (PTE
//! get-and-clear) and `probe(addr)` (PTE read), user stores to unmapped pages (#PF from user
//! mode, demand-mapped by the kernel), a user CLI (#GP), timer interrupts in user mode; timer
//! interrupts in kernel mode at chosen counts, some inside the REP MOVSB (the recorder runs
//! k iterations itself, then injects: RIP = the REP, RCX = the bytes left); copies from
//! unmapped pages (#PF in kernel mode inside copy_from_user). The timer handler reads port
//! 0x61 (IO_IN) and writes the xAPIC's EOI (MMIO at 0xfee000b0, not recorded).
//!
//! Choices the spec leaves open:
//! - RDTSC exiting is on (`rr_trap_rdtsc=1`, which the artifact recommends), so RDTSC
//!   entries carry inst_cnt and rip.
//! - An interrupted REP MOVSB counts at the interruption and again when it completes (an
//!   instruction stopped by an interrupt with its state committed is retired as far as the
//!   counter goes; KRR's replayer counts a REP at each start and resume, and its RCX match
//!   with the n-1/n tolerance only works with this count: krr-spec open question 1).
//! - User code always runs at least one instruction before the next event: user RFLAGS are
//!   0x202 at every user event (RF clear). KRR's replay does not restore RFLAGS for
//!   interrupts taken in user mode; after a fault's IRETQ the replayed RFLAGS still has RF.
//! - The CFU `data` field in the file is a fixed fake host pointer (QEMU's node pointer).
//!   The CFU's last data byte (len = n + 1) is stale ring memory, as in KRR.
//! - Fields KRR's producers leave stale hold whatever the ring held: zeros before the first
//!   rotation (a fresh /dev/shm file), older entries' bytes after.
//! - BAR2 is small (2 MiB by default, not KRR's 4 GiB) so that rings rotate; the guest's
//!   full check is KRR's (`current_byte + 4 + size >= total_size`).
//! - The final header's `current_pos` counts every event; KRR's loader reads one fewer.
//!   [`FinalState`] is the state after all of them.
//!
//! The device scenario ([`Scenario::devices`], `devices.rs`, kernel `devices.c`) adds an IDE
//! function (bus-master READ DMA: DMA_DONE in the ring, `kernel_rr_dma-9.log`), an NVMe
//! controller (interrupt-driven and polled completions, `kernel_rr_dma-40.log`) and an
//! e1000 (receive DMA in `kernel_rr_network.log`, also while user code runs; its register
//! reads as MMIO events), their interrupts (KVM's INTERRUPT appends), page-map CFUs
//! (`rr_record_page_map` of a user page the kernel reads whole), a word-at-a-time get_user
//! reader whose look-behind call KRR's GFU skip rule serves (`rr_gfu_begin` with align 0
//! records nothing: the synthetic agent's stand-in for a begin call without its own event),
//! and host-side appends that run past the ring's end (KVM and QEMU never rotate; the
//! guest's next allocation does). `devices.rs`'s doc says where the device side acts and
//! what it leaves as garbage. The other scenarios have no devices (`krr_devices` = 0: the
//! kernel's device code never runs).
//!
//! Memory-input cases of krr-spec 3.6 and where they are: the PTE USER-bit check (the page
//! fault handler reads a not-present PTE through `rr_read_pte`: no event, and the replayer
//! must not take one), page-fault deferral (copy_from_user of a page not mapped yet: the
//! CFU is written at PF_EXEC_END), the GFU skip rule and page-map CFUs (device scenario).
//!
//! Not produced (one vCPU): INST_SYNC, RELEASE, INTERRUPT `from`=3, #DB/#BP, io_uring CFUs,
//! a deferred GFU; the exec-lock functions exist for the trap-point resolver only. A hazard
//! KRR has too: a
//! rotation between `rr_cfu_begin`'s allocation and `rr_cfu_end` (a kernel #PF whose
//! EXCEPTION entry fills the ring) saves the CFU before its data is written (likewise GFU);
//! the recorder asserts that no scenario runs into it.
//!
//! Two vCPUs: [`smp::record_smp`] records with the kernel's two-vCPU build (KRR's exec lock,
//! INST_SYNC, RELEASE, INTERRUPT `from` = 3; its module doc says what and how) and
//! [`smp::replay_smp`] replays it to both vCPUs' state.
//!
//! [`replay`] replays a recording with krr's replayer (`krr::krr_replay`, what `krr replay
//! --krr` runs) and reads the state [`FinalState`] compares.
//!
//! The recorder runs krr's host semantics (this CPU's undefined flags, hardware exception
//! frames), so its recordings replay with the `host` profile; real KRR recordings default to
//! `krr-compat`.

#![allow(dead_code)]

#[path = "../fuzz_rng/mod.rs"]
mod fuzz_rng;
pub use fuzz_rng::Rng;
pub mod from_qemu;
pub mod machine;
mod recorder;
pub mod ring;
pub mod smp;

use std::path::{Path, PathBuf};

pub use recorder::{record, DeviceStats};

/// What user space does, and how often the hardware interrupts, for one recording.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    /// User-mode actions: system calls, user page faults, user #GPs, interrupts in user mode.
    pub actions: usize,
    /// Percent of the `work` system calls that get a timer interrupt at a random kernel
    /// instruction (where interrupts are enabled).
    pub kernel_irq_percent: u64,
    /// Percent of the `work` system calls whose copy_from_user is interrupted in the middle
    /// of its REP MOVSB.
    pub rep_irq_percent: u64,
    /// Largest copy_from_user (bytes, at most 4096).
    pub max_copy: u64,
    /// ivshmem BAR2 size (a multiple of 2 MiB, at most 16 MiB): a small ring rotates.
    pub ring_size: u64,
    /// The engine's tier policy (the recording must not depend on it).
    pub policy: krr_jit::TierPolicy,
    /// Devices and more memory inputs (`devices.rs`): IDE, NVMe and e1000 DMA, e1000 MMIO
    /// reads, device interrupts, page-map CFUs, a word-at-a-time get_user reader.
    pub devices: bool,
    /// User-mode #GPs (a user CLI) among the actions. Off, those actions are `work` system
    /// calls: KRR's own replayer aborts at a user-mode #GP (krr-spec open question 5), so the
    /// cross-check against it (`from_qemu`) records without them.
    pub user_gp: bool,
}

impl Scenario {
    /// A few dozen events, every kind at least once (the first actions are fixed).
    pub fn small() -> Scenario {
        Scenario {
            seed: 1,
            actions: 40,
            kernel_irq_percent: 30,
            rep_irq_percent: 20,
            max_copy: 512,
            ring_size: 2 << 20,
            policy: krr_jit::TierPolicy::Interpret,
            devices: false,
            user_gp: true,
        }
    }

    /// The small scenario's actions, each followed now and then by a device action (the
    /// first eight fixed: IDE read, packets, NVMe read, page map, string read, a packet
    /// while user code runs, a polled NVMe read, packets).
    pub fn devices() -> Scenario {
        Scenario {
            seed: 4,
            actions: 40,
            devices: true,
            ..Scenario::small()
        }
    }

    /// Hundreds of events; the ring rotates.
    pub fn medium() -> Scenario {
        Scenario {
            seed: 2,
            actions: 1500,
            max_copy: 4096,
            ..Scenario::small()
        }
    }

    /// For benchmarks: tens of thousands of events, tens of millions of kernel
    /// instructions, many ring rotations.
    pub fn large() -> Scenario {
        Scenario {
            seed: 3,
            actions: 4000,
            max_copy: 4096,
            policy: krr_jit::TierPolicy::Tiered,
            ..Scenario::small()
        }
    }
}

/// The machine state after the last event: the kernel has returned to user mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalState {
    pub rip: u64,
    /// krr's order: RAX RCX RDX RBX RSP RBP RSI RDI R8..R15.
    pub gpr: [u64; 16],
    pub rflags: u64,
    /// Kernel instructions since the snapshot (the count the next event would carry).
    pub inst_cnt: u64,
    /// `krr_checksum` (every input folded in) and its address (kernel virtual).
    pub checksum_addr: u64,
    pub checksum: u64,
    /// `krr_jiffies` (timer interrupts handled) and its address.
    pub jiffies_addr: u64,
    pub jiffies: u64,
}

/// What [`build_recording`] made.
#[derive(Clone, Debug)]
pub struct Recording {
    pub dir: PathBuf,
    /// The snapshot (`test1`), beside it `kernel_rr.log`.
    pub snapshot: PathBuf,
    pub log: PathBuf,
    pub vmlinux: PathBuf,
    /// Events written, by type number, and in all.
    pub counts: [u64; 15],
    pub events: u64,
    /// Hypercall-102 rotations of the ring.
    pub rotations: u64,
    /// Interrupts the recorder injected in kernel mode, of them inside a REP MOVSB, and in
    /// user mode.
    pub kernel_irqs: u64,
    pub rep_irqs: u64,
    pub user_irqs: u64,
    /// Kernel-mode page faults (copy_from_user / get_user of a page not yet mapped).
    pub kernel_faults: u64,
    pub final_state: FinalState,
    /// The snapshot vCPU's RIP (user mode).
    pub start_rip: u64,
    /// The device scenario's device work (zero otherwise).
    pub devices: DeviceStats,
}

/// Build the kernel, record `scenario` and write the recording into `dir`.
pub fn build_recording(scenario: &Scenario, dir: &Path) -> Recording {
    record(scenario, dir)
}

/// How a recording replayed: the state at the return to user mode after the last event (as
/// [`FinalState`] has it), or the replay's end when it stopped short.
pub struct Replayed {
    pub end: krr::krr_replay::driver::End,
    pub state: FinalState,
    /// Ring entries the replay appended (KVM's side).
    pub ring_appends: u64,
    /// Where the DMA entries were written: IDE's with the DMA_DONE of this log index, NVMe's
    /// and e1000's at this KRR count.
    pub ide_placed: Vec<usize>,
    pub nvme_placed: Vec<u64>,
    pub net_placed: Vec<u64>,
    /// The ring's header in the replay's memory at the end.
    pub ring_header: Option<[u8; 48]>,
}

/// Replay with krr's KRR replayer (`singlestep`: one instruction per block), then let the
/// kernel run on to its return to user mode (it needs no input after the last event), and
/// read the state, `checksum` and `jiffies` at the addresses `like` names.
pub fn replay(rec: &Recording, singlestep: bool) -> Replayed {
    replay_files(&rec.snapshot, &rec.vmlinux, &rec.final_state, singlestep)
}

/// krr's KRR replayer loaded on a synthetic recording's files (the `host` profile the
/// recorder ran; `vcpus`: the vCPUs the snapshot must have).
pub fn open_replay(
    snapshot: &Path,
    vmlinux: &Path,
    singlestep: bool,
    vcpus: Option<u32>,
) -> krr::krr_replay::load::Loaded {
    let mut engine = krr_jit::EngineConfig::default();
    if singlestep {
        engine.max_block_insns = 1;
    }
    let o = krr::krr_replay::load::Options {
        snapshot: snapshot.to_path_buf(),
        vmlinux: vmlinux.to_path_buf(),
        events: None,
        cpu: "broadwell".into(),
        profile: krr_jit::Profile::Host,
        engine,
        expect_mem: None,
        expect_vcpus: vcpus,
    };
    krr::krr_replay::load::open(&o).unwrap_or_else(|e| panic!("{e}"))
}

/// Replay to the end; when every event was replayed, run each vCPU on to its return to user
/// mode (the kernel needs no input after the last event).
pub fn run_to_the_end(d: &mut krr::krr_replay::driver::Driver) -> krr::krr_replay::driver::End {
    let end = d.run(&mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    if end == krr::krr_replay::driver::End::Finished {
        for v in 0..d.vcpus() {
            d.run_to_user_mode(v)
                .unwrap_or_else(|e| panic!("vCPU {v} after the last event: {e}"));
        }
    }
    end
}

/// The u64 at kernel virtual `va` under the running vCPU's page tables.
pub fn read_virt_u64(d: &krr::krr_replay::driver::Driver, va: u64) -> u64 {
    let mem = d.core.mem();
    let p = krr::krr_replay::virt::pieces(|pa| mem.read_u64(pa).ok(), d.core.cpu().cr3, va, 8)
        .expect("mapped");
    mem.read_u64(p[0].0).unwrap()
}

pub fn replay_files(
    snapshot: &Path,
    vmlinux: &Path,
    like: &FinalState,
    singlestep: bool,
) -> Replayed {
    let mut l = open_replay(snapshot, vmlinux, singlestep, None);
    let end = run_to_the_end(&mut l.driver);
    let d = &mut l.driver;
    let c = d.core.cpu();
    let read = |va: u64| read_virt_u64(d, va);
    let state = FinalState {
        rip: c.rip,
        gpr: c.gpr,
        rflags: c.rflags_value(),
        inst_cnt: d.bus.count(c),
        checksum_addr: like.checksum_addr,
        checksum: read(like.checksum_addr),
        jiffies_addr: like.jiffies_addr,
        jiffies: read(like.jiffies_addr),
    };
    use krr::krr_replay::dma::Kind;
    let placed = |k: Kind| -> Vec<u64> {
        d.dma_streams
            .iter()
            .filter(|s| s.kind == k)
            .flat_map(|s| s.placed.clone())
            .collect()
    };
    Replayed {
        end,
        state,
        ring_appends: d.bus.ring.as_ref().map_or(0, |r| r.appended),
        ide_placed: d.bus.ide.as_ref().map_or(Vec::new(), |i| i.placed.clone()),
        nvme_placed: placed(Kind::Nvme),
        net_placed: placed(Kind::E1000),
        ring_header: d.bus.ring.as_ref().map(|r| {
            let mut h = [0u8; 48];
            d.core.mem().read(r.gpa, &mut h).unwrap();
            h
        }),
    }
}
