//! Two-vCPU synthetic KRR recordings (krr-spec 5): the kernel's two-vCPU build (`kernel/smp.c`,
//! `kernel/smp.S`: KRR's exec lock, the agent's SMP entry points, a spinlock and a cross-call
//! whose waits release the exec lock) run on two vCPUs that the recorder interleaves with a
//! seeded schedule, playing KVM's side of each.
//!
//! What the recording is, beyond the one-vCPU recording of `mod.rs`:
//! - Both vCPUs boot (vCPU 1 starts at `krr_ap_boot` in long mode, as if brought up: its
//!   own GDT with its own TSS, stack and GS base / per-CPU area, `cpu` = 1) and reach user
//!   mode; the snapshot holds two `cpu`, `cpu_common` and `apic` sections. Each vCPU's count
//!   is its own (KVM's PMC3 is per vCPU).
//! - The schedule (the recorder's RNG, so the recording depends on the seed only, not on the
//!   engine's tiers): a vCPU in user mode does its next action (a system call: work, probe,
//!   cross-call or idle; a user #PF or #GP; an interrupt in user mode); a vCPU in the kernel
//!   runs a slice of 20..420 instructions; a vCPU halted in idle() gets the interrupt that
//!   ends the halt. The recording ends when both vCPUs have done their actions and are back
//!   in user mode (the final state: both vCPUs' registers and counts, kernel variables). A vCPU that wants the exec lock while the other holds it spins
//!   in `rr_do_acquire_smp_exec`'s loop for real (three instructions per failed
//!   test_and_set_bit) until the owner releases it, so spin counts are what the slices
//!   gave. Kernel code inside lock-wait regions runs unserialised, as in KRR.
//! - KVM (`K:kernel_rr.c` rr_record_event): an interrupt is appended (`from` = 0, id = the
//!   vCPU) only for the exec-lock owner (ring offset 48) at CPL0; otherwise it fills the
//!   vCPU's slot (ring offset 56 + 192·vCPU: vector, inst_cnt, rip, regs; id, from and
//!   spin_count 0) and the agent's `rr_handle_irqentry` records INTERRUPT `from` = 3 after
//!   taking the lock (memcpy of the slot, then id, from = 3, spin_count: the newest guest
//!   patch). Interrupts in user mode are all of the second kind. Hypercall 20 appends
//!   INST_SYNC in the guest form (inner type 0, id, the count before the VMCALL, its RIP,
//!   spin_count = RBX), then counts the VMCALL. IO_IN and the RDTSC exit carry the vCPU id.
//! - Kernel-mode interrupts go to the lock owner only (with interrupts enabled), and to a
//!   vCPU halted in idle() (`default_idle_call` released the lock: KVM fills the slot, the
//!   agent records `from` = 3 at the kernel RIP after the HLT, which KVM counted); a vCPU in
//!   the kernel without the lock otherwise (a lock wait) is never interrupted: KRR records
//!   such an interrupt nowhere (krr-spec 8.3).
//! - The agent: `rr_handle_syscall` / `rr_handle_exception` / `rr_handle_irqentry` take the
//!   lock and store the spin count (-1, "already mine", stored as 0; an interrupt entry that
//!   already holds it records nothing); the lock is released after the system call's exit
//!   work and in `irqentry_exit` towards user mode. Lock waits: the cross-call's wait for the
//!   other CPU (csd_lock_wait) and the spinlock's slow path (qspinlock) release the lock and
//!   re-acquire it in CTX_LOCKWAIT, which issues `kvm_hypercall1(20, spin)` (INST_SYNC).
//!
//! Choices the spec leaves open:
//! - RELEASE events: the agent's `rr_record_release` ("only used for debug purposes", never
//!   called by the guest patch) is called by `rr_release_smp_exec` before the lock is given
//!   up when [`SmpScenario::release_events`] is set (the kernel's `krr_record_release`); its
//!   guest-form entry has type and id; the file's node is QEMU's (id only, garbage
//!   elsewhere: fixed patterns here).
//! - Linux's `exc_general_protection` runs `irqentry_enter` (whose `rr_handle_irqentry`
//!   would record an INTERRUPT `from` = 3 with a stale slot) before its body; this kernel's
//!   #GP handler records like the #PF handler (`rr_handle_exception` first).
//! - The cross-call's request is acknowledged at the other CPU's next entry from user mode
//!   (kernel work after the agent recorded the entry), which then takes the spinlock that
//!   the caller holds while it waits: both CPUs wait, and re-acquire with INST_SYNC.
//! - `rr_do_acquire_smp_exec` has no `initialized`/`skip_lock` checks (the lock is on from
//!   boot; KRR enables it once more than one CPU is online).
//! - Checkpoints (`checkpoint-0`, `checkpoint-1`, krr-spec 6): QEMU's record-time records of
//!   the lock owner in kernel mode, taken at a quarter of the owner's slice ends (as if the
//!   checkpoint interval's counter exit fell there), not inside `rr_do_acquire_smp_exec`:
//!   there the recorded count already holds the spins that the replay adds only at its
//!   return (RR_LOCK_ACQUIRE_RET), a mismatch KRR's replayer would report as well.
//! - is_idle_task(current) is a per-CPU flag set around idle()'s halt; the interrupt that
//!   ends it takes the lock in irqentry, so idle()'s CTX_IDLE re-acquisition finds it held
//!   (-1, no INST_SYNC), as Linux's idle loop does.

use super::machine::{self as m};
use super::recorder::{self, Plan, Recorder};
use super::ring::LogWriter;
use super::Scenario;
use crate::krr_rec_writer::migration as wm;
use krr::krr_rec::checkpoint::{Checkpoint, CheckpointSeg};
use krr::krr_rec::migration::cpu::CpuCommon;
use krr_jit::{Engine, Exit};
use krr_runtime::ArchState;
use std::path::{Path, PathBuf};

const RAX: usize = 0;
const RBX: usize = 3;
const RDI: usize = 7;

/// A two-vCPU recording's parameters: the one-vCPU [`Scenario`]'s (its `actions` per vCPU)
/// plus the cross-calls and RELEASE events.
#[derive(Clone, Debug)]
pub struct SmpScenario {
    pub base: Scenario,
    /// Percent of the actions that are cross-calls (when one can be made).
    pub xcall_percent: u64,
    /// Percent of the actions that are interrupts in user mode (INTERRUPT `from` = 3).
    pub user_irq_percent: u64,
    /// Percent of the actions that are idle() calls (the CPU halts until an interrupt,
    /// which the agent records with `from` = 3 in kernel mode).
    pub idle_percent: u64,
    /// The agent records a RELEASE event at every release of the exec lock.
    pub release_events: bool,
    /// Percent of the kernel slices of the lock owner that end with a checkpoint of its
    /// state (`checkpoint-<cpu>`).
    pub checkpoint_percent: u64,
}

impl SmpScenario {
    /// A few hundred events.
    pub fn small() -> SmpScenario {
        SmpScenario {
            base: Scenario {
                seed: 11,
                actions: 60,
                max_copy: 256,
                ..Scenario::small()
            },
            xcall_percent: 20,
            user_irq_percent: 15,
            idle_percent: 8,
            checkpoint_percent: 25,
            release_events: true,
        }
    }

    /// Thousands of events: the 2 MiB ring rotates (with RELEASE events).
    pub fn medium() -> SmpScenario {
        SmpScenario {
            base: Scenario {
                seed: 12,
                actions: 600,
                max_copy: 2048,
                ..SmpScenario::small().base
            },
            ..SmpScenario::small()
        }
    }
}

/// One vCPU's state at the end: the kernel has returned to user mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuState {
    pub rip: u64,
    /// krr's order: RAX RCX RDX RBX RSP RBP RSI RDI R8..R15.
    pub gpr: [u64; 16],
    pub rflags: u64,
    /// The vCPU's KRR count (kernel instructions since the snapshot).
    pub inst_cnt: u64,
}

/// The state after the last event: every vCPU's, and the kernel's results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmpFinal {
    pub vcpus: Vec<VcpuState>,
    /// `krr_checksum`, `krr_jiffies`, `krr_shared`, `krr_lock_waits`.
    pub vars: [u64; 4],
}

impl SmpFinal {
    /// The state with RFLAGS.RF cleared: a replay cannot know it at the end. After a fault's
    /// IRETQ user mode runs with RF set, and user code clears it; the recording's next user
    /// event has it clear, but KRR's replay does not restore RFLAGS for an interrupt taken in
    /// user mode (krr-spec 3.4), so the replayed frame, and the state after its IRETQ, keep RF.
    pub fn without_rf(&self) -> SmpFinal {
        let mut s = self.clone();
        for v in &mut s.vcpus {
            v.rflags &= !krr_runtime::rflags::RF;
        }
        s
    }
}

/// The kernel variables [`SmpFinal::vars`] reads.
pub const VARS: [&str; 4] = [
    "krr_checksum",
    "krr_jiffies",
    "krr_shared",
    "krr_lock_waits",
];

/// What [`record_smp`] made.
#[derive(Clone, Debug)]
pub struct SmpRecording {
    pub dir: PathBuf,
    pub snapshot: PathBuf,
    pub log: PathBuf,
    pub vmlinux: PathBuf,
    pub counts: [u64; 15],
    pub events: u64,
    pub rotations: u64,
    /// The ring's `total_size`, and the largest `current_byte` QEMU drained (above it: a
    /// KVM append past the end of the ring, which KVM does not rotate).
    pub ring_total: u64,
    pub ring_max_end: u64,
    pub kernel_irqs: u64,
    /// Of the kernel-mode interrupts, those inside copy_from_user's REP MOVSB.
    pub rep_irqs: u64,
    pub user_irqs: u64,
    pub xcalls: u64,
    /// Interrupts that ended an idle() halt (INTERRUPT `from` = 3 at a kernel RIP).
    pub idle_irqs: u64,
    /// The counts of `checkpoint-0`'s and `checkpoint-1`'s records.
    pub checkpoints: [Vec<u64>; 2],
    /// Kernel-variable addresses of [`VARS`].
    pub var_addrs: [u64; 4],
    pub final_state: SmpFinal,
}

struct Vcpu {
    /// The state while the other vCPU is in the core.
    parked: Option<ArchState>,
    plan: Plan,
    /// User actions left.
    left: usize,
    /// Halted in idle() until an interrupt comes.
    halted: bool,
    checkpoints: Vec<Checkpoint>,
}

struct Smp<'a> {
    r: Recorder,
    sc: &'a SmpScenario,
    cpus: Vec<Vcpu>,
    cur: usize,
    /// The vCPU whose cross-call has not returned to user mode yet.
    xcall_from: Option<usize>,
    xcalls: u64,
    idle_irqs: u64,
    /// rr_do_acquire_smp_exec's code: no checkpoint there (see `checkpoint`).
    acquire: std::ops::Range<u64>,
    /// Which slices end with a checkpoint (not the schedule's RNG: the schedule does not
    /// depend on checkpoints).
    checkpoint_rng: super::Rng,
}

impl Smp<'_> {
    fn switch(&mut self, to: usize) {
        if to == self.cur {
            return;
        }
        let incoming = self.cpus[to].parked.take().expect("parked");
        let out = std::mem::replace(self.r.core.arch_mut(), incoming);
        self.cpus[self.cur].parked = Some(out);
        self.cpus[self.cur].plan = self.r.plan;
        self.r.plan = self.cpus[to].plan;
        self.r.bus.vcpu = to as i32;
        self.r.core.flush_tlb();
        self.cur = to;
    }

    fn in_user(&self, v: usize) -> bool {
        match &self.cpus[v].parked {
            Some(a) => a.cpl() == 3,
            None => self.r.cpu().cpl() == 3,
        }
    }

    /// Run the current vCPU (in the kernel) for a slice, playing its stops and the
    /// interrupt planned for it.
    fn run_slice(&mut self, n: u64) {
        let end = self.r.cpu().icount + n;
        loop {
            let limit = self.r.plan.kernel_irq_at.unwrap_or(u64::MAX).min(end);
            self.r.core.set_icount_limit(limit);
            let exit = self
                .r
                .engine
                .run_with_bus(&mut self.r.core, &mut self.r.bus);
            match exit {
                Exit::UserMode => {
                    self.r.plan = Plan::default();
                    if self.xcall_from == Some(self.cur) {
                        self.xcall_from = None;
                    }
                    return;
                }
                Exit::Budget => {
                    let icount = self.r.cpu().icount;
                    let irq_due = self.r.plan.kernel_irq_at.is_some_and(|at| icount >= at);
                    if icount >= end && !irq_due {
                        self.checkpoint();
                    }
                    let c = self.r.cpu();
                    if self.r.plan.kernel_irq_at.is_some_and(|at| icount >= at) {
                        let owner = self.r.ring().u32(48) as i32 == self.cur as i32;
                        if c.cpl() == 0 && Engine::interrupts_enabled(c) && owner {
                            self.r.inject(m::TIMER_VECTOR);
                            self.r.kernel_irqs += 1;
                            self.r.plan.kernel_irq_at = None;
                        } else {
                            self.r.plan.kernel_irq_at = Some(icount + if owner { 1 } else { 64 });
                        }
                    }
                    if icount >= end {
                        return;
                    }
                }
                Exit::Halt => {
                    self.cpus[self.cur].halted = true;
                    return;
                }
                // After a stop the same vCPU goes on (the engine's resume is one address).
                other => self.r.at_stop(other),
            }
        }
    }

    /// QEMU's record-time checkpoint (krr-spec 6) of the lock owner in kernel mode, as if the
    /// checkpoint interval's counter exit fell at this count: the state after `icount`
    /// kernel instructions. None inside rr_do_acquire_smp_exec: between taking the lock and
    /// its return (or INST_SYNC) the recorded count holds the spins, which the replay adds
    /// only at RR_LOCK_ACQUIRE_RET (KRR's replayer would report such a checkpoint too).
    fn checkpoint(&mut self) {
        let c = self.r.cpu();
        let owner = self.r.ring().u32(48) as i32 == self.cur as i32;
        if !owner || c.cpl() != 0 || self.acquire.contains(&c.rip) {
            return;
        }
        if !self.checkpoint_rng.chance(self.sc.checkpoint_percent) {
            return;
        }
        let c = self.r.cpu();
        let seg = |s: &krr_runtime::cpu::Segment| CheckpointSeg {
            selector: s.selector as u32,
            base: s.base,
            limit: s.limit,
            flags: ((s.attrs as u32 & 0xff) << 8) | (((s.attrs as u32 >> 12) & 0xf) << 20),
        };
        let cp = Checkpoint {
            inst_cnt: c.icount,
            rip: c.rip,
            regs: c.gpr,
            cr: [c.cr0, 0, c.cr2, c.cr3, c.cr4],
            segs: std::array::from_fn(|i| seg(&c.seg[i])),
            eflags: c.rflags_value(),
        };
        self.cpus[self.cur].checkpoints.push(cp);
    }

    /// The current vCPU (in user mode) does its next action: it enters the kernel.
    fn action(&mut self) {
        self.r.user_continues();
        let v = self.cur;
        let other = 1 - v;
        let sc = &self.sc.base;
        let k = self.r.rng.below64(100);
        let can_xcall = self.xcall_from.is_none() && self.in_user(other);
        if k < self.sc.xcall_percent && can_xcall {
            self.xcall_from = Some(v);
            self.xcalls += 1;
            self.r.syscall(3, [0, 0, 0]);
        } else if k < self.sc.xcall_percent + self.sc.user_irq_percent {
            self.r.scramble_user_regs();
            let rip = [m::USER_CODE, m::USER_CODE + 2][self.r.rng.below64(2) as usize];
            self.r.core.arch_mut().rip = rip;
            self.r.inject(m::TIMER_VECTOR);
            self.r.user_irqs += 1;
        } else if k < self.sc.xcall_percent + self.sc.user_irq_percent + self.sc.idle_percent {
            self.r.syscall(4, [0, 0, 0]);
        } else if k < 50 {
            match self.r.unmapped_fault_page() {
                Some(page) => {
                    self.r.scramble_user_regs();
                    let addr = page + self.r.rng.below64(4096);
                    let a = self.r.core.arch_mut();
                    a.rip = m::USER_STORE;
                    a.gpr[RDI] = addr;
                    a.gpr[RAX] = a.gpr[RBX] & 0xff;
                    self.r.user_exception(14, 6, Some(addr));
                }
                None => self.work(sc, false),
            }
        } else if k < 55 {
            self.r.scramble_user_regs();
            self.r.core.arch_mut().rip = m::USER_CLI;
            self.r.user_exception(13, 0, None);
        } else if k < 62 {
            let addr = m::USER_DATA + self.r.rng.below64(m::USER_DATA_PAGES) * 4096;
            self.r.syscall(2, [addr, 0, 0]);
        } else {
            let fault = self.r.rng.chance(15);
            self.work(sc, fault);
        }
    }

    /// `work` (the one-vCPU recorder's): user data written, the system call entered, an
    /// interrupt planned; the schedule runs it.
    fn work(&mut self, sc: &Scenario, fault_buf: bool) {
        let r = &mut self.r;
        let n = 1 + r.rng.below64(sc.max_copy);
        let buf = match fault_buf.then(|| r.unmapped_fault_page()).flatten() {
            Some(p) => p + r.rng.below64(4096 - n.min(4096)),
            None => m::USER_DATA + r.rng.below64(m::USER_DATA_PAGES * 4096 - n),
        };
        if r.mapped(buf) {
            let data: Vec<u8> = (0..n).map(|_| r.rng.next() as u8).collect();
            r.user_write(buf, &data);
        }
        let ptr = m::USER_DATA + r.rng.below64(m::USER_DATA_PAGES * 512) * 8;
        let word = r.rng.next();
        r.user_write(ptr, &word.to_le_bytes());
        r.syscall(0, [buf, n, ptr]);
        let start = r.cpu().icount;
        if r.rng.chance(sc.kernel_irq_percent) {
            r.plan.kernel_irq_at = Some(start + 10 + r.rng.below64(300 + 8 * n));
        }
        r.plan.rep_irq = r.rng.chance(sc.rep_irq_percent);
    }

    /// The schedule, until every vCPU has done its actions and is back in user mode.
    fn run(&mut self) {
        loop {
            let done = (0..2).all(|v| self.in_user(v) && self.cpus[v].left == 0);
            if done {
                return;
            }
            let v = self.r.rng.below64(2) as usize;
            self.switch(v);
            if self.cpus[v].halted {
                // The interrupt that ends the halt: KVM fills the slot (the vCPU gave the
                // lock up); the agent records it in irqentry (an idle CPU's).
                if self.r.rng.chance(50) {
                    self.cpus[v].halted = false;
                    self.r.inject(m::TIMER_VECTOR);
                    self.idle_irqs += 1;
                    let n = 20 + self.r.rng.below64(400);
                    self.run_slice(n);
                }
            } else if self.r.cpu().cpl() == 3 {
                // A vCPU the other's cross-call waits for enters the kernel once more.
                let needed = self.xcall_from == Some(1 - v);
                if (self.cpus[v].left > 0 || needed) && self.r.rng.chance(60) {
                    self.cpus[v].left = self.cpus[v].left.saturating_sub(1);
                    self.action();
                    let n = 20 + self.r.rng.below64(400);
                    self.run_slice(n);
                }
            } else {
                let n = 20 + self.r.rng.below64(400);
                self.run_slice(n);
            }
        }
    }
}

/// The snapshot of both vCPUs (each with its `cpu_common`, `cpu` and `apic` sections).
fn snapshot(r: &Recorder, archs: &[&ArchState]) -> Vec<u8> {
    let mut st = wm::sample_stream(m::RAM_SIZE, archs.len() as u32);
    st.pages.clear();
    let mut page = vec![0u8; 4096];
    for gpa in (0..m::RAM_SIZE).step_by(4096) {
        r.core.mem().read(gpa, &mut page).unwrap();
        if page.iter().any(|&b| b != 0) {
            st.pages
                .push(("pc.ram".into(), gpa, wm::Page::Data(page.clone())));
        }
    }
    st.pages_per_part = 512;
    for d in &mut st.devices {
        let i = d.instance as usize;
        match d.name.as_str() {
            "cpu" => {
                d.fields = wm::cpu_fields(&m::qemu_cpu(archs[i], r.bus.tsc));
                d.subsections = Vec::new();
            }
            "cpu_common" => {
                d.fields = wm::cpu_common_fields(&CpuCommon {
                    halted: 0,
                    interrupt_request: 0,
                    subsections: vec![],
                });
            }
            "apic" => {
                let mut apic = wm::sample_apic(i as u8);
                apic.tpr = 0;
                apic.isr = [0; 8];
                apic.irr = [0; 8];
                apic.lvt[0] = 0x2_0000 | m::TIMER_VECTOR as u32;
                d.fields = wm::apic_fields(&apic);
            }
            "0000:00:04.0/ivshmem-plain" => {
                d.fields = wm::ivshmem_fields(&wm::sample_ivshmem(m::BAR2));
            }
            _ => {}
        }
    }
    st.bytes()
}

/// Record `sc` on two vCPUs into `dir`.
pub fn record_smp(sc: &SmpScenario, dir: &Path) -> SmpRecording {
    let (mut r, v, vmlinux) = recorder::recorder(&sc.base, dir, true);
    let kvar = |name: &str| m::kernel_pa(recorder::sym(&v, name));
    r.core
        .mem_mut()
        .write(kvar("krr_record_release"), &[sc.release_events as u8])
        .unwrap();
    // Boot vCPU 0, then vCPU 1 (not recorded), each up to its first return to user mode.
    r.run_kernel();
    let bsp = std::mem::replace(
        r.core.arch_mut(),
        m::boot_state(recorder::sym(&v, "krr_ap_boot")),
    );
    r.core.flush_tlb();
    r.run_kernel();
    r.core.arch_mut().icount = 0;
    let mut ap = std::mem::replace(r.core.arch_mut(), bsp);
    ap.icount = 0;
    r.core.arch_mut().icount = 0;
    r.core.flush_tlb();
    let snap = snapshot(&r, &[r.core.arch(), &ap]);
    let initial = r.ring().start_recording();
    r.log = Some(LogWriter::new(initial));
    r.smp = true;
    let cpus = vec![
        Vcpu {
            parked: None,
            plan: Plan::default(),
            left: sc.base.actions,
            halted: false,
            checkpoints: Vec::new(),
        },
        Vcpu {
            parked: Some(ap),
            plan: Plan::default(),
            left: sc.base.actions,
            halted: false,
            checkpoints: Vec::new(),
        },
    ];
    let mut s = Smp {
        r,
        sc,
        cpus,
        cur: 0,
        xcall_from: None,
        xcalls: 0,
        idle_irqs: 0,
        checkpoint_rng: super::Rng(sc.base.seed.wrapping_mul(0xa076_1d64_78bd_642f) | 1),
        acquire: {
            let f = v.symbol("rr_do_acquire_smp_exec").expect("the exec lock");
            f.addr..f.addr + f.size
        },
    };
    s.run();
    s.switch(0);
    let mut log = s.r.log.take().unwrap();
    log.drain(&s.r.bus.ring);
    let vcpus = (0..2)
        .map(|i| {
            let a = match &s.cpus[i].parked {
                Some(a) => a,
                None => s.r.core.arch(),
            };
            VcpuState {
                rip: a.rip,
                gpr: a.gpr,
                rflags: a.rflags_value(),
                inst_cnt: a.icount,
            }
        })
        .collect();
    let var_addrs = VARS.map(|n| recorder::sym(&v, n));
    let vars = VARS.map(|n| s.r.core.mem().read_u64(kvar(n)).unwrap());
    let snap_path = dir.join("test1");
    let log_path = dir.join("kernel_rr.log");
    std::fs::write(&snap_path, snap).unwrap();
    std::fs::write(&log_path, &log.bytes).unwrap();
    let target_vmlinux = dir.join("vmlinux");
    std::fs::copy(&vmlinux, &target_vmlinux).unwrap();
    let checkpoints = [0, 1].map(|i| s.cpus[i].checkpoints.iter().map(|c| c.inst_cnt).collect());
    for (i, c) in s.cpus.iter().enumerate() {
        if !c.checkpoints.is_empty() {
            let bytes = crate::krr_rec_writer::checkpoint_bytes(&c.checkpoints);
            std::fs::write(dir.join(format!("checkpoint-{i}")), bytes).unwrap();
        }
    }
    SmpRecording {
        checkpoints,
        dir: dir.into(),
        snapshot: snap_path,
        log: log_path,
        vmlinux: target_vmlinux,
        counts: log.counts,
        events: log.total,
        rotations: log.rotations,
        ring_total: sc.base.ring_size - 4096,
        ring_max_end: log.max_end,
        kernel_irqs: s.r.kernel_irqs,
        rep_irqs: s.r.rep_irqs,
        user_irqs: s.r.user_irqs,
        xcalls: s.xcalls,
        idle_irqs: s.idle_irqs,
        var_addrs,
        final_state: SmpFinal { vcpus, vars },
    }
}

/// How a two-vCPU recording replayed.
pub struct SmpReplayed {
    pub end: krr::krr_replay::driver::End,
    /// Every vCPU run on to its return to user mode after the last event.
    pub state: SmpFinal,
    pub handovers: u64,
    pub corrected_interrupts: u64,
    pub io_resyncs: u64,
    pub checkpoints: krr::krr_replay::driver::CheckpointTally,
}

/// Replay with krr's KRR replayer (`singlestep`: one instruction per block); after the last
/// event every vCPU runs on to user mode (no input is left to read), then the state is read.
pub fn replay_smp(rec: &SmpRecording, singlestep: bool) -> SmpReplayed {
    replay_smp_files(&rec.snapshot, &rec.vmlinux, &rec.var_addrs, singlestep)
}

pub fn replay_smp_files(
    snapshot: &Path,
    vmlinux: &Path,
    var_addrs: &[u64; 4],
    singlestep: bool,
) -> SmpReplayed {
    let mut l = super::open_replay(snapshot, vmlinux, singlestep, Some(2));
    let end = super::run_to_the_end(&mut l.driver);
    let d = &mut l.driver;
    let vcpus = (0..d.vcpus())
        .map(|v| {
            let (a, inst_cnt) = d.vcpu_state(v).expect("vCPU");
            VcpuState {
                rip: a.rip,
                gpr: a.gpr,
                rflags: a.rflags_value(),
                inst_cnt,
            }
        })
        .collect();
    let vars = var_addrs.map(|va| super::read_virt_u64(d, va));
    SmpReplayed {
        end,
        state: SmpFinal { vcpus, vars },
        handovers: d.handovers,
        corrected_interrupts: d.corrected_interrupts,
        io_resyncs: d.bus.io_resyncs,
        checkpoints: d.checkpoint_tally,
    }
}
