//! The recorder: runs the synthetic kernel in krr's engine and plays everything around it.
//! The hardware (interrupt delivery, SYSCALL, page faults, A/D bits of user accesses, the
//! TSC, RDSEED, device ports), KVM (its ring appends and instruction count), QEMU (the
//! snapshot, draining the ring) and user space (registers, memory contents, which system
//! call comes next). User-mode instructions are never run, except the one SYSCALL
//! instruction of each system call, which is not counted.

use super::machine::{self as m, translate};
use super::ring::{kvm_regs, LogWriter, Ring};
use super::{FinalState, Recording, Rng, Scenario};
use krr::vmlinux::Vmlinux;
use krr_jit::{Engine, EngineConfig, Exit};
use krr_runtime::{Core, CpuState};
use std::path::Path;

#[path = "devices.rs"]
mod devices;
pub use devices::DeviceStats;

/// KVM and the devices, as the engine's bus.
pub(super) struct Bus {
    pub(super) ring: Ring,
    pub(super) rng: Rng,
    pub(super) tsc: u64,
    /// The vCPU running (KVM's `vcpu_id` in its appends).
    pub(super) vcpu: i32,
    /// The device scenario's devices (`devices.rs`).
    pub(super) dev: Option<devices::Dev>,
}

impl Bus {
    fn recording(&self) -> bool {
        self.ring.enabled()
    }
}

/// KVM's IO_IN append (`emulator_pio_in` at CPL0): id, value, inst_cnt before the IN, rip.
fn io_in_payload(id: i32, value: u64, inst_cnt: u64, rip: u64) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[..4].copy_from_slice(&id.to_le_bytes());
    p[8..16].copy_from_slice(&value.to_le_bytes());
    p[16..24].copy_from_slice(&inst_cnt.to_le_bytes());
    p[24..32].copy_from_slice(&rip.to_le_bytes());
    p
}

impl krr_runtime::Bus for Bus {
    fn port_in(&mut self, cpu: &CpuState, port: u16, size: u8) -> u32 {
        let value = match port {
            0x71 => self.rng.below64(256),           // CMOS data
            0x61 => 0x20 | (self.rng.next() & 0x10), // port B: refresh toggles
            _ => match self.dev.as_mut().and_then(|d| d.port_in(port)) {
                Some(v) => v,
                None => panic!("IN from port {port:#x}"),
            },
        };
        let value = value & (u64::MAX >> (64 - 8 * size as u32));
        if self.recording() && cpu.cpl() == 0 {
            self.ring
                .append(3, &io_in_payload(self.vcpu, value, cpu.icount, cpu.rip));
        }
        value as u32
    }
    fn port_out(&mut self, _: &CpuState, port: u16, _: u8, value: u32) {
        if !self
            .dev
            .as_mut()
            .is_some_and(|d| d.port_out(&self.ring, port, value))
        {
            panic!("OUT to port {port:#x}");
        }
    }
    fn mmio_read(&mut self, cpu: &CpuState, phys: u64, _: u8) -> u64 {
        match self.dev.as_mut() {
            Some(d) => d.mmio_read(&self.ring, cpu, phys),
            None => None,
        }
        .unwrap_or_else(|| panic!("MMIO read at {phys:#x}"))
    }
    fn mmio_write(&mut self, _: &CpuState, phys: u64, _: u8, value: u64) {
        if self.dev.as_mut().is_some_and(|d| d.mmio_write(phys, value)) {
            return;
        }
        // The xAPIC's EOI: KVM's in-kernel APIC, not recorded.
        assert_eq!(phys, m::APIC_PA + 0xb0, "MMIO write");
    }
    fn rdtsc(&mut self, cpu: &CpuState) -> u64 {
        self.tsc += 1000 + self.rng.below64(5000);
        // KVM's RDTSC exit at CPL0 fills id, inst_cnt and rip of the guest's last entry.
        if self.recording() && cpu.cpl() == 0 {
            let at = self.ring.current_byte() - 36;
            if self.ring.u32(at) == 6 {
                self.ring.set_u32(at + 4, self.vcpu as u32);
                self.ring.set_u64(at + 4 + 16, cpu.icount);
                self.ring.set_u64(at + 4 + 24, cpu.rip);
            }
        }
        self.tsc
    }
    fn rdrand(&mut self, _: &CpuState, size: u8, _seed: bool) -> Option<u64> {
        Some(self.rng.next() & (u64::MAX >> (64 - 8 * size as u32)))
    }
    fn stop_after_instruction(&self, _: &CpuState) -> bool {
        self.dev.as_ref().is_some_and(|d| d.wants_exit())
    }
    fn wants_exit(&self, _: &CpuState) -> bool {
        self.dev.as_ref().is_some_and(|d| d.wants_exit())
    }
}

/// A timer interrupt planned for the current system call.
#[derive(Clone, Copy, Default)]
pub(super) struct Plan {
    /// Inject at the first boundary at or after this count where interrupts are enabled.
    pub(super) kernel_irq_at: Option<u64>,
    /// Interrupt this call's REP MOVSB in the middle.
    pub(super) rep_irq: bool,
}

pub(super) struct Recorder {
    pub(super) core: Core,
    pub(super) engine: Engine,
    pub(super) bus: Bus,
    pub(super) rng: Rng,
    pub(super) log: Option<LogWriter>,
    rep_at: u64,
    vmcall_at: u64,
    /// The exec lock's hypercall 20 (two-vCPU kernel only; else 0).
    pub(super) vmcall_sync_at: u64,
    /// More than one vCPU: KVM appends an interrupt only for the exec-lock owner at CPL0,
    /// else it fills the vCPU's slot for the agent (krr-spec 5).
    pub(super) smp: bool,
    /// Entries of rr_cfu_begin, rr_cfu_end, rr_gfu_begin, rr_record_gfu_end.
    agent_at: [u64; 4],
    /// Ring rotations so far when the current CFU / GFU began.
    begun: [u64; 2],
    pub(super) plan: Plan,
    pub(super) kernel_irqs: u64,
    pub(super) rep_irqs: u64,
    pub(super) user_irqs: u64,
    pub(super) kernel_faults: u64,
    faults_pa: u64,
}

/// krr's GPR indices.
const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;
const RSP: usize = 4;
const RBP: usize = 5;
const RSI: usize = 6;
const RDI: usize = 7;

impl Recorder {
    pub(super) fn cpu(&self) -> &CpuState {
        self.core.cpu()
    }

    /// The guest-physical address of `va` under the current CR3, setting the accessed bit on
    /// every level and the dirty bit of the leaf for a write, as the hardware's walk does.
    fn access(&mut self, va: u64, write: bool) -> Option<u64> {
        let cr3 = self.cpu().cr3;
        let pa = translate(&self.core, cr3, va)?;
        let mem = self.core.mem_mut();
        let mut table = cr3 & !0xfff;
        for level in (0..4).rev() {
            let at = table + ((va >> (12 + 9 * level)) & 0x1ff) * 8;
            let e = mem.read_u64(at).unwrap();
            let leaf = level == 0 || e & 0x80 != 0;
            let set = m::PTE_A | if leaf && write { m::PTE_D } else { 0 };
            if e & set != set {
                mem.write_u64(at, e | set).unwrap();
            }
            if leaf {
                break;
            }
            table = e & 0x000f_ffff_ffff_f000;
        }
        Some(pa)
    }

    /// User space writes `data` at `va` (mapped user pages only).
    pub(super) fn user_write(&mut self, va: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let pa = self
                .access(va + i as u64, true)
                .expect("user write to a mapped page");
            self.core.mem_mut().write(pa, &[*b]).unwrap();
        }
    }

    pub(super) fn mapped(&self, va: u64) -> bool {
        translate(&self.core, self.cpu().cr3, va).is_some()
    }

    /// Is fault page `i` mapped (its PTE present)?
    fn fault_page_mapped(&self, i: u64) -> bool {
        let pte = self
            .core
            .mem()
            .read_u64(m::USER_PT_PA + ((m::FAULT_BASE >> 12) + i) % 512 * 8)
            .unwrap();
        pte & m::PTE_P != 0
    }

    pub(super) fn ring(&self) -> Ring {
        self.bus.ring
    }

    /// KVM's INTERRUPT append at injection (`from` = 0): vector, inst_cnt, rip, the GPRs.
    fn log_interrupt(&mut self, vector: u8) {
        let c = self.core.cpu();
        let mut p = [0u8; 192];
        p[4..8].copy_from_slice(&(vector as i32).to_le_bytes());
        p[32..40].copy_from_slice(&c.icount.to_le_bytes());
        p[40..48].copy_from_slice(&c.rip.to_le_bytes());
        p[48..192].copy_from_slice(&kvm_regs(&c.gpr, c.rip, c.rflags_value()));
        let v = self.bus.vcpu;
        let owner = self.ring().u32(48) as i32;
        if self.smp && (c.cpl() > 0 || owner != v) {
            // KVM's handle_event_interrupt: the vCPU's slot (id, from, spin_count 0); the
            // agent records the event once it holds the exec lock.
            self.ring().write(56 + 192 * v as u64, &p);
        } else {
            p[..4].copy_from_slice(&v.to_le_bytes());
            self.ring().append(0, &p);
        }
    }

    pub(super) fn inject(&mut self, vector: u8) {
        self.log_interrupt(vector);
        self.engine
            .inject_interrupt(&mut self.core, vector)
            .unwrap_or_else(|e| panic!("delivering vector {vector:#x}: {e:?}"));
    }

    /// Deliver a user-mode exception through the IDT as the hardware does.
    pub(super) fn user_exception(&mut self, vector: u8, error_code: u32, cr2: Option<u64>) {
        // SAFETY: the engine is not running; the state stays inside the core.
        let cpu = unsafe { self.core.state_mut() };
        if let Some(a) = cr2 {
            cpu.exec.exception.address = a;
        }
        let flags = cpu.rflags_value();
        let rip = cpu.rip;
        krr_runtime::interrupt::deliver(
            cpu,
            vector,
            krr_runtime::interrupt::EventKind::Exception,
            Some(error_code),
            flags,
            rip,
            rip,
        )
        .unwrap_or_else(|e| panic!("delivering exception {vector}: {e:?}"));
        if let Some(a) = cr2 {
            cpu.cr2 = a;
        }
    }

    /// Run the kernel until it returns to user mode, playing the interrupts planned and the
    /// hypercalls.
    pub(super) fn run_kernel(&mut self) {
        loop {
            let limit = self.plan.kernel_irq_at.unwrap_or(u64::MAX);
            let limit = limit.min(self.device_due());
            self.core.set_icount_limit(limit);
            let exit = self.engine.run_with_bus(&mut self.core, &mut self.bus);
            match exit {
                Exit::UserMode => {
                    self.plan.kernel_irq_at = None;
                    self.plan.rep_irq = false;
                    return;
                }
                Exit::Budget | Exit::BusRequest if self.device_step() => {}
                Exit::Budget => {
                    if self.cpu().cpl() == 0 && Engine::interrupts_enabled(self.cpu()) {
                        self.inject(m::TIMER_VECTOR);
                        self.kernel_irqs += 1;
                        self.plan.kernel_irq_at = None;
                    } else {
                        self.plan.kernel_irq_at = Some(self.cpu().icount + 1);
                    }
                }
                other => self.at_stop(other),
            }
        }
    }

    /// A stop the kernel's run made (a hypercall, the REP MOVSB, the agent's CFU/GFU
    /// functions): play it and let the kernel go on.
    pub(super) fn at_stop(&mut self, exit: Exit) {
        match exit {
            Exit::Stop { rip } if rip == self.vmcall_sync_at => {
                // KVM's rr_sync_inst_cnt: INST_SYNC in the guest form (inner type 0),
                // with id, the count before the VMCALL, its RIP and the spin count (RBX).
                let c = self.cpu();
                let mut p = vec![0u8; super::ring::GUEST_FORM];
                p[4..8].copy_from_slice(&self.bus.vcpu.to_le_bytes());
                p[32..40].copy_from_slice(&c.gpr[RBX].to_le_bytes());
                p[1056..1064].copy_from_slice(&c.icount.to_le_bytes());
                p[1064..1072].copy_from_slice(&c.rip.to_le_bytes());
                self.ring().append(12, &p);
                let a = self.core.arch_mut();
                a.rip += 3;
                a.icount += 1;
            }
            Exit::Stop { rip } if rip == self.vmcall_at => {
                assert_eq!(self.cpu().gpr[RAX], 102, "hypercall number");
                self.log.as_mut().expect("recording").rotate(&self.bus.ring);
                // KVM skips the VMCALL and counts it (kvm_skip_emulated_instruction).
                let a = self.core.arch_mut();
                a.rip += 3;
                a.icount += 1;
            }
            Exit::Stop { rip } if rip == self.rep_at => {
                if self.plan.rep_irq {
                    self.plan.rep_irq = false;
                    if self.split_rep() {
                        return;
                    }
                }
                self.engine.resume_past_stop(self.core.cpu());
            }
            Exit::Stop { rip } if self.agent_at.contains(&rip) => {
                let i = self.agent_at.iter().position(|&a| a == rip).unwrap();
                let rotations = self.log.as_ref().map_or(0, |l| l.rotations);
                let entry = self.cpu().gpr[RDI];
                if i % 2 == 0 {
                    self.begun[i / 2] = rotations;
                } else if entry != 0 && rotations != self.begun[i / 2] {
                    // KRR's hazard (see the module's doc): a rotation after the entry
                    // was allocated saved it unfilled. Only the allocation's own
                    // rotation (the entry first after it) is harmless.
                    assert!(
                        rotations == self.begun[i / 2] + 1
                            && entry == m::RING_VA + super::ring::HEADER_SIZE + 4,
                        "the ring rotated between {} and its end",
                        ["rr_cfu_begin", "rr_gfu_begin"][i / 2]
                    );
                }
                self.engine.resume_past_stop(self.core.cpu());
            }
            other => panic!(
                "the kernel stopped: {other:?} at RIP {:#x}, icount {}",
                self.cpu().rip,
                self.cpu().icount
            ),
        }
    }

    /// At the REP MOVSB of copy_from_user: run k of its iterations as the CPU would (bytes,
    /// RSI, RDI, RCX; A/D bits), then take the interrupt with RIP at the REP and RCX the
    /// remaining count. False (nothing done) when interrupts are off, the copy is short or
    /// a page is not mapped yet.
    fn split_rep(&mut self) -> bool {
        let c = self.cpu();
        let (rsi, rdi, rcx) = (c.gpr[RSI], c.gpr[RDI], c.gpr[RCX]);
        if rcx < 2 || !Engine::interrupts_enabled(c) || c.rflags & 0x400 != 0 {
            return false;
        }
        let k = 1 + self.rng.below64(rcx - 1);
        if !(0..k).all(|i| self.mapped(rsi + i) && self.mapped(rdi + i)) {
            return false;
        }
        for i in 0..k {
            let src = self.access(rsi + i, false).unwrap();
            let dst = self.access(rdi + i, true).unwrap();
            let mut b = [0u8];
            self.core.mem().read(src, &mut b).unwrap();
            self.core.mem_mut().write(dst, &b).unwrap();
        }
        let a = self.core.arch_mut();
        a.gpr[RSI] += k;
        a.gpr[RDI] += k;
        a.gpr[RCX] -= k;
        // Interrupted between iterations, the REP ends there (RIP stays at it) and the PMC
        // counts it as retired; it counts again when it resumes and completes. That is the
        // count KRR's replayer assumes (it counts a REP at each start or resume and matches
        // the interrupt on RIP, RCX and count within one).
        a.icount += 1;
        self.inject(m::TIMER_VECTOR);
        self.rep_irqs += 1;
        self.kernel_irqs += 1;
        true
    }

    /// Values user code left in the registers the system call does not read.
    pub(super) fn scramble_user_regs(&mut self) {
        let v: Vec<u64> = (0..8).map(|_| self.rng.next()).collect();
        let a = self.core.arch_mut();
        for (r, x) in [RBX, RBP, 12, 13, 14, 15, 8, 9].iter().zip(v) {
            a.gpr[*r] = x;
        }
        a.gpr[RSP] = m::USER_RSP - (a.gpr[RBX] & 0xff0);
        // User code ran: RF (set in the image IRETQ restored after a fault) is clear again.
        a.rflags &= !krr_runtime::rflags::RF;
    }

    /// A SYSCALL: user registers as given, then the CPU executes the SYSCALL instruction at
    /// the user loop (RCX = return RIP, R11 = RFLAGS); that user instruction is not counted.
    pub(super) fn syscall(&mut self, nr: u64, args: [u64; 3]) {
        self.scramble_user_regs();
        let a = self.core.arch_mut();
        a.gpr[RAX] = nr;
        a.gpr[RDI] = args[0];
        a.gpr[RSI] = args[1];
        a.gpr[RDX] = args[2];
        a.gpr[10] = args[0] ^ 0x5a5a;
        a.rip = m::USER_CODE;
        let count = a.icount;
        self.engine.set_stop_at_user_mode(false);
        self.core.set_icount_limit(count + 1);
        let exit = self.engine.run_with_bus(&mut self.core, &mut self.bus);
        self.engine.set_stop_at_user_mode(true);
        assert_eq!(exit, Exit::Budget, "the user SYSCALL");
        assert_eq!(self.cpu().cpl(), 0);
        self.core.arch_mut().icount = count;
    }

    /// One `work` system call: user data in the buffer and at the pointer first.
    fn work(&mut self, sc: &Scenario, fault_buf: bool) {
        let n = 1 + self.rng.below64(sc.max_copy);
        let buf = if fault_buf {
            match self.unmapped_fault_page() {
                Some(p) => p + self.rng.below64(4096 - n.min(4096)),
                None => m::USER_DATA,
            }
        } else {
            m::USER_DATA + self.rng.below64(m::USER_DATA_PAGES * 4096 - n)
        };
        if self.mapped(buf) {
            let data: Vec<u8> = (0..n).map(|_| self.rng.next() as u8).collect();
            self.user_write(buf, &data);
        }
        let ptr = m::USER_DATA + self.rng.below64(m::USER_DATA_PAGES * 512) * 8;
        let word = self.rng.next();
        self.user_write(ptr, &word.to_le_bytes());
        self.syscall(0, [buf, n, ptr]);
        let start = self.cpu().icount;
        if self.rng.chance(sc.kernel_irq_percent) {
            self.plan.kernel_irq_at = Some(start + 10 + self.rng.below64(300 + 8 * n));
        }
        self.plan.rep_irq = self.rng.chance(sc.rep_irq_percent);
        let faults = self.fault_count();
        self.run_kernel();
        self.kernel_faults += self.fault_count() - faults;
    }

    /// The kernel's page-fault counter (`krr_faults`).
    pub(super) fn fault_count(&self) -> u64 {
        self.core.mem().read_u64(self.faults_pa).unwrap()
    }

    pub(super) fn unmapped_fault_page(&mut self) -> Option<u64> {
        let start = self.rng.below64(m::FAULT_PAGES);
        (0..m::FAULT_PAGES)
            .map(|i| (start + i) % m::FAULT_PAGES)
            .find(|&i| !self.fault_page_mapped(i))
            .map(|i| m::FAULT_BASE + i * 4096)
    }

    pub(super) fn mapped_fault_page(&mut self) -> Option<u64> {
        let start = self.rng.below64(m::FAULT_PAGES);
        (0..m::FAULT_PAGES)
            .map(|i| (start + i) % m::FAULT_PAGES)
            .find(|&i| self.fault_page_mapped(i))
            .map(|i| m::FAULT_BASE + i * 4096)
    }

    /// After the kernel returned to user mode: user code runs on (unrecorded). A store that
    /// faulted is retried now that its page is mapped.
    pub(super) fn user_continues(&mut self) {
        let c = self.cpu();
        if c.rip == m::USER_STORE {
            let (addr, al) = (c.gpr[RDI], c.gpr[RAX] as u8);
            self.user_write(addr, &[al]);
            // A user that stored into a fresh page fills some more of it.
            let more: Vec<u8> = (0..64).map(|_| self.rng.next() as u8).collect();
            self.user_write(addr & !0xfff, &more);
        }
    }

    /// The next user-mode action. The first ones are fixed so that a short scenario has
    /// every kind of event.
    fn action(&mut self, sc: &Scenario, i: usize) {
        self.user_continues();
        let kind = match i {
            0 => 0,
            1 => 5,
            2 => 6,
            3 => 3,
            4 => 7,
            5 => 4,
            6 => 1,
            7 => 2,
            _ => self.rng.below64(100) as usize,
        };
        match kind {
            // A REP MOVSB interrupted, then one at a random kernel instruction.
            0 => {
                self.plan.rep_irq = true;
                let sc1 = Scenario {
                    rep_irq_percent: 100,
                    kernel_irq_percent: 0,
                    max_copy: sc.max_copy.max(256),
                    ..sc.clone()
                };
                self.work(&sc1, false)
            }
            1 => {
                let sc1 = Scenario {
                    kernel_irq_percent: 100,
                    ..sc.clone()
                };
                self.work(&sc1, false)
            }
            // copy_from_user and get_user from pages not mapped yet: kernel-mode faults.
            2 => self.work(sc, true),
            3 => {
                let page = self.mapped_fault_page().unwrap_or(m::FAULT_BASE);
                self.syscall(1, [page, 0, 0]);
                self.run_kernel();
            }
            4 => {
                let addr = if self.rng.chance(50) {
                    m::USER_DATA + self.rng.below64(m::USER_DATA_PAGES) * 4096
                } else {
                    m::FAULT_BASE + self.rng.below64(m::FAULT_PAGES) * 4096
                };
                self.syscall(2, [addr, 0, 0]);
                self.run_kernel();
            }
            // A user store to a page not mapped: #PF from user mode.
            5 | 8..=17 => match self.unmapped_fault_page() {
                Some(page) => {
                    self.scramble_user_regs();
                    let addr = page + self.rng.below64(4096);
                    let a = self.core.arch_mut();
                    a.rip = m::USER_STORE;
                    a.gpr[RDI] = addr;
                    a.gpr[RAX] = a.gpr[RBX] & 0xff;
                    self.user_exception(14, 6, Some(addr));
                    self.run_kernel();
                }
                None => self.work(sc, false),
            },
            6 | 18..=20 if !sc.user_gp => self.work(sc, false),
            // A CLI in user mode: #GP(0).
            6 | 18..=20 => {
                self.scramble_user_regs();
                self.core.arch_mut().rip = m::USER_CLI;
                self.user_exception(13, 0, None);
                self.run_kernel();
            }
            // A timer interrupt while user code runs.
            7 | 21..=32 => {
                self.scramble_user_regs();
                let rip = [m::USER_CODE, m::USER_CODE + 2][self.rng.below64(2) as usize];
                self.core.arch_mut().rip = rip;
                self.inject(m::TIMER_VECTOR);
                self.user_irqs += 1;
                self.run_kernel();
            }
            33..=40 => {
                let page = self.mapped_fault_page().unwrap_or(m::FAULT_BASE);
                self.syscall(1, [page, 0, 0]);
                self.run_kernel();
            }
            41..=46 => {
                let addr = m::USER_DATA + self.rng.below64(m::USER_DATA_PAGES) * 4096;
                self.syscall(2, [addr, 0, 0]);
                self.run_kernel();
            }
            47..=50 => self.work(sc, true),
            _ => self.work(sc, false),
        }
        if sc.devices {
            self.device_action(i);
        }
    }
}

pub(super) fn sym(v: &Vmlinux, name: &str) -> u64 {
    v.symbol(name).unwrap_or_else(|| panic!("{name}")).addr
}

/// Record `sc` into `dir`.
pub fn record(sc: &Scenario, dir: &Path) -> Recording {
    let (mut r, v, vmlinux) = recorder(sc, dir, false);
    // Boot (not recorded): up to the first return to user mode.
    r.run_kernel();
    // rr_record: the VM paused in user mode; the counter starts at 0; the snapshot.
    r.core.arch_mut().icount = 0;
    let start_rip = r.cpu().rip;
    let extra = if sc.devices {
        devices::sections()
    } else {
        Vec::new()
    };
    let snapshot = m::snapshot_with(&r.core, r.bus.tsc, extra);
    let initial = r.ring().start_recording();
    r.log = Some(LogWriter::new(initial));
    let read_var = |core: &Core, va: u64| core.mem().read_u64(m::kernel_pa(va)).unwrap();
    for i in 0..sc.actions {
        r.action(sc, i);
    }
    let mut log = r.log.take().unwrap();
    log.drain(&r.bus.ring);
    let c = r.cpu();
    let checksum_addr = sym(&v, "krr_checksum");
    let jiffies_addr = sym(&v, "krr_jiffies");
    let final_state = FinalState {
        rip: c.rip,
        gpr: c.gpr,
        rflags: c.rflags_value(),
        inst_cnt: c.icount,
        checksum_addr,
        checksum: read_var(&r.core, checksum_addr),
        jiffies_addr,
        jiffies: read_var(&r.core, jiffies_addr),
    };
    let snap_path = dir.join("test1");
    let log_path = dir.join("kernel_rr.log");
    std::fs::write(&snap_path, snapshot).unwrap();
    std::fs::write(&log_path, &log.bytes).unwrap();
    if let Some(d) = &r.bus.dev {
        d.write_logs(dir);
    }
    let target_vmlinux = dir.join("vmlinux");
    std::fs::copy(&vmlinux, &target_vmlinux).unwrap();
    Recording {
        dir: dir.into(),
        snapshot: snap_path,
        log: log_path,
        vmlinux: target_vmlinux,
        counts: log.counts,
        events: log.total,
        rotations: log.rotations,
        kernel_irqs: r.kernel_irqs,
        rep_irqs: r.rep_irqs,
        user_irqs: r.user_irqs,
        kernel_faults: r.kernel_faults,
        final_state,
        start_rip,
        devices: r
            .bus
            .dev
            .as_ref()
            .map(|d| d.stats.clone())
            .unwrap_or_default(),
    }
}

/// The kernel built (`smp`: the two-vCPU build) and loaded into a core whose vCPU is at its
/// boot routine, the engine with the recorder's stops; the vmlinux and its path.
pub(super) fn recorder(
    sc: &Scenario,
    dir: &Path,
    smp: bool,
) -> (Recorder, Vmlinux, std::path::PathBuf) {
    assert!(sc.ring_size.is_multiple_of(2 << 20) && sc.ring_size <= 16 << 20);
    assert!((1..=4096).contains(&sc.max_copy));
    std::fs::create_dir_all(dir).unwrap();
    let (vmlinux, image) = m::build_kernel_variant(&dir.join("build"), smp);
    let v = Vmlinux::open(&vmlinux).unwrap();
    let mut core = Core::new(m::BAR2 + sc.ring_size).unwrap();
    m::load(&mut core, &std::fs::read(&image).unwrap(), sc.ring_size);
    core.mem_mut()
        .write_u64(m::kernel_pa(sym(&v, "krr_ring_size")), sc.ring_size)
        .unwrap();
    if sc.devices {
        devices::prepare(&mut core, &v);
    }
    // RDSEED, which KRR's recording host has (leaf 7 EBX bit 18).
    for e in core.cpuid_mut().entries.iter_mut() {
        if e.leaf == 7 && (e.subleaf == 0 || e.subleaf == u32::MAX) {
            e.ebx |= 1 << 18;
        }
    }
    *core.arch_mut() = m::boot_state(sym(&v, "krr_boot"));
    core.flush_tlb();
    let ring_base = (core.mem().host_address() + m::BAR2) as *mut u8;
    let mut engine = Engine::new(EngineConfig {
        policy: sc.policy,
        deliver_exceptions: true,
        ..Default::default()
    })
    .unwrap();
    let rep_at = sym(&v, "krr_copy_rep");
    let vmcall_at = sym(&v, "krr_vmcall");
    let agent_at = [
        "rr_cfu_begin",
        "rr_cfu_end",
        "rr_gfu_begin",
        "rr_record_gfu_end",
    ]
    .map(|n| sym(&v, n));
    let vmcall_sync_at = if smp { sym(&v, "krr_vmcall_sync") } else { 0 };
    engine.set_stop_addresses(
        [rep_at, vmcall_at]
            .into_iter()
            .chain(agent_at)
            .chain(smp.then_some(vmcall_sync_at)),
    );
    engine.set_stop_at_user_mode(true);
    let r = Recorder {
        core,
        engine,
        bus: Bus {
            ring: Ring::new(ring_base, sc.ring_size),
            rng: Rng(sc.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            tsc: 0x1_2345_6789,
            vcpu: 0,
            dev: sc.devices.then(|| devices::Dev::new(sc.seed, &v)),
        },
        rng: Rng(sc.seed.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1),
        log: None,
        rep_at,
        vmcall_at,
        vmcall_sync_at,
        smp,
        agent_at,
        begun: [0; 2],
        plan: Plan {
            kernel_irq_at: None,
            rep_irq: false,
        },
        kernel_irqs: 0,
        rep_irqs: 0,
        user_irqs: 0,
        kernel_faults: 0,
        faults_pa: m::kernel_pa(sym(&v, "krr_faults")),
    };
    (r, v, vmlinux)
}
