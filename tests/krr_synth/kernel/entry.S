/* Entry and exit paths of the synthetic kernel, Linux-shaped: pt_regs on the kernel stack
 * (r15 .. di, orig_ax, then the hardware frame), SWAPGS on entries from user mode, SYSRETQ
 * after a syscall, IRETQ after interrupts and exceptions. Plus the few instructions the
 * recorder must find by address: the REP MOVSB of copy_from_user and the hypercall. */
#include "layout.h"

        .macro PUSH_REGS
        pushq %rdi
        pushq %rsi
        pushq %rdx
        pushq %rcx
        pushq %rax
        pushq %r8
        pushq %r9
        pushq %r10
        pushq %r11
        pushq %rbx
        pushq %rbp
        pushq %r12
        pushq %r13
        pushq %r14
        pushq %r15
        .endm

        .macro POP_REGS
        popq %r15
        popq %r14
        popq %r13
        popq %r12
        popq %rbp
        popq %rbx
        popq %r11
        popq %r10
        popq %r9
        popq %r8
        popq %rax
        popq %rcx
        popq %rdx
        popq %rsi
        popq %rdi
        .endm

        /* Call \fn(regs, orig_ax) on a 16-byte aligned stack. */
        .macro CALL_C fn
        movq %rsp, %rdi
        movq 15*8(%rsp), %rsi
        movq %rsp, %rbx
        andq $-16, %rsp
        call \fn
        movq %rbx, %rsp
        .endm

        .section .text.boot, "ax"
        .globl krr_boot
        .type krr_boot, @function
/* The boot routine: the recorder starts the CPU here (64-bit mode, paging on with its
 * tables); it loads the kernel's own GDT, segments, TSS, IDT and MSRs, then enters user mode. */
krr_boot:
        lgdt gdt_desc(%rip)
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
        leaq krr_stack_top(%rip), %rsp
        call krr_boot_main
        /* First entry to user mode: an IRET frame, GS swapped to the user's. */
        pushq $0x2b
        movabsq $USER_RSP, %rax
        pushq %rax
        pushq $0x202
        pushq $0x33
        pushq $USER_CODE
        xorl %eax, %eax
        swapgs
        iretq
        .size krr_boot, .-krr_boot

        .text
        .globl entry_SYSCALL_64
        .type entry_SYSCALL_64, @function
entry_SYSCALL_64:
        swapgs
        movq %rsp, %gs:0
        movq %gs:8, %rsp
        pushq $0x2b
        pushq %gs:0
        pushq %r11
        pushq $0x33
        pushq %rcx
        pushq %rax              /* orig_ax */
        PUSH_REGS
        CALL_C do_syscall_64
        POP_REGS
        addq $8, %rsp
        movq (%rsp), %rcx
        movq 16(%rsp), %r11
        movq 24(%rsp), %rsp
        swapgs
        sysretq
        .size entry_SYSCALL_64, .-entry_SYSCALL_64

        /* Interrupt and exception stubs: \err = the CPU pushed an error code. */
        .macro IDT_STUB name, fn, err
        .globl \name
        .type \name, @function
\name:
        .if \err == 0
        pushq $-1
        .endif
        testb $3, 16(%rsp)
        jz 1f
        swapgs
1:      PUSH_REGS
        CALL_C \fn
        jmp ret_from_intr
        .size \name, .-\name
        .endm

        IDT_STUB asm_exc_page_fault, exc_page_fault, 1
        IDT_STUB asm_exc_general_protection, exc_general_protection, 1
        IDT_STUB asm_sysvec_apic_timer_interrupt, sysvec_apic_timer_interrupt, 0
#ifndef KRR_SMP
        /* The device scenario's interrupts (devices.c; the two-vCPU build has no devices). */
        IDT_STUB asm_krr_ide_irq, krr_ide_irq, 0
        IDT_STUB asm_krr_e1000_irq, krr_e1000_irq, 0
        IDT_STUB asm_krr_nvme_irq, krr_nvme_irq, 0
#endif

        .type ret_from_intr, @function
ret_from_intr:
        POP_REGS
        addq $8, %rsp
        testb $3, 8(%rsp)
        jz 1f
        swapgs
1:      iretq
        .size ret_from_intr, .-ret_from_intr

/* copy_user_generic: RDI = to, RSI = from, RDX = n; returns the bytes not copied (a fault
 * is handled by demand paging and the REP resumes, so always 0 here). Interrupts stay
 * enabled: one can land between two iterations. */
        .globl copy_user_generic
        .type copy_user_generic, @function
copy_user_generic:
        movq %rdx, %rcx
        .globl krr_copy_rep
krr_copy_rep:
        rep movsb
        movq %rcx, %rax
        ret
        .size copy_user_generic, .-copy_user_generic

/* kvm_hypercall0(nr): VMCALL with RAX = nr (102: the ring is full). */
        .globl kvm_hypercall0
        .type kvm_hypercall0, @function
kvm_hypercall0:
        movq %rdi, %rax
        .globl krr_vmcall
krr_vmcall:
        vmcall
        ret
        .size kvm_hypercall0, .-kvm_hypercall0

        .section .rodata
        .balign 16
gdt_desc:
        .word gdt_end - gdt - 1
        .quad gdt

        .data
        .balign 16
        .globl gdt
/* Linux's layout: 0x10 kernel CS, 0x18 kernel DS, 0x2b user DS, 0x33 user CS, 0x40 TSS. */
gdt:
        .quad 0
        .quad 0x00cf9b000000ffff
        .quad 0x00af9b000000ffff
        .quad 0x00cf93000000ffff
        .quad 0x00cffb000000ffff
        .quad 0x00cff3000000ffff
        .quad 0x00affb000000ffff
        .quad 0
        .globl gdt_tss
gdt_tss:
        .quad 0
        .quad 0
gdt_end:
