# A tiny "vmlinux" for the trap-point resolver's tests: the functions KRR's replayer traps on,
# with the shapes the resolver scans for (krr-spec 3.7). Labels test_* mark the instructions the
# scans must find.
        .file 1 "arch/x86/kernel/rr_serialize.c"
        .text
        .globl entry_SYSCALL_64
        .type entry_SYSCALL_64, @function
entry_SYSCALL_64:
        swapgs
        mov %rsp, %gs:0x6014
        jmp exc_general_protection
        .size entry_SYSCALL_64, .-entry_SYSCALL_64

        .macro leaf name
        .globl \name
        .type \name, @function
\name:
        push %rbp
        mov %rsp, %rbp
        pop %rbp
        ret
        .size \name, .-\name
        .endm

        leaf rr_cfu_begin
        leaf rr_gfu_begin
        leaf rr_record_pte_clear
        leaf rr_read_pte
        leaf rr_read_pte_once
        leaf rr_record_page_map
        leaf irqentry_exit
        leaf exc_general_protection

        .globl __x86_return_thunk
        .type __x86_return_thunk, @function
__x86_return_thunk:
        ret
        int3
        .size __x86_return_thunk, .-__x86_return_thunk

        .globl exc_page_fault
        .type exc_page_fault, @function
exc_page_fault:
        push %rbp
        call rr_gfu_begin
        test %eax, %eax
        jne 1f
        .globl test_pf_exec_end
test_pf_exec_end:
        jmp irqentry_exit
1:      call irqentry_exit
        pop %rbp
        ret
        .size exc_page_fault, .-exc_page_fault

        .globl rr_do_acquire_smp_exec
        .type rr_do_acquire_smp_exec, @function
rr_do_acquire_smp_exec:
        xor %eax, %eax
        test %edi, %edi
        jne 2f
        ret
2:      pause
        mov $1, %eax
        .globl test_acquire_ret
test_acquire_ret:
        jmp __x86_return_thunk
        .size rr_do_acquire_smp_exec, .-rr_do_acquire_smp_exec

        .globl rr_release_smp_exec
        .type rr_release_smp_exec, @function
rr_release_smp_exec:
        .loc 1 140
        push %rbx
        .loc 1 145
        lock andl $0xfffffffe, (%rdi)
        .loc 1 147
        .globl test_lock_release
test_lock_release:
        push %rsi
        popf
        .loc 1 148
        pop %rbx
        jmp __x86_return_thunk
        .size rr_release_smp_exec, .-rr_release_smp_exec

        .section .rodata
        .globl linux_banner
        .type linux_banner, @object
linux_banner:
        .asciz "Linux version 6.1.0-krr-test (krr@tests) #1 SMP PREEMPT_DYNAMIC\n"
        .size linux_banner, .-linux_banner
