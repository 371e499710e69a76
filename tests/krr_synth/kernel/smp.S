/* KRR's exec lock (the guest patch's arch/x86/kernel/rr_serialize.c, krr-spec 4 and 5) for
 * the two-vCPU build, in assembly so that its shapes are the ones KRR's replayer traps:
 * RR_LOCK_ACQUIRE_RET is the one return of rr_do_acquire_smp_exec (a JMP to the return
 * thunk); LOCK_RELEASE is rr_serialize.c:147, the local_irq_restore after the lock bit is
 * cleared in rr_release_smp_exec. The spin loop is three instructions per failed
 * test_and_set_bit (KRR's INST_SYNC_MULTI). Also the second vCPU's bring-up routine. */
#include "layout.h"
#include "smp.h"

        .file 1 "arch/x86/kernel/rr_serialize.c"
        .text
        .globl __x86_return_thunk
        .type __x86_return_thunk, @function
__x86_return_thunk:
        ret
        int3
        .size __x86_return_thunk, .-__x86_return_thunk

/* long rr_do_acquire_smp_exec(int disable_irq, int cpu_id, int ctx): the spin count, or -1
 * when this CPU already holds the lock. */
        .globl rr_do_acquire_smp_exec
        .type rr_do_acquire_smp_exec, @function
rr_do_acquire_smp_exec:
        .loc 1 40
        pushq %rbx
        pushq %r12
        pushq %r13
        movl %edi, %r12d                /* disable_irq */
        movl %edx, %r13d                /* ctx */
        xorl %ecx, %ecx
        testl %r12d, %r12d
        jz 1f
        .loc 1 55
        pushfq                          /* local_irq_save(flags) */
        popq %rcx
        cli
1:      pushq %rcx
        .loc 1 57
        movq $-1, %rax
        cmpl %esi, krr_exec_owner(%rip) /* atomic_read(&current_owner) == cpu_id */
        je 4f
        .loc 1 62
        xorl %eax, %eax                 /* spin_count = 0 */
        jmp 3f
2:      incq %rax                       /* spin_count++ */
3:      lock btsq $0, krr_exec_lock(%rip) /* while (test_and_set_bit(0, &lock)) */
        jc 2b
        .loc 1 66
        movl %esi, krr_exec_owner(%rip) /* atomic_set(&current_owner, cpu_id) */
        movabsq $(RING_VA + 48), %rdx   /* rr_set_lock_owner(cpu_id) */
        movl %esi, (%rdx)
        .loc 1 69
        cmpl $CTX_LOCKWAIT, %r13d
        jne 4f
        pushq %rax                      /* kvm_hypercall1(KVM_INSTRUCTION_SYNC, spin_count) */
        movq %rax, %rbx
        movl $KVM_INSTRUCTION_SYNC, %eax
        .globl krr_vmcall_sync
krr_vmcall_sync:
        vmcall
        popq %rax
4:      .loc 1 73
        popq %rcx
        testl %r12d, %r12d              /* local_irq_restore(flags) */
        jz 5f
        testl $0x200, %ecx
        jz 5f
        sti
5:      popq %r13
        popq %r12
        popq %rbx
        .loc 1 76
        jmp __x86_return_thunk
        .size rr_do_acquire_smp_exec, .-rr_do_acquire_smp_exec

/* void rr_release_smp_exec(int ctx) */
        .globl rr_release_smp_exec
        .type rr_release_smp_exec, @function
rr_release_smp_exec:
        .loc 1 130
        pushq %rbx
        pushfq                          /* local_irq_save(flags) */
        popq %rbx
        cli
        .loc 1 138
        cmpl $0, krr_record_release(%rip) /* the agent's debug RELEASE events */
        je 1f
        movl %gs:16, %edi
        call rr_record_release
1:      .loc 1 142
        movl $-1, krr_exec_owner(%rip)  /* atomic_set(&current_owner, -1) */
        movabsq $(RING_VA + 48), %rax   /* rr_set_lock_owner(-1) */
        movl $-1, (%rax)
        .loc 1 145
        lock andq $-2, krr_exec_lock(%rip) /* clear_bit(0, &lock) */
        .loc 1 147
        testl $0x200, %ebx              /* local_irq_restore(flags) */
        jz 2f
        sti
2:      .loc 1 148
        popq %rbx
        jmp __x86_return_thunk
        .size rr_release_smp_exec, .-rr_release_smp_exec

/* The second vCPU's bring-up (the recorder starts it here in 64-bit mode with its page
 * tables, like krr_boot): its own GDT (a TSS descriptor of its own), stack, TSS, GS base. */
        .section .text.boot, "ax"
        .globl krr_ap_boot
        .type krr_ap_boot, @function
krr_ap_boot:
        leaq krr_stack1_top(%rip), %rsp
        call krr_ap_gdt
        lgdt krr_gdt1_desc(%rip)
        pushq $0x10
        leaq 1f(%rip), %rax
        pushq %rax
        lretq
1:      movl $0x18, %eax
        movw %ax, %ss
        movw %ax, %ds
        movw %ax, %es
        xorl %eax, %eax
        movw %ax, %fs
        movw %ax, %gs
        leaq krr_stack1_top(%rip), %rsp
        call krr_ap_main
        pushq $0x2b
        movabsq $USER_RSP, %rax
        pushq %rax
        pushq $0x202
        pushq $0x33
        pushq $USER_CODE
        xorl %eax, %eax
        swapgs
        iretq
        .size krr_ap_boot, .-krr_ap_boot

        .data
        .balign 8
        .globl krr_exec_lock, krr_exec_owner, krr_record_release
krr_exec_lock:
        .quad 0
krr_exec_owner:
        .long -1
/* 1: rr_release_smp_exec records a RELEASE event (the recorder sets it before boot). */
krr_record_release:
        .long 0
        .balign 16
        .globl krr_gdt1
krr_gdt1:
        .fill 10, 8, 0
krr_gdt1_desc:
        .word 10 * 8 - 1
        .quad krr_gdt1
