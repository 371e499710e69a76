/*
 * A QEMU TCG plugin that counts the guest's instructions the way krr counts them, for
 * bench/compare-qemu.sh. Built with the system's cc against QEMU 7.2's plugin API (version 1;
 * the declarations it uses are written out below, as include/qemu/qemu-plugin.h of QEMU 7.2
 * declares them: Debian ships no plugin header in a binary package).
 *
 *   qemu-system-x86_64 -plugin /path/libqemu-insn-count.so,out=FILE ...
 *
 * At QEMU's exit (the guest's ACPI power-off, or SIGTERM) it writes one line to FILE (stderr
 * without out=):
 *
 *   qemu-insn-count: instructions N executed E rep-repeats R before-kernel K
 *
 * E counts every instruction execution: an inline add before each translated instruction,
 * so an instruction that faults (a #PF the kernel then resolves) counts as well, like QEMU's
 * own -icount. QEMU runs each iteration of a REP string instruction as a new one-instruction
 * block, while krr retires a REP instruction once when it completes (ARCHITECTURE.md, "What
 * counts as one instruction"); R counts the executions of a REP string instruction that
 * directly repeat the previous execution (same address, nothing executed in between), and
 * N = E - R is the count comparable with krr's. K is the count (N) before the first block at
 * a kernel-half address (>= 0xffffffff80000000: Linux's own code, after firmware, real-mode
 * setup and the decompressor), so N - K is the kernel's share.
 *
 * One vCPU is assumed (the counters are plain, not per vCPU).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ---- QEMU 7.2 plugin API (version 1), the part used here ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn,
                                                enum qemu_plugin_op op, void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb,
                                    void *userdata);
/* ---- end of the API ---- */

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define KERNEL_HALF 0xffffffff80000000ull

static uint64_t executed;      /* every instruction execution (inline add) */
static uint64_t rep_repeats;   /* REP string executions repeating the previous one */
static uint64_t rep_last_vaddr = ~0ull, rep_last_executed;
static bool kernel_hooked, kernel_seen;
static uint64_t before_kernel; /* executed - rep_repeats at the first kernel-half block */
static const char *out_path;

/* A REP (F2/F3) string instruction (MOVS CMPS STOS LODS SCAS INS OUTS)? */
static bool is_rep_string(const uint8_t *b, size_t n)
{
    bool rep = false;
    size_t i = 0;
    for (; i < n; i++) {
        uint8_t p = b[i];
        if (p == 0xf2 || p == 0xf3) {
            rep = true;
        } else if (p == 0x66 || p == 0x67 || p == 0x2e || p == 0x36 || p == 0x3e || p == 0x26 ||
                   p == 0x64 || p == 0x65 || p == 0xf0 || (p >= 0x40 && p <= 0x4f)) {
            /* another prefix (REX is the last one, but skipping it here is harmless) */
        } else {
            break;
        }
    }
    if (!rep || i >= n) {
        return false;
    }
    uint8_t op = b[i];
    return (op >= 0xa4 && op <= 0xa7) || (op >= 0xaa && op <= 0xaf) || (op >= 0x6c && op <= 0x6f);
}

static void rep_exec(unsigned int vcpu, void *udata)
{
    uint64_t vaddr = (uint64_t)(uintptr_t)udata;
    (void)vcpu;
    /* The inline add and this callback run in a fixed order for every instruction, so the
     * previous iteration of the same instruction, with nothing in between, is exactly 1 ago. */
    if (vaddr == rep_last_vaddr && executed - rep_last_executed == 1) {
        rep_repeats++;
    }
    rep_last_vaddr = vaddr;
    rep_last_executed = executed;
}

static void kernel_entry(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    (void)udata;
    if (!kernel_seen) {
        kernel_seen = true;
        before_kernel = executed - rep_repeats;
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (!kernel_hooked && qemu_plugin_tb_vaddr(tb) >= KERNEL_HALF) {
        /* The first kernel-half block translated is the first one executed. */
        kernel_hooked = true;
        qemu_plugin_register_vcpu_tb_exec_cb(tb, kernel_entry, QEMU_PLUGIN_CB_NO_REGS, NULL);
    }
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &executed, 1);
        if (is_rep_string(qemu_plugin_insn_data(insn), qemu_plugin_insn_size(insn))) {
            qemu_plugin_register_vcpu_insn_exec_cb(
                insn, rep_exec, QEMU_PLUGIN_CB_NO_REGS,
                (void *)(uintptr_t)qemu_plugin_insn_vaddr(insn));
        }
    }
}

static void at_exit(qemu_plugin_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    FILE *f = out_path ? fopen(out_path, "w") : stderr;
    if (!f) {
        f = stderr;
    }
    fprintf(f,
            "qemu-insn-count: instructions %" PRIu64 " executed %" PRIu64 " rep-repeats %" PRIu64
            " before-kernel %" PRIu64 "\n",
            executed - rep_repeats, executed, rep_repeats, before_kernel);
    if (f != stderr) {
        fclose(f);
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t *info,
                                                               int argc, char **argv)
{
    if (!info->system_emulation) {
        fprintf(stderr, "qemu-insn-count: system emulation only\n");
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            out_path = argv[i] + 4;
        } else {
            fprintf(stderr, "qemu-insn-count: unknown argument %s (out=FILE)\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
